"""The Lyapunov objective in a data-parallel loop of your own (``torch.distributed``).

    torchrun --standalone --nproc_per_node=2 -m examples.ddp_loop     # 2 processes (GPUs if present)
    python -m examples.ddp_loop                                       # also runs as one process

The objectives call the model's ``encode``/``vector_field``/``readout``, not its ``forward``,
so wrapping the *model* in ``DistributedDataParallel`` would synchronise nothing. Wrap the
*training step* instead: a module whose ``forward`` returns the objective's loss. DDP then
sees every parameter used in that forward and averages the gradients in ``backward``, as for
any model. (Without DDP, :func:`lyapunov_plugin.distributed.average_gradients` after
``backward`` does the same; :class:`~lyapunov_plugin.LyapunovTrainer` does that for you
under ``torchrun``.)

The model is the README's: a linear encoder and a torchdyn ``NeuralODE`` with a
data-controlled field, on scikit-learn's digits. Each rank trains on its shard
(``DistributedSampler``) and draws its own Monte Carlo samples (generator seeded
``seed + rank``); rank 0 prints the test error.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from lyapunov_plugin import Objective, as_lyapunov_model, default_objective
from lyapunov_plugin.distributed import is_main_process, rank_and_world_size


class ObjectiveStep(nn.Module):
    """``forward(x, y)`` = the objective's loss on the batch: the module DDP wraps."""

    def __init__(self, model: nn.Module, objective: Objective, generator: torch.Generator) -> None:
        super().__init__()
        self.model, self.objective, self.generator = model, objective, generator

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.objective(self.model, x, y, generator=self.generator).loss


def make_model() -> nn.Module:
    """The README's quick-start model: encoder -> torchdyn NeuralODE (DataControl field)."""
    from torchdyn.core import NeuralODE
    from torchdyn.nn import DataControl

    field = nn.Sequential(DataControl(), nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10))
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), NeuralODE(field, solver="dopri5", return_t_eval=False))


def digits() -> tuple[TensorDataset, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    return TensorDataset(x[:1400], y[:1400]), x[1400:], y[1400:]


def main(*, epochs: int = 10, batch_size: int = 64, lr: float = 1e-2, seed: int = 0) -> Optional[float]:
    """Train with the objective through DDP; return the test error on rank 0 (``None`` elsewhere)."""
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = rank_and_world_size()
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if torch.cuda.is_available()
        else torch.device("cpu")
    )
    torch.manual_seed(seed)
    model = make_model().to(device)
    objective = default_objective(model)  # the recipe LyapunovTrainer(model) would use
    generator = torch.Generator(device=device)
    generator.manual_seed(seed + rank)  # different Monte Carlo draws on each rank
    step: nn.Module = ObjectiveStep(model, objective, generator)
    if world > 1:
        step = nn.parallel.DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None)
    train, x_test, y_test = digits()
    sampler = DistributedSampler(train, shuffle=True, seed=seed) if world > 1 else None
    loader = DataLoader(train, batch_size=batch_size, sampler=sampler, shuffle=sampler is None)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    for epoch in range(epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        for xb, yb in loader:
            loss = step(xb.to(device), yb.to(device))  # through DDP's forward: gradients are averaged
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    error = None
    if is_main_process():
        ode = as_lyapunov_model(model)  # the protocol view: readout at t = 1 via dopri5
        with torch.no_grad():
            model.eval()
            final = ode.trajectory(x_test.to(device), torch.tensor([0.0, 1.0], device=device))[-1]
            error = float((ode.readout(final).argmax(-1).cpu() != y_test).float().mean())
        print(f"{type(objective).__name__} on {world} rank(s), {epochs} epochs: test error {error:.1%}")
    if launched:
        dist.barrier()  # rank 0 finishes evaluating before anyone leaves
        dist.destroy_process_group()
    return error


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="per rank")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
