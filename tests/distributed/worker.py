"""One rank of a CPU data-parallel run (``torchrun --nproc_per_node=2 -m tests.distributed.worker OUT MODE``).

Writes ``OUT/rank<r>.json``: the parameters after every optimiser step, a few draws from the
trainer's Monte Carlo generator, and the history; rank 0 also writes ``OUT/checkpoint.pt``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from lyapunov_plugin import (
    FixedStepSolver,
    LyapunovTrainer,
    MonteCarloObjective,
    ODEModel,
    PathIntegralObjective,
    Recipe,
)
from lyapunov_plugin.blocks import MLPDynamics

from ..models import blobs

BATCH = 16  # per rank
EXAMPLES = 128


def build(seed: int = 0) -> ODEModel:
    torch.manual_seed(seed)
    return ODEModel(
        MLPDynamics(2, 2, (16,)),
        state_shape=(2,),
        encoder=nn.Linear(2, 2),
        solver=FixedStepSolver(method="rk4", steps=4),
    )


#: The objective of each MODE argument, at its defaults.
OBJECTIVES = {"monte_carlo": MonteCarloObjective, "path_integral": PathIntegralObjective}


def trainer_for(model, mode: str) -> LyapunovTrainer:
    recipe = Recipe(objective=OBJECTIVES[mode](), schedule="constant")
    return LyapunovTrainer(model, recipe, seed=0, progress=False)


def flat(model: nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def main(out: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    x, y = blobs(EXAMPLES, seed=1)
    dataset = TensorDataset(x, y)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=DistributedSampler(dataset, shuffle=False))
    # Different initial weights on each rank: the trainer must start every rank from rank 0's.
    trainer = trainer_for(build(seed=rank), mode)
    steps: list[list[float]] = []
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(flat(trainer.model)))
    trainer.fit(loader, epochs=2, checkpoint_path=Path(out) / "checkpoint.pt")
    draws = torch.rand(4, generator=trainer.generator).tolist()
    record = {
        "rank": rank,
        "steps": steps,
        "draws": draws,
        "history": trainer.history,
        "world_size": dist.get_world_size(),
    }
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.barrier()  # nobody leaves the group while another rank still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
