"""Checkpoints can't hurt: corrupt, foreign, crafted or incompatible files are refused with a
clear error and leave the trainer exactly as it was; saves clean up after killed writes."""

import pickle

import pytest
import torch
import torch.nn as nn

import lyapunov_plugin
from lyapunov_plugin import FixedStepSolver, LyapunovTrainer, ODEModel, Recipe
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.checkpoint import CheckpointError, load_checkpoint

from ..models import blobs, loader
from .state import assert_unchanged as _assert_unchanged
from .state import snapshot as _snapshot


def _trainer(optimizer="adam", seed=0):
    torch.manual_seed(seed)
    model = ODEModel(
        MLPDynamics(2, 2, (8,)), state_shape=(2,), encoder=nn.Identity(), solver=FixedStepSolver(method="rk4", steps=2)
    )
    return LyapunovTrainer(model, Recipe(optimizer=optimizer), progress=False, seed=seed)


@pytest.fixture
def saved(tmp_path):
    trainer = _trainer()
    trainer.fit(loader(*blobs(64, seed=1)), epochs=1)
    path = tmp_path / "ckpt.pt"
    trainer.save(path)
    return path


class _Boom:
    """A pickle that would create a file when loaded without weights_only."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_corrupt_and_foreign_files_are_refused_without_touching_the_trainer(saved, tmp_path):
    data = saved.read_bytes()
    bad = {
        "empty.pt": b"",
        "short.pt": b"0123456789abcdef",
        "random.pt": bytes(range(256)) * 8,
        "truncated.pt": data[: len(data) // 2],
        "text.pt": b"not a checkpoint\n",
    }
    trainer = _trainer(seed=3)
    snapshot = _snapshot(trainer)
    for name, content in bad.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match="is not a readable lyapunov_plugin checkpoint"):
            trainer.resume(tmp_path / name)
        _assert_unchanged(trainer, snapshot)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="is not a lyapunov_plugin checkpoint of format"):
        trainer.resume(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        trainer.resume(tmp_path)
    with pytest.raises(FileNotFoundError):
        trainer.resume(tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        trainer.resume(None)
    _assert_unchanged(trainer, snapshot)


def test_a_crafted_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "ran.txt"
    with open(tmp_path / "crafted.pt", "wb") as handle:
        pickle.dump({"format": "lyapunov_plugin.checkpoint/2", "payload": _Boom(marker)}, handle)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "crafted.pt")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["rng", "optimizer", "model", "library_version"])
def test_a_checkpoint_missing_a_part_is_refused_before_anything_loads(saved, tmp_path, key):
    state = torch.load(saved, weights_only=True)
    del state[key]
    torch.save(state, tmp_path / "partial.pt")
    trainer = _trainer(seed=3)
    snapshot = _snapshot(trainer)
    with pytest.raises(CheckpointError, match=rf"lacks \['{key}'\]"):
        trainer.resume(tmp_path / "partial.pt")
    _assert_unchanged(trainer, snapshot)


def test_an_adam_checkpoint_is_refused_by_an_sgd_trainer(saved):
    trainer = _trainer(optimizer="sgd", seed=3)
    snapshot = _snapshot(trainer)
    with pytest.raises(CheckpointError, match="checkpoint's optimiser is Adam, this trainer's is SGD"):
        trainer.resume(saved)
    _assert_unchanged(trainer, snapshot)


def test_saves_record_the_version_and_clean_up_after_killed_writes(saved, tmp_path):
    stale = tmp_path / ".ckpt.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    trainer = _trainer()
    trainer.save(saved)
    assert not stale.exists()
    assert load_checkpoint(saved)["library_version"] == lyapunov_plugin.__version__
    assert _trainer(seed=5).resume(saved) == 0


def test_fit_refuses_a_directory_as_checkpoint_path_before_training(tmp_path):
    trainer = _trainer()
    snapshot = _snapshot(trainer)
    with pytest.raises(ValueError, match="checkpoint_path must be a file name, got the directory"):
        trainer.fit(loader(*blobs(64, seed=1)), epochs=1, checkpoint_path=tmp_path)
    _assert_unchanged(trainer, snapshot)
