"""torchode models as a :class:`~lyapunov_plugin.LyapunovModel` (paper Eq. 1-3).

torchode (Lienen & Günnemann, 2022) steps every example of a batch on its own: each has
its own step size, accepted steps and evaluation count. A torchode user has a vector
field ``f(t, y)`` (``t`` of shape ``(B,)``, ``y`` of shape ``(B, F)``), an ``ODETerm``
around it, and a solver built from a step method and a step-size controller::

    term = to.ODETerm(f)                                   # or ODETerm(f, with_args=True)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1e-6, rtol=1e-3, term=term))
    sol = solver.solve(to.InitialValueProblem(y0=y0, t_eval=t_eval))

:class:`TorchodeModel` takes any of the three and adds the two pieces LyaNet needs around
it, an input layer and a readout. Conditioning uses torchode's own ``args``: a term with
``with_args=True`` (or a field ``f(t, y, context)``) is called as ``f(t, y, context)`` with
``context = encoder(x)``, data-controlled dynamics; a plain ``f(t, y)`` sees the input only
through ``eta(0) = encoder(x)`` (``conditioned_on_input = False``, so the trainer trains
along trajectories).

Because torchode's fields already take one time per example, sampled states at sampled
times (Algorithm 1) are evaluated in one call. Solves report torchode's per-example
statistics in the :class:`~lyapunov_plugin.Solution` (``nfe_per_example`` from
``stats["n_f_evals"]``, ``steps_per_example`` from ``stats["n_steps"]``), and a solve whose
status is not ``SUCCESS`` raises :class:`~lyapunov_plugin.SolverError`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, Optional

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
from lyapunov_plugin.budget import DEFAULT_MAX_EVALUATIONS, SolverError

try:
    import torchode as to
    from torchode.interface import METHODS
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lyapunov_plugin.adapters.torchode needs torchode: pip install 'lyapunov-plugin[torchode]'"
    ) from err

__all__ = ["TorchodeModel", "is_torchode_model", "DEFAULT_MAX_STEPS"]

#: Steps one solve may take when TorchodeModel builds the solver: the evaluation budget of
#: the other adapters (diffrax's 4096 steps of a 6-stage method) in steps.
DEFAULT_MAX_STEPS = DEFAULT_MAX_EVALUATIONS // 6


def _step_methods() -> dict[str, Callable[..., Any]]:
    """torchode's registered step methods by name (``register_method``), plus ``euler``."""
    return {**METHODS, "euler": to.Euler}


def is_torchode_model(model: object) -> bool:
    """True for a torchode ``AutoDiffAdjoint`` solver or ``ODETerm``."""
    return isinstance(model, (to.AutoDiffAdjoint, to.ODETerm))


def _takes_context(func: Callable[..., Any]) -> bool:
    target = func.forward if isinstance(func, nn.Module) else func
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    arity = sum(1 for p in inspect.signature(target).parameters.values() if p.kind in kinds)
    if arity < 2:
        raise TypeError(
            f"func must be called as f(t, y) or f(t, y, context) (torchode convention), got a callable with "
            f"{arity} positional parameter(s)"
        )
    return arity >= 3


class TorchodeModel(NeuralODEAdapter):
    """A torchode vector field, term or solver with input layer and readout (see the module docstring).

    Arguments:
        func: a field ``f(t, y)`` / ``f(t, y, context)``, a ``torchode.ODETerm``, or a
            ``torchode.AutoDiffAdjoint`` solver whose step method holds the term. A solver
            brings its own step method, controller and ``max_steps``.
        encoder: ``x -> context`` (``phi``); ``None`` passes ``x`` through. The state must
            be ``(B, F)``, as torchode integrates it.
        readout: ``psi``; ``None`` is the identity.
        state_shape: ``(F,)``; when given, ``eta(0)`` is zeros of it (needs a conditioned
            field), otherwise ``eta(0) = encoder(x)``.
        method: a registered torchode step method (``"dopri5"``, ``"tsit5"``, ``"heun"``) or
            ``"euler"``; default ``"dopri5"``. Only without a solver.
        atol, rtol: tolerances of torchode's ``IntegralController`` (default 1e-6, 1e-3, as
            in torchode's README). Only without a solver.
        step_size: fixed steps of this size (``FixedStepController``) instead of adaptive
            ones; with a solver, required exactly when its controller is a ``FixedStepController``.
        max_steps: steps one solve may take when the solver is built here.
        t_end: inference horizon (1 in the paper).
    """

    field_name = "the torchode vector field"

    def __init__(
        self,
        func: Any,
        *,
        encoder: Optional[Callable[[Tensor], Tensor]] = None,
        readout: Optional[Callable[[Tensor], Tensor]] = None,
        state_shape: Optional[Sequence[int]] = None,
        method: Optional[str] = None,
        atol: Optional[float] = None,
        rtol: Optional[float] = None,
        step_size: Optional[float] = None,
        max_steps: int = DEFAULT_MAX_STEPS,
        t_end: float = 1.0,
    ) -> None:
        if isinstance(func, to.AutoDiffAdjoint):
            given = [name for name, value in (("method", method), ("atol", atol), ("rtol", rtol)) if value is not None]
            if given:
                raise ValueError(f"{given} belong to the torchode solver passed as func; set them there")
            term = getattr(func.step_method, "term", None)
            if not isinstance(term, to.ODETerm):
                raise TypeError(
                    "the torchode solver's step method has no ODETerm (build it as e.g. "
                    f"to.Dopri5(term=term)), got {type(term).__name__}"
                )
            fixed = isinstance(func.step_size_controller, to.FixedStepController)
            if fixed and step_size is None:
                raise ValueError("step_size is required for a solver with a FixedStepController (torchode's dt0)")
            if not fixed and step_size is not None:
                raise ValueError("step_size is only for a solver with a FixedStepController")
            solver = func
        else:
            if isinstance(func, to.ODETerm):
                term = func
            elif callable(func):
                term = to.ODETerm(func, with_args=_takes_context(func))
            else:
                raise TypeError(
                    "func must be a torchode AutoDiffAdjoint, an ODETerm or a callable f(t, y) / f(t, y, context), "
                    f"got {type(func).__name__}"
                )
            name = check_choice("method", method if method is not None else "dopri5", tuple(_step_methods()))
            step = _step_methods()[name](term=term)
            if step_size is not None:
                if atol is not None or rtol is not None:
                    raise ValueError("atol/rtol have no effect with a fixed step_size; pass one or the other")
                controller: nn.Module = to.FixedStepController()
            else:
                controller = to.IntegralController(
                    atol=check_positive("atol", atol if atol is not None else 1e-6),
                    rtol=check_positive("rtol", rtol if rtol is not None else 1e-3),
                    term=term,
                )
            solver = to.AutoDiffAdjoint(step, controller, max_steps=check_positive_int("max_steps", max_steps))
        super().__init__(t_end=t_end, conditioned_on_input=bool(term.with_args))
        self.solver = solver
        self.term = term
        self.step_size = check_positive("step_size", step_size) if step_size is not None else None
        if state_shape is not None:
            shape = check_shape_sequence("state_shape", state_shape)
            if not self.conditioned_on_input:
                raise ValueError(
                    "state_shape (zero initial state) needs a conditioned field f(t, y, context) (an ODETerm with "
                    "with_args=True): with f(t, y) and eta(0) = 0 every example would follow the same trajectory"
                )
            if len(shape) != 1:
                raise ValueError(f"state_shape must be (features,): torchode integrates (B, F) states, got {shape}")
            self.state_shape: Optional[tuple[int, ...]] = shape
        else:
            self.state_shape = None
        for arg, layer in (("encoder", encoder), ("readout", readout)):
            if layer is not None and not callable(layer):
                raise TypeError(f"{arg} must be a callable (e.g. an nn.Module) or None, got {type(layer).__name__}")
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.readout_module = readout if readout is not None else nn.Identity()

    @property
    def fixed_steps(self) -> Optional[int]:
        """``ceil(t_end / step_size)`` for fixed steps; ``None`` for adaptive step control."""
        if self.step_size is None:
            return None
        return max(1, math.ceil(self.t_end / self.step_size - 1e-9))

    @property
    def initial_state_trainable(self) -> bool:
        """``eta(0)`` is zeros of ``state_shape``, or ``encoder(x)``: trainable with the encoder."""
        if self.state_shape is not None:
            return False
        return isinstance(self.encoder, nn.Module) and any(p.requires_grad for p in self.encoder.parameters())

    def _encode(self, x: Tensor) -> tuple[Optional[Tensor], Tensor]:
        h = self.encoder(x)
        if self.state_shape is not None:
            eta0 = torch.zeros((x.shape[0], *self.state_shape), dtype=h.dtype, device=h.device)
        else:
            eta0 = h
        if isinstance(eta0, Tensor) and eta0.ndim != 2:
            raise ValueError(
                f"torchode integrates states of shape (batch, features); eta(0) has shape {tuple(eta0.shape)} "
                "(flatten it in the encoder, e.g. nn.Flatten())"
            )
        return (h if self.conditioned_on_input else None), eta0

    def _field(self, eta: Tensor, context: Optional[Tensor], t: Tensor) -> Tensor:
        # torchode hands the field one time per example already: no grouping by time needed.
        if self.conditioned_on_input:
            if not isinstance(context, Tensor):
                raise ValueError(f"context must be a tensor with one row per state ({eta.shape[0]}), got {context!r}")
            return self.term.f(t, eta, context)
        return self.term.f(t, eta)

    def _solve(self, context: Optional[Tensor], eta0: Tensor, ts: Tensor) -> Solution:
        """torchode's solve from ``eta0`` at ``ts``, with its per-example statistics."""
        batch = eta0.shape[0]
        t_eval = ts.to(device=eta0.device, dtype=eta0.dtype).expand(batch, -1)
        problem = to.InitialValueProblem(y0=eta0, t_eval=t_eval)
        dt0 = (
            None
            if self.step_size is None
            else torch.full((batch,), self.step_size, dtype=eta0.dtype, device=eta0.device)
        )
        # A scripted solver has its term fixed inside; an eager one is handed the term explicitly.
        term = None if isinstance(self.solver, torch.jit.ScriptModule) else self.term
        sol = self.solver.solve(problem, term, dt0=dt0, args=context if self.conditioned_on_input else None)
        status = sol.status.reshape(-1)
        if bool((status != 0).any()):
            codes = sorted({int(c) for c in status.tolist() if c != 0})
            names = [to.Status(c).name for c in codes]
            failed = int((status != 0).sum())
            raise SolverError(
                f"torchode could not solve {failed} of {batch} examples (status {names}): "
                "the field diverges or is too stiff, or max_steps is too small"
            )
        nfe_per_example = sol.stats.get("n_f_evals")
        steps = sol.stats.get("n_steps")
        nfe = int(nfe_per_example.max()) if isinstance(nfe_per_example, Tensor) and nfe_per_example.numel() else 0
        return Solution(
            states=sol.ys.transpose(0, 1),
            ts=ts,
            nfe=nfe,
            nfe_per_example=nfe_per_example,
            steps_per_example=steps,
        )
