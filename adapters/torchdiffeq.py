"""torchdiffeq-style models as a :class:`~lyapunov_plugin.LyapunovModel` (paper Eq. 1-3).

A torchdiffeq user writes a vector field module ``func(t, y)`` and integrates it with
``odeint`` or ``odeint_adjoint``. :class:`TorchdiffeqModel` adds the two pieces LyaNet
needs around it, an input layer and a readout, and passes the conditioning explicitly:

- ``func(t, y)``: the dynamics do not see the input; ``eta(0) = encoder(x)`` carries
  the example (``conditioned_on_input = False``; the trainer then trains along
  trajectories, see ``lyapunov_plugin.adapters.torchdyn`` for why).
- ``func(t, y, context)``: data-controlled dynamics ``f(eta, x, t)`` with
  ``context = encoder(x)``; ``eta(0)`` is zeros of ``state_shape`` (the paper's choice)
  or ``encoder(x)``.

Integration uses the user's ``method``, ``rtol``, ``atol`` and ``options`` exactly. With
``adjoint=True`` gradients come from ``odeint_adjoint``; for a conditioned ``func`` the
context then rides along as a constant part of the state, so that the adjoint returns
its gradient to the encoder. Step-size control uses a norm over ``eta`` alone (unless the
user's ``options`` set one), so the forward solve takes the same steps as plain ``odeint``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, Optional, cast

import torch
from torch import Tensor, nn

from lyapunov_plugin.adapter import (
    NeuralODEAdapter,
    Solution,
    check_choice,
    check_positive,
    check_positive_int,
    check_shape_sequence,
)
from lyapunov_plugin.budget import DEFAULT_MAX_EVALUATIONS, EvaluationBudget, SolverError

from ._time import PerSampleTime, select_rows

try:
    import torchdiffeq
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lyapunov_plugin.adapters.torchdiffeq needs torchdiffeq: pip install 'lyapunov-plugin[torchdiffeq]'"
    ) from err

__all__ = ["TorchdiffeqModel", "takes_context"]


def _solver_registry() -> Optional[dict[str, Any]]:
    """torchdiffeq's own solver registry, name -> class (private module; ``None`` if it moved)."""
    try:
        from torchdiffeq._impl.odeint import SOLVERS
    except ImportError:
        return None
    return dict(SOLVERS)


def _solver_class(method: str) -> Optional[type]:
    """torchdiffeq's class for ``method`` (``None`` if unknown or the registry moved)."""
    found = (_solver_registry() or {}).get(method)
    return found if isinstance(found, type) else None


def _is_fixed_grid(solver: type) -> bool:
    try:
        from torchdiffeq._impl.solvers import FixedGridODESolver
    except ImportError:
        return False
    return issubclass(solver, FixedGridODESolver)


def _positional_arity(func: Callable[..., Any]) -> int:
    target = func.forward if isinstance(func, nn.Module) else func
    params = inspect.signature(target).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in params if p.kind in kinds)


def takes_context(func: Callable[..., Any]) -> bool:
    """True if ``func`` is called as ``func(t, y, context)``, False for ``func(t, y)``."""
    arity = _positional_arity(func)
    if arity < 2:
        raise TypeError(
            f"func must be called as func(t, y) or func(t, y, context) (torchdiffeq convention), "
            f"got a callable with {arity} positional parameter(s)"
        )
    return arity >= 3


def _eta_rms_norm(state: tuple[Tensor, ...]) -> Tensor:
    """RMS norm of ``eta`` alone; torchdiffeq hands a user norm the state as a tuple."""
    return state[0].abs().pow(2).mean().sqrt()


class _ConditionedField(nn.Module):
    """``(eta, context) -> (f(t, eta, context), 0)``: the context as constant state, so
    ``odeint_adjoint`` returns its gradient."""

    def __init__(self, func: Callable[..., Tensor], budget: EvaluationBudget) -> None:
        super().__init__()
        self.func = func
        self.budget = budget

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        eta, context = state
        out = self.func(t, eta, context)
        self.budget(t, eta, out)
        return out, torch.zeros_like(context)


class _Counted(nn.Module):
    """``func(t, y)`` (or ``func(t, y, context)`` with a fixed context) as a module that
    counts evaluations; ``odeint_adjoint`` needs a module."""

    def __init__(self, func: Callable[..., Tensor], budget: EvaluationBudget, context: Optional[Tensor]) -> None:
        super().__init__()
        self.func = func
        self.budget = budget
        self.context = context

    def forward(self, t: Tensor, eta: Tensor) -> Tensor:
        out = self.func(t, eta) if self.context is None else self.func(t, eta, self.context)
        self.budget(t, eta, out)
        return out


class TorchdiffeqModel(NeuralODEAdapter):
    """A torchdiffeq vector field with input layer and readout (see module docstring).

    Arguments:
        func: ``func(t, y)`` or ``func(t, y, context)``; an ``nn.Module`` for ``adjoint=True``.
        encoder: ``x -> context`` (``phi``); ``None`` passes ``x`` through.
        readout: ``psi``; ``None`` is the identity.
        state_shape: shape of one state; when given, ``eta(0)`` is zeros of it (requires a
            conditioned ``func``), otherwise ``eta(0) = encoder(x)``.
        method, rtol, atol, options: passed to ``torchdiffeq.odeint``.
        adjoint: integrate with ``odeint_adjoint`` (memory-light gradients).
        t_end: inference horizon (1 in the paper).
        max_evaluations: evaluations of ``func`` one solve may use; a solve that needs
            more, or whose ``func`` returns NaN/Inf, raises
            :class:`~lyapunov_plugin.budget.SolverError` (torchdiffeq's own outcome is an
            ``AssertionError`` about ``dt`` underflowing, after a long time).
    """

    field_name = "func"

    def __init__(
        self,
        func: Callable[..., Tensor],
        *,
        encoder: Optional[Callable[[Tensor], Tensor]] = None,
        readout: Optional[Callable[[Tensor], Tensor]] = None,
        state_shape: Optional[Sequence[int]] = None,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        options: Optional[dict[str, Any]] = None,
        adjoint: bool = False,
        t_end: float = 1.0,
        max_evaluations: int = DEFAULT_MAX_EVALUATIONS,
    ) -> None:
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y) or func(t, y, context), got {type(func).__name__}")
        registry = _solver_registry()
        if registry is not None:
            check_choice("method", method, tuple(registry))
        if not isinstance(adjoint, bool):
            raise TypeError(f"adjoint must be a bool, got {type(adjoint).__name__} {adjoint!r}")
        if adjoint and not isinstance(func, nn.Module):
            raise TypeError(
                f"func must be an nn.Module for adjoint=True (odeint_adjoint needs its parameters), "
                f"got {type(func).__name__}"
            )
        super().__init__(t_end=t_end, conditioned_on_input=takes_context(func))
        self.func = func
        if state_shape is not None:
            shape = check_shape_sequence("state_shape", state_shape)
            if not self.conditioned_on_input:
                raise ValueError(
                    "state_shape (zero initial state) needs a conditioned func(t, y, context): with func(t, y) "
                    "and eta(0) = 0 every example would follow the same trajectory"
                )
            self.state_shape: Optional[tuple[int, ...]] = shape
        else:
            self.state_shape = None
        for name, layer in (("encoder", encoder), ("readout", readout)):
            if layer is not None and not callable(layer):
                raise TypeError(f"{name} must be a callable (e.g. an nn.Module) or None, got {type(layer).__name__}")
        if options is not None and not isinstance(options, dict):
            raise TypeError(f"options must be a dict of torchdiffeq solver options, got {type(options).__name__}")
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.readout_module = readout if readout is not None else nn.Identity()
        self.method = method
        self.rtol = check_positive("rtol", rtol)
        self.atol = check_positive("atol", atol)
        self.options = dict(options) if options is not None else None
        self.adjoint = bool(adjoint)
        self.max_evaluations = check_positive_int("max_evaluations", max_evaluations)
        self._time = PerSampleTime("the torchdiffeq func")

    @property
    def fixed_steps(self) -> Optional[int]:
        """Steps of a fixed-grid torchdiffeq method (euler, midpoint, rk4, ...) over
        ``[0, t_end]``: ``ceil(t_end / step_size)`` with a ``step_size`` option, 1 without
        (the grid is then the requested times); ``None`` for adaptive methods or a custom
        grid."""
        solver = _solver_class(self.method)
        if solver is None or not _is_fixed_grid(solver):
            return None
        options = self.options or {}
        if set(options) - {"step_size"}:
            return None
        step = options.get("step_size")
        if step is None:
            return 1
        return max(1, math.ceil(self.t_end / float(step) - 1e-9))

    @property
    def initial_state_trainable(self) -> bool:
        """``eta(0)`` is zeros of ``state_shape``, or ``encoder(x)``: trainable with the encoder."""
        if self.state_shape is not None:
            return False
        return isinstance(self.encoder, nn.Module) and any(p.requires_grad for p in self.encoder.parameters())

    def _call(self, t: Tensor, eta: Tensor, context: Optional[Tensor]) -> Tensor:
        if self.conditioned_on_input:
            return self.func(t, eta, context)
        return self.func(t, eta)

    def _encode(self, x: Tensor) -> tuple[Optional[Tensor], Tensor]:
        h = self.encoder(x)
        if self.state_shape is not None:
            eta0 = torch.zeros((x.shape[0], *self.state_shape), dtype=h.dtype, device=h.device)
        else:
            eta0 = h
        return (h if self.conditioned_on_input else None), eta0

    def _field(self, eta: Tensor, context: Optional[Tensor], t: Tensor) -> Tensor:
        if self.conditioned_on_input and not isinstance(context, Tensor):
            raise ValueError(f"context must be a tensor with one row per state ({eta.shape[0]}), got {context!r}")

        def field(tt: Tensor, rows: Optional[Tensor]) -> Tensor:
            return self._call(tt, select_rows(eta, rows), select_rows(context, rows))

        return self._time(field, eta, t)

    def _solve(self, context: Optional[Tensor], eta0: Tensor, ts: Tensor) -> Solution:
        """torchdiffeq's solve of ``eta(0)`` at ``ts``, with the evaluations of ``func`` it used."""
        ts = ts.to(device=eta0.device, dtype=eta0.dtype)
        budget = EvaluationBudget(self.max_evaluations, source="func")
        kwargs: dict[str, Any] = dict(rtol=self.rtol, atol=self.atol, method=self.method, options=self.options)
        augmented = self.conditioned_on_input and self.adjoint
        if augmented:
            field: nn.Module = _ConditionedField(self.func, budget)
            if self.options is None or "norm" not in self.options:
                # Step control (and the initial step) on eta alone, as plain odeint would do:
                # the constant context must not change the forward solve.
                kwargs["options"] = {**(self.options or {}), "norm": _eta_rms_norm}
            solve: Callable[..., Any] = torchdiffeq.odeint_adjoint
            y0: Any = (eta0, context)
            # __init__ requires func to be an nn.Module when adjoint is set.
            extra = {"adjoint_params": tuple(cast(nn.Module, self.func).parameters())}
        else:
            field = _Counted(self.func, budget, context if self.conditioned_on_input else None)
            solve = torchdiffeq.odeint_adjoint if self.adjoint else torchdiffeq.odeint
            y0 = eta0
            extra = {"adjoint_params": tuple(cast(nn.Module, self.func).parameters())} if self.adjoint else {}
        try:
            out = solve(field, y0, ts, **kwargs, **extra)
        except AssertionError as err:
            # torchdiffeq's adaptive solvers assert when the step size underflows.
            if "underflow in dt" not in str(err):
                raise
            raise SolverError(
                f"torchdiffeq's {self.method} could not advance (step size underflow after "
                f"{budget.count} evaluations of func): the field is too stiff or diverges"
            ) from err
        return Solution(states=out[0] if augmented else out, ts=ts, nfe=budget.count)
