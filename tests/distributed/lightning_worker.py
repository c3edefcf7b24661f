"""One rank of a Lightning DDP run on CPU, launched by ``torchrun --nproc_per_node=2``
(Lightning sees torchrun's environment and uses its processes). Writes
``OUT/lightning_rank<r>.json`` with the parameters before and after training."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from lyapunov_plugin.adapters.lightning import LyapunovModule, pl

from ..models import blobs
from .worker import EXAMPLES, build, flat


def main(out: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    module = LyapunovModule(build(seed=rank))  # different weights per rank: DDP broadcasts rank 0's
    before = flat(module.net)
    x, y = blobs(EXAMPLES, seed=1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=16))
    record = {"rank": rank, "before": before, "after": flat(module.net), "world_size": trainer.world_size}
    (Path(out) / f"lightning_rank{rank}.json").write_text(json.dumps(record))
    # Lightning leaves its process group open; leaving it to interpreter shutdown let gloo abort
    # one rank now and then (SIGABRT) while the other was still exiting.
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
