"""A step budget for adaptive solves, so that a diverging vector field ends in an error.

An adaptive solver (dopri5 in torchdyn or torchdiffeq) whose vector field returns NaN or
Inf rejects every step and shrinks ``dt`` without end: torchdyn's loop never returns,
torchdiffeq ends in an ``AssertionError`` about ``dt`` underflowing. The adapters count the
field's evaluations during a solve with :class:`EvaluationBudget` and raise
:class:`SolverError` instead, naming what went wrong:

- the field's output has a different shape from the state (checked at the first call);
- the field returned NaN/Inf (checked every ``FINITE_CHECK_EVERY`` evaluations, so that a
  GPU run is not synchronised at every call);
- the solve used more than ``max_evaluations`` evaluations (a stiff or runaway field).

The default budget follows diffrax's ``diffeqsolve(max_steps=4096)``: 4096 steps of a
6-stage Dormand-Prince solver is about 25,000 evaluations.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._validation import check_positive_int

__all__ = ["SolverError", "EvaluationBudget", "DEFAULT_MAX_EVALUATIONS", "FINITE_CHECK_EVERY"]

#: Vector-field evaluations one solve may use (diffrax's 4096 steps x 6 dopri5 stages).
DEFAULT_MAX_EVALUATIONS = 25_000
#: How often (in evaluations) the field's output is checked for NaN/Inf during a solve.
FINITE_CHECK_EVERY = 64


class SolverError(RuntimeError):
    """A solve of the model's ODE (paper Eq. 2, integrated for inference or for standard
    training) could not finish: non-finite or mis-shaped vector field, or more evaluations
    than the budget allows."""


class EvaluationBudget:
    """Count one solve's vector-field evaluations and stop a runaway solve.

    Arguments:
        max_evaluations: evaluations allowed for one solve.
        source: how to name the vector field in messages (e.g. ``"the torchdyn vector field"``).
    """

    def __init__(self, max_evaluations: int, *, source: str) -> None:
        self.max_evaluations = check_positive_int("max_evaluations", max_evaluations)
        if not isinstance(source, str):
            raise TypeError(f"source must be a str naming the vector field, got {type(source).__name__}")
        self.source = source
        self.count = 0

    def __call__(self, t: Any, state: Any, output: Any) -> None:
        """Record one evaluation ``output = f(t, state)``; raise :class:`SolverError` when
        the output cannot be integrated or the budget is spent."""
        self.count += 1
        if self.count == 1 and isinstance(state, Tensor) and isinstance(output, Tensor):
            if output.shape != state.shape:
                raise SolverError(
                    f"{self.source} must return a tensor of the state's shape {tuple(state.shape)}, "
                    f"got {tuple(output.shape)}"
                )
        if self.count % FINITE_CHECK_EVERY == 1 or self.count > self.max_evaluations:
            if isinstance(output, Tensor) and not bool(torch.isfinite(output.detach()).all()):
                time = float(torch.as_tensor(t).reshape(-1)[0])
                where = (
                    f"t={time:.4g}"
                    if math.isfinite(time)
                    else "a non-finite time (the step size had already become NaN/Inf)"
                )
                raise SolverError(
                    f"{self.source} returned NaN/Inf at {where} "
                    f"(evaluation {self.count}); an adaptive solver cannot take a step from there"
                )
        if self.count > self.max_evaluations:
            raise SolverError(
                f"the solve used more than max_evaluations={self.max_evaluations} evaluations of "
                f"{self.source} without reaching the end of the time span (a stiff or diverging field); "
                "raise max_evaluations, loosen the tolerances or use a fixed-step solver"
            )
