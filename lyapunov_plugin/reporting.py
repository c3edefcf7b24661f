"""What a training run reports: the progress bar, the per-epoch summary line, the metrics
file, and the fixed reference set whose numbers mean the same thing from epoch to epoch.

The trainer's loop calls these; nothing here changes what is trained.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ._validation import time_dtype
from .checkpoint import atomic_write
from .diagnostics import trajectory_violation_rate
from .inference import EvalMode, predict
from .model import LyapunovModel
from .potentials import Potential

__all__ = ["REFERENCE_SIZE", "ReferenceSet", "progress", "summary_line", "write_metrics"]

#: Examples of the first training batch kept as the fixed reference set of the per-epoch
#: summary: its numbers mean the same thing from epoch to epoch.
REFERENCE_SIZE = 256


def progress(iterable: Any, enabled: bool, desc: str) -> Any:
    """``iterable`` behind a tqdm bar when ``enabled`` and tqdm is installed (no bar when
    stderr is not a terminal: a log file gets the summary lines only)."""
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def summary_line(record: dict[str, Any]) -> str:
    """One line per epoch: loss, training violation, reference-set numbers, validation error."""
    parts = [
        f"epoch {record['epoch']}/{record['epochs']}",
        f"[{record['mode']}]",
        f"loss {record.get('train_loss', math.nan):.4g}",
    ]
    if "train_violation" in record:
        parts.append(f"viol {record['train_violation']:.3f}")
    if "ref_error" in record:
        parts.append(f"ref error {100 * record['ref_error']:.1f}%")
    if "ref_v_end" in record:
        parts.append(f"ref V(t_end) {record['ref_v_end']:.3g}")
    if "ref_violation" in record:
        parts.append(f"ref Eq.10 violated {100 * record['ref_violation']:.1f}%")
    if "val_error" in record:
        parts.append(f"val error {100 * record['val_error']:.1f}%")
    parts.append(f"{record['train_seconds']:.1f}s")
    return "  ".join(parts)


def write_metrics(path: Union[str, Path], history: Iterable[dict[str, Any]]) -> None:
    """Write a training history to ``path`` (``.csv`` or ``.json``), atomically."""
    path = Path(path)
    rows = list(history)
    if path.suffix == ".json":
        atomic_write(path, lambda f: f.write(json.dumps(rows, indent=2)), mode="w")
        return
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys)

    def write(handle: Any) -> None:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    atomic_write(path, write, mode="w")


@dataclass
class ReferenceSet:
    """The first training examples seen (at most :data:`REFERENCE_SIZE`), kept for the
    per-epoch numbers and saved with checkpoints, so a resumed run reports on the same
    examples."""

    x: Optional[Tensor] = None
    y: Optional[Tensor] = None

    def remember(self, x: Tensor, y: Tensor) -> None:
        """Keep the first rows of this batch, unless a set is already held."""
        if self.x is None:
            self.x, self.y = x[:REFERENCE_SIZE].detach().clone(), y[:REFERENCE_SIZE].detach().clone()

    def state(self) -> Optional[dict[str, Tensor]]:
        """For a checkpoint (``None`` while empty)."""
        if self.x is None or self.y is None:
            return None
        return {"x": self.x.cpu(), "y": self.y.cpu()}

    def restore(self, state: Any, device: torch.device) -> None:
        """From :meth:`state` (a missing or empty entry leaves the set empty)."""
        if isinstance(state, dict) and isinstance(state.get("x"), Tensor) and isinstance(state.get("y"), Tensor):
            self.x, self.y = state["x"].to(device), state["y"].to(device)
        else:
            self.x = self.y = None

    def metrics(self, model: LyapunovModel, potential: Potential, *, kappa: float, t_end: float) -> dict[str, float]:
        """Error (class labels only) and mean ``V`` at ``t_end``, and the fraction of states
        along the inference trajectory (5 points, the model's own solver) where Eq. (10)
        fails; empty before the first batch."""
        if self.x is None or self.y is None:
            return {}
        x, y = self.x, self.y
        ts = torch.linspace(0.0, t_end, 5, dtype=time_dtype(x), device=x.device)
        with EvalMode(model), torch.no_grad():
            out: dict[str, float] = {
                "ref_violation": trajectory_violation_rate(model, (x, y), potential=potential, kappa=kappa, ts=ts),
            }
            logits = predict(model, x, t_end=t_end)
            out["ref_v_end"] = float(potential.value(logits, y).mean())
            if not y.is_floating_point():
                out["ref_error"] = float((logits.argmax(-1) != y).double().mean())
        return out
