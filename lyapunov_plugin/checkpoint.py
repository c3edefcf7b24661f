"""Checkpoints of ``LyapunovTrainer`` (the training state of Algorithms 1-2): atomic writes,
safe loading, and validation of everything before anything is restored.

- **Atomic**: written to a temporary file in the same folder, fsynced, renamed into place;
  a crash or Ctrl-C leaves the old checkpoint or the new one, never a torn one. Temporary
  files that a killed process left behind are removed by the next save.
- **Safe**: loaded with ``torch.load(weights_only=True)``, so a crafted file cannot run
  code; the library's own checkpoints hold only tensors, numbers, strings and containers.
- **Checked**: the format, the library version that wrote it, every key, the model's
  parameter names and shapes, the optimiser's class and parameter groups, the scheduler
  and the RNG states are checked before the trainer is touched; anything wrong raises
  :class:`CheckpointError` (a ``ValueError``) naming what.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

import torch

__all__ = [
    "CheckpointError",
    "FORMAT",
    "atomic_write",
    "load_checkpoint",
    "check_compatible",
    "capture_rng",
    "restore_rng",
]

#: Version 2: library version, optimiser and scheduler classes recorded; weights-only loading.
FORMAT = "lyapunov_plugin.checkpoint/2"
REQUIRED_KEYS = (
    "format",
    "library_version",
    "epoch",
    "mode",
    "model",
    "optimizer",
    "optimizer_class",
    "scheduler",
    "scheduler_class",
    "base_lrs",
    "history",
    "skipped_steps",
    "rng",
)
_RNG_KEYS = ("torch", "python", "generator")


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for this trainer; nothing was restored."""


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def atomic_write(path: Union[str, Path], write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder and rename it into place; remove
    temporary files of earlier writes of ``path`` that a killed process left behind."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {str(path)!r} is a directory; pass a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f"{_temporary_prefix(path)}*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path), suffix=".tmp")
    done = False
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done and os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Union[str, Path]) -> dict[str, Any]:
    """Read a checkpoint written by ``LyapunovTrainer.save`` (weights only) and check its
    format and keys; raise :class:`CheckpointError` for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        EOFError,
        RuntimeError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        AttributeError,
        TypeError,
    ) as err:
        raise CheckpointError(
            f"{str(path)!r} is not a readable lyapunov_plugin checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); a file from another program, a truncated "
            "write or one that needs code to load is refused"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a lyapunov_plugin checkpoint of format {FORMAT!r} (found {found!r})"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {missing}")
    rng = state["rng"]
    if not isinstance(rng, dict) or any(k not in rng for k in _RNG_KEYS):
        raise CheckpointError(f"checkpoint {str(path)!r} lacks RNG states {list(_RNG_KEYS)}")
    return state


def check_compatible(
    state: dict[str, Any], *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, mode: Any
) -> None:
    """Raise :class:`CheckpointError` unless ``state`` can be restored into these objects
    exactly (before anything is loaded)."""
    if mode is not None and state["mode"] is not None and state["mode"] != mode:
        raise CheckpointError(f"checkpoint was trained with mode={state['mode']!r}, this trainer uses {mode!r}")
    current, saved = model.state_dict(), state["model"]
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint's model state must be a dict, got {type(saved).__name__}")
    missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    wrong = [k for k in current if tuple(current[k].shape) != tuple(saved[k].shape)]
    if wrong:
        raise CheckpointError(f"checkpoint shapes differ from the model for {wrong}")
    if state["optimizer_class"] != type(optimizer).__name__:
        raise CheckpointError(
            f"checkpoint's optimiser is {state['optimizer_class']}, this trainer's is {type(optimizer).__name__}"
        )
    groups = state["optimizer"].get("param_groups") if isinstance(state["optimizer"], dict) else None
    if not isinstance(groups, list) or [len(g.get("params", ())) for g in groups] != [
        len(g["params"]) for g in optimizer.param_groups
    ]:
        raise CheckpointError("checkpoint's optimiser parameter groups do not match this trainer's")
    scheduler_class = type(scheduler).__name__ if scheduler is not None else None
    if state["scheduler_class"] != scheduler_class:
        raise CheckpointError(
            f"checkpoint's LR scheduler is {state['scheduler_class']}, this trainer's is {scheduler_class}"
        )
    if len(state["base_lrs"]) != len(optimizer.param_groups):
        raise CheckpointError("checkpoint's base learning rates do not match the optimiser's parameter groups")


def capture_rng(generator: torch.Generator, generator_ranks: Optional[list[Any]] = None) -> dict[str, Any]:
    """The RNG states a resumed run needs to continue exactly: the global CPU (and CUDA)
    generators, Python's, and the trainer's sampling generator (every rank's, when given)."""
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    if generator_ranks is not None:
        rng["generator_ranks"] = generator_ranks
    return rng


def restore_rng(rng: dict[str, Any], generator: torch.Generator, *, rank: int, world_size: int) -> None:
    """Restore :func:`capture_rng`'s states. Resumed on the same number of ranks, each rank
    continues its own stream; on another number, rank 0 continues the saved stream and the
    others branch off it deterministically."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    ranks = rng.get("generator_ranks")
    if isinstance(ranks, list) and len(ranks) == world_size:
        generator.set_state(ranks[rank])
    else:
        generator.set_state(rng["generator"])
        if rank > 0:
            branch = int(torch.randint(0, 2**62, (1,), generator=generator))
            generator.manual_seed((branch + rank) % 2**64)
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
