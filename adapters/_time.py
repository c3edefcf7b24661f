"""Evaluating a library vector field at per-sample times.

ODE libraries call ``f(t, y)`` with one scalar ``t`` for the whole batch, but Algorithm 1
samples a time per state. :class:`PerSampleTime` bridges the two:

1. all times equal (trajectories, shared-time samplers): call with the scalar, exactly
   as the library would;
2. otherwise try the times as a ``(B, 1, ..., 1)`` tensor, which broadcasts against the
   state in the usual ``t * ones_like(y[:, :1])``, ``cat([y, t.expand(B, 1)])`` and
   torchdyn ``DepthCat`` idioms;
3. if the vector field rejects that (raises, or returns the wrong shape), fall back for
   good to one call per distinct time (correct for any ``f``, slower), with one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Optional, overload

import torch
from torch import Tensor

# What a vector field written for scalar t typically raises when handed a tensor of times.
_SHAPE_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


#: ``field(t, rows)``: the library's vector field at ``eta[rows]`` (all states when
#: ``rows`` is ``None``), conditioned on the matching rows of the context.
RowField = Callable[[Tensor, Optional[Tensor]], Tensor]


class PerSampleTime:
    """Evaluate a :data:`RowField` for a ``(B,)`` tensor of times (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode: Optional[str] = None  # None (undecided), "batched" or "grouped"

    def __call__(self, field: RowField, eta: Tensor, t: Tensor) -> Tensor:
        # An expanded scalar (stride 0, what a solver's shared time becomes) needs no comparison.
        if t.ndim == 0 or t.stride(0) == 0 or bool((t == t[0]).all()):
            return field(t.reshape(-1)[0], None)
        if self.mode != "grouped":
            t_batched = t.reshape(t.shape[0], *([1] * (eta.ndim - 1)))
            if self.mode == "batched":
                return field(t_batched, None)
            try:
                out = field(t_batched, None)
            except _SHAPE_ERRORS as err:
                reason = f"it raised {type(err).__name__}: {err}"
            else:
                if isinstance(out, Tensor) and out.shape == eta.shape:
                    self.mode = "batched"
                    return out
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                reason = f"it returned {shape} for states of shape {tuple(eta.shape)}"
            self.mode = "grouped"
            warnings.warn(
                f"{self.name} does not accept a tensor of per-sample times ({reason}); "
                "evaluating it once per distinct time instead, which is slower. Use a time "
                "sampler with few distinct times, or let the vector field broadcast t of shape (B, 1).",
                RuntimeWarning,
                stacklevel=3,
            )
        return self._grouped(field, t)

    @staticmethod
    def _grouped(field: RowField, t: Tensor) -> Tensor:
        values, inverse = torch.unique(t, return_inverse=True)
        parts, order = [], []
        for k in range(values.numel()):
            index = (inverse == k).nonzero(as_tuple=True)[0]
            parts.append(field(values[k], index))
            order.append(index)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]


@overload
def select_rows(value: Tensor, rows: Optional[Tensor]) -> Tensor: ...


@overload
def select_rows(value: None, rows: Optional[Tensor]) -> None: ...


@overload
def select_rows(value: Optional[Tensor], rows: Optional[Tensor]) -> Optional[Tensor]: ...


def select_rows(value: Optional[Tensor], rows: Optional[Tensor]) -> Optional[Tensor]:
    """``value[rows]``, passing ``None`` (no value, or all rows) through."""
    return value if value is None or rows is None else value[rows]
