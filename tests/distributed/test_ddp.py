"""Data-parallel training on CPU: ``torchrun --nproc_per_node=2`` with the gloo backend.

Checks what DDP promises: every rank holds the same parameters after every step, the ranks
draw different Monte Carlo samples, a deterministic objective gives the parameters of
single-process training on the concatenated batch, rank 0 alone writes the checkpoint and it
resumes in a single process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..models import blobs
from .worker import BATCH, EXAMPLES, build, flat, trainer_for

ROOT = Path(__file__).resolve().parents[2]


def _launch(module: str, *args: str, timeout: int = 300) -> None:
    """``torchrun --standalone --nproc_per_node=2 -m module args`` from the repository root."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [torchrun, "--standalone", "--nproc_per_node=2", "-m", module, *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _torchrun(out: Path, mode: str) -> list[dict]:
    _launch("tests.distributed.worker", str(out), mode)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def path_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_path")
    return out, _torchrun(out, "path_integral")


def test_every_rank_holds_the_same_parameters_after_every_step(path_run):
    _, (rank0, rank1) = path_run
    steps = EXAMPLES // (2 * BATCH) * 2
    assert len(rank0["steps"]) == len(rank1["steps"]) == steps
    assert rank0["steps"] == rank1["steps"]  # bit-identical, step by step
    assert rank0["history"][-1]["train_loss"] == rank1["history"][-1]["train_loss"]  # metrics reduced


def test_two_ranks_equal_one_process_on_the_concatenated_batch(path_run):
    """The path integral is deterministic: the mean of the ranks' gradients is the gradient
    on the union of their batches, so the runs agree up to float rounding."""
    _, (rank0, _) = path_run
    x, y = blobs(EXAMPLES, seed=1)
    # DistributedSampler(shuffle=False) gives rank r the examples r, r + 2, ...: each step's
    # union is a contiguous block of 2 * BATCH examples.
    loader = DataLoader(TensorDataset(x, y), batch_size=2 * BATCH, shuffle=False)
    single = trainer_for(build(seed=0), "path_integral")
    steps: list[list[float]] = []
    single.optimizer.register_step_post_hook(lambda *_: steps.append(flat(single.model)))
    single.fit(loader, epochs=2)
    assert len(steps) == len(rank0["steps"])
    torch.testing.assert_close(torch.tensor(steps), torch.tensor(rank0["steps"]), rtol=1e-4, atol=1e-5)


def test_rank_zero_writes_a_checkpoint_that_resumes_on_one_process(path_run):
    out, (rank0, _) = path_run
    resumed = trainer_for(build(seed=3), "path_integral")
    assert resumed.resume(out / "checkpoint.pt") == 2
    torch.testing.assert_close(torch.tensor(flat(resumed.model)), torch.tensor(rank0["steps"][-1]))
    x, y = blobs(EXAMPLES, seed=1)
    resumed.fit(DataLoader(TensorDataset(x, y), batch_size=2 * BATCH), epochs=3)
    assert resumed.epoch == 3


def test_monte_carlo_ranks_draw_different_samples_and_stay_in_step(tmp_path):
    rank0, rank1 = _torchrun(tmp_path, "monte_carlo")
    assert rank0["draws"] != rank1["draws"]
    assert rank0["steps"] == rank1["steps"]


def test_the_vision_example_trains_data_parallel(tmp_path):
    """``torchrun ... -m examples.vision --strategy ddp`` on FakeData: every rank trains, rank 0
    writes the results."""
    _launch(
        "examples.vision",
        "--strategy",
        "ddp",
        "--dataset",
        "fashionmnist",
        "--fake",
        "--epochs",
        "1",
        "--limit",
        "32",
        "--test-limit",
        "16",
        "--models",
        "node",
        "--width",
        "4",
        "--context-dim",
        "8",
        "--hidden",
        "8",
        "--batch-size",
        "8",
        "--attack-examples",
        "4",
        "--attack-steps",
        "1",
        "--strong-steps",
        "1",
        "--strong-restarts",
        "1",
        "--apgd-steps",
        "0",
        "--square-queries",
        "0",
        "--sweep-eps",
        "0.1",
        "--no-transfer",
        "--optimizer",
        "adam",
        "--out-dir",
        str(tmp_path),
        timeout=600,
    )
    result = json.loads((tmp_path / "vision_fashionmnist_fake.json").read_text())
    assert "x 2 ranks (DDP)" in result["setup"]["device"]
    # node/standard, node/lyanet and node/robust; every rank also ran the equal-batch timing.
    assert [r["method"] for r in result["runs"]] == ["standard", "lyanet", "robust"]
    (lyanet,) = [r for r in result["runs"] if r["method"] == "lyanet"]
    assert lyanet["equal_batch_timing"]["ratio"] > 0


def test_lightning_ddp_keeps_the_ranks_in_step(tmp_path):
    """``LyapunovModule`` under Lightning's DDP strategy (2 CPU processes): Lightning calls
    ``training_step`` through the DDP wrapper, so gradients are synchronised."""
    pytest.importorskip("pytorch_lightning")
    _launch("tests.distributed.lightning_worker", str(tmp_path))
    rank0, rank1 = (json.loads((tmp_path / f"lightning_rank{r}.json").read_text()) for r in range(2))
    assert rank0["world_size"] == 2
    assert rank0["before"] != rank1["before"]  # the ranks started from different weights
    assert rank0["after"] == rank1["after"]  # and end identical
    assert rank0["after"] != rank0["before"]


def test_the_objective_trains_through_a_ddp_wrapped_step_of_ones_own():
    """examples/ddp_loop.py: the objective inside a module DDP wraps, 2 processes."""
    pytest.importorskip("torchdyn")
    _launch("examples.ddp_loop", "--epochs", "1", "--batch-size", "128")
