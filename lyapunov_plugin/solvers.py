"""A fixed-step ODE solver in plain PyTorch.

The core never imports an ODE library; anything with the call signature of
``torchdiffeq.odeint``, ``solver(func, y0, ts) -> (T, *y0.shape)`` with ``func(t, y)``,
can be passed where a solver is expected. :class:`FixedStepSolver` is the one the core
ships: fixed steps are what the robustness protocol attacks through (adaptive step
control masks gradients), what cheap training rollouts use, and what the ResNet view of
a Neural ODE is (paper Eq. 4).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._validation import check_choice, check_finite, check_positive_int, check_tensor

__all__ = ["FixedStepSolver"]

_METHODS = ("euler", "midpoint", "rk4")


# Grid spacings come from float32 time grids as often as from float64 ones: a share of
# the steps within this distance of an integer is that integer (linspace(0, 1, 11) in
# float32 must give 1 step per interval, not 2).
_INTEGER_TOLERANCE = 1e-4


def _substeps(exact: float) -> int:
    nearest = round(exact)
    if abs(exact - nearest) < _INTEGER_TOLERANCE:
        return max(1, nearest)
    return max(1, math.ceil(exact))


@dataclass(frozen=True, kw_only=True)
class FixedStepSolver:
    """Explicit fixed-step integration: Euler (paper Eq. 4), midpoint or classical RK4.

    ``steps`` is the number of steps over the whole span ``ts[0] -> ts[-1]``; each
    output interval gets its share (at least one step), so the step size is the same
    whether one asks for the end point only or for a dense grid.

    Arguments:
        method: ``"euler"``, ``"midpoint"`` or ``"rk4"``.
        steps: steps over the span, ``>= 1``.
    """

    method: str = "rk4"
    steps: int = 20

    def __post_init__(self) -> None:
        check_choice("method", self.method, _METHODS)
        check_positive_int("steps", self.steps)

    def __call__(self, func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, ts: Tensor) -> Tensor:
        """Integrate ``dy/dt = func(t, y)`` from ``y0`` at ``ts[0]``.

        Returns:
            ``(len(ts), *y0.shape)`` states at ``ts`` (``ts[0]`` gives ``y0``).
        """
        return self.solve_with_slopes(func, y0, ts)[0]

    def solve_with_slopes(
        self, func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, ts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`__call__`, also returning ``func(ts[i], y(ts[i]))`` for ``i < len(ts) - 1``:
        the first stage of each step that starts on the grid, which every method computes
        anyway. A caller that needs ``dy/dt`` at the grid states (the path-integral loss,
        Eq. 12 along the trajectory) then evaluates ``func`` once more only at the end.

        Returns:
            ``(states, slopes)``: ``(len(ts), *y0.shape)`` and ``(len(ts) - 1, *y0.shape)``.
        """
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y) -> dy/dt, got {type(func).__name__}")
        check_tensor("y0", y0, floating=True)
        check_tensor("ts", ts, min_ndim=1, floating=True)
        if ts.ndim != 1:
            raise ValueError(f"ts must be one-dimensional, got shape {tuple(ts.shape)}")
        check_finite("ts", ts)
        if ts.numel() > 1 and not bool((ts[1:] > ts[:-1]).all()) and not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"ts must be strictly monotonic, got {ts.tolist()}")
        ts = ts.to(dtype=y0.dtype, device=y0.device)
        # The grid is a constant of the solve (as in Eq. 4): step sizes are Python floats, so
        # each stage is one fused ``y + a * k`` and no 0-d tensor arithmetic runs per step (at
        # the batch sizes of training rollouts that arithmetic cost more than the field), and
        # the stage times are made in one call. A grid that requires grad keeps tensor
        # arithmetic, so its gradient still flows.
        values: list[float] = ts.detach().tolist()
        grid: list[Any] = list(ts.unbind()) if ts.requires_grad else values
        span = abs(values[-1] - values[0]) if len(values) > 1 else 0.0
        intervals = []  # per output interval: its step size and substeps
        for i in range(len(values) - 1):
            substeps = _substeps(self.steps * abs(values[i + 1] - values[i]) / span)
            intervals.append(((grid[i + 1] - grid[i]) / substeps, substeps))
        offsets = _STAGE_OFFSETS[self.method]
        starts = zip(grid[:-1], intervals, strict=True)
        stage_times = [t0 + (k + c) * h for t0, (h, n) in starts for k in range(n) for c in offsets]
        times = iter(self._stage_times(stage_times, ts))
        states, slopes = [y0], []
        y = y0
        for h, substeps in intervals:
            for k in range(substeps):
                stage = [next(times) for _ in offsets]
                k1 = func(stage[0], y)
                if k == 0:
                    slopes.append(k1)
                y = self._step(func, stage, y, h, k1)
            states.append(y)
        empty = y0.new_empty((0, *y0.shape))
        return torch.stack(states), (torch.stack(slopes) if slopes else empty)

    @staticmethod
    def _stage_times(values: list[Any], like: Tensor) -> list[Tensor]:
        """The stage times as 0-d tensors of ``like``'s dtype and device (``func(t, y)`` takes a
        tensor ``t``, as torchdiffeq's does): one tensor made from floats, or the tensor
        expressions themselves when the grid requires grad."""
        if not values:
            return []
        if isinstance(values[0], Tensor):
            return [torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in values]
        return list(torch.tensor(values, dtype=like.dtype, device=like.device).unbind())

    def _step(self, func: Callable[[Tensor, Tensor], Tensor], t: list[Tensor], y: Tensor, h: Any, k1: Tensor) -> Tensor:
        """One step from ``y`` at stage times ``t`` (``_STAGE_OFFSETS`` of the method)."""
        if self.method == "euler":
            return _axpy(y, h, k1)
        if self.method == "midpoint":
            return _axpy(y, h, func(t[1], _axpy(y, h / 2, k1)))
        k2 = func(t[1], _axpy(y, h / 2, k1))
        k3 = func(t[1], _axpy(y, h / 2, k2))
        k4 = func(t[2], _axpy(y, h, k3))
        return _axpy(y, h / 6, _axpy(_axpy(_axpy(k1, 2.0, k2), 2.0, k3), 1.0, k4))


# Stage times of one step from t, as fractions of the step: the tableau's c vector without
# its repeats (RK4's two middle stages share t + h/2).
_STAGE_OFFSETS = {"euler": (0.0,), "midpoint": (0.0, 0.5), "rk4": (0.0, 0.5, 1.0)}


def _axpy(y: Tensor, a: Any, k: Tensor) -> Tensor:
    """``y + a * k``: one fused op for a float ``a``, tensor arithmetic for a tensor one."""
    return torch.add(y, k, alpha=a) if isinstance(a, float) else y + a * k
