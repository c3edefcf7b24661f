"""The model protocol (paper Eq. 1-3) and a plain-PyTorch container implementing it.

::

    eta(0)   = phi(x)            input layer   (default: zeros, as in the paper)
    d eta/dt = f(eta, x, t)      dynamics      (x-conditioned: "data-controlled")
    y_hat(t) = psi(eta(t))       readout

Everything in the core talks to a model through :class:`LyapunovModel`, so any Neural
ODE can be trained without the core knowing which library built it. The adapters in
``lyapunov_plugin.adapters`` present torchdyn and torchdiffeq models this way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Optional, Protocol, cast, overload, runtime_checkable

import torch
from torch import Tensor, nn

from ._typing import Context, Output, Solver, State, Times, Trajectory
from ._validation import check_positive, check_tensor, check_time_grid
from .adapter import (
    NeuralODEAdapter,
    Solution,
    check_initial_state,
    check_model,
    check_shape_sequence,
    check_velocity,
    expand_to_batch,
    probe_output,
    readout_at,
)
from .solvers import FixedStepSolver

__all__ = [
    "LyapunovModel",
    "ODEModel",
    "integrate",
    "solve",
    "solve_with_slopes",
    "horizon",
    "check_velocity",
    "check_model",
    "probe_output",
    "check_initial_state",
    "readout_at",
    "is_lyapunov_model",
    "Solution",
    "expand_to_batch",
]


@runtime_checkable
class LyapunovModel(Protocol):
    """What the losses, samplers and trainer need from a Neural ODE.

    Required members:

    - ``encode(x) -> (context, eta0)``: run the input layer once per example. ``context``
      is what the dynamics are conditioned on (``None`` if nothing), ``eta0 = eta(0)``.
    - ``vector_field(eta, context, t) -> d eta/dt``: ``f`` of Eq. (2), callable on any
      states (sampled ones, not only trajectory states); ``t`` has shape ``(B,)``.
    - ``readout(eta) -> y_hat``: ``psi`` of Eq. (3).
    - ``trajectory(x, ts) -> (T, B, *S)``: integrate with the model's own solver.

    Optional attributes read when present:

    - ``conditioned_on_input`` (bool, default ``True``): whether ``f`` sees ``x``.
      When it does not, one state would have to flow to different labels for different
      examples, so region sampling is ill-posed and the trainer defaults to
      trajectory-based training.
    - ``fixed_steps`` (int or ``None``): how many steps the model's own solver takes over
      ``[0, t_end]`` when it is a fixed-step scheme (``None``: adaptive or unknown). A model
      whose inference takes fewer steps than the default path-integral rollout is trained
      on its own grid (:func:`~lyapunov_plugin.default_objective`).
    - ``solution(x, ts) -> Solution``: the trajectory together with solver statistics
      (the number of vector-field evaluations), returned rather than stored on the model, as
      torchode and diffrax return ``stats`` with the solution.
    - ``readout_module`` (``nn.Module``): the readout as a module, with
      ``readout(eta) == readout_module(eta)``. It lets the default recipe see whether the
      readout has trainable parameters without running the model, and identity or linear
      readouts get closed-form derivatives.
    - ``initial_state_trainable`` (bool): whether ``eta(0)`` depends on trainable
      parameters (the default recipe samples states only for models where it does not).
    - ``t_end`` (float, default 1): the inference horizon.
    """

    def encode(self, x: Tensor) -> tuple[Context, State]: ...

    def vector_field(self, eta: State, context: Context, t: Times) -> State: ...

    def readout(self, eta: State) -> Output: ...

    def trajectory(self, x: Tensor, ts: Tensor) -> Trajectory: ...


if TYPE_CHECKING:

    class TrainableModel(nn.Module, LyapunovModel):
        """Static type only: a :class:`LyapunovModel` that is also an ``nn.Module``.

        Python has no intersection types; code that checks ``isinstance(model, nn.Module)``
        at run time on a :class:`LyapunovModel` (the trainer, which optimises its
        parameters) casts it to this type afterwards.
        """


_PROTOCOL_MEMBERS = ("encode", "vector_field", "readout", "trajectory")


def is_lyapunov_model(obj: Any) -> bool:
    """True if ``obj`` has callable ``encode``, ``vector_field``, ``readout``, ``trajectory``."""
    return all(callable(getattr(obj, name, None)) for name in _PROTOCOL_MEMBERS)


class _CountingField:
    """``func(t, y)`` for a solver, closing over the context; counts evaluations."""

    def __init__(self, model: LyapunovModel, context: Context) -> None:
        self.model, self.context, self.nfe = model, context, 0

    def __call__(self, t: Tensor, eta: Tensor) -> Tensor:
        self.nfe += 1
        return self.model.vector_field(eta, self.context, expand_to_batch(t, eta.shape[0], eta))


@overload
def integrate(
    model: LyapunovModel, x: Tensor, ts: Tensor, *, solver: Solver, return_nfe: Literal[False] = ...
) -> Trajectory: ...


@overload
def integrate(
    model: LyapunovModel, x: Tensor, ts: Tensor, *, solver: Solver, return_nfe: Literal[True]
) -> tuple[Trajectory, int]: ...


@overload
def integrate(
    model: LyapunovModel, x: Tensor, ts: Tensor, *, solver: Solver, return_nfe: bool = ...
) -> Trajectory | tuple[Trajectory, int]: ...


def integrate(
    model: LyapunovModel,
    x: Tensor,
    ts: Tensor,
    *,
    solver: Solver,
    return_nfe: bool = False,
) -> Trajectory | tuple[Trajectory, int]:
    """Solve Eq. (1)-(2) with any solver through the protocol (not the model's own solver).

    Used for cheap rollouts during training, for fixed-step attacks (the robustness
    protocol) and for comparing solvers on the same model.

    Arguments:
        model: a :class:`LyapunovModel`.
        x: inputs ``(B, ...)``.
        ts: increasing times ``(T,)``.
        solver: ``solver(func, y0, ts)``, e.g. :class:`FixedStepSolver` or
            ``functools.partial(torchdiffeq.odeint, method="dopri5")``.
        return_nfe: also return the number of vector-field evaluations.

    Returns:
        States ``(T, B, *S)`` (and the NFE if asked).
    """
    check_time_grid("ts", ts)
    context, eta0 = model.encode(x)
    return solve(model, context, eta0, ts, solver=solver, return_nfe=return_nfe)


@overload
def solve(
    model: LyapunovModel,
    context: Context,
    eta0: State,
    ts: Tensor,
    *,
    solver: Solver,
    return_nfe: Literal[False] = ...,
) -> Trajectory: ...


@overload
def solve(
    model: LyapunovModel,
    context: Context,
    eta0: State,
    ts: Tensor,
    *,
    solver: Solver,
    return_nfe: Literal[True],
) -> tuple[Trajectory, int]: ...


@overload
def solve(
    model: LyapunovModel,
    context: Context,
    eta0: State,
    ts: Tensor,
    *,
    solver: Solver,
    return_nfe: bool = ...,
) -> Trajectory | tuple[Trajectory, int]: ...


def solve(
    model: LyapunovModel,
    context: Context,
    eta0: State,
    ts: Tensor,
    *,
    solver: Solver,
    return_nfe: bool = False,
) -> Trajectory | tuple[Trajectory, int]:
    """:func:`integrate` from an encoded input ``(context, eta0) = model.encode(x)``, so a
    caller that already ran the input layer does not run it twice.

    Returns:
        States ``(T, B, *S)`` at ``ts`` (and the NFE if asked).
    """
    check_tensor("ts", ts, min_ndim=1, floating=True)
    field = _CountingField(model, context)
    states = solver(field, eta0, ts.to(dtype=eta0.dtype, device=eta0.device))
    return (states, field.nfe) if return_nfe else states


def solve_with_slopes(
    model: LyapunovModel,
    context: Context,
    eta0: State,
    ts: Tensor,
    *,
    solver: FixedStepSolver,
) -> tuple[Trajectory, Tensor]:
    """:func:`solve` with a :class:`~lyapunov_plugin.FixedStepSolver`, also returning
    ``f(eta(ts[i]), x, ts[i])`` for ``i < len(ts) - 1`` (the first stage of each step), see
    :meth:`FixedStepSolver.solve_with_slopes`."""
    check_tensor("ts", ts, min_ndim=1, floating=True)
    field = _CountingField(model, context)
    return solver.solve_with_slopes(field, eta0, ts.to(dtype=eta0.dtype, device=eta0.device))


def horizon(model: Any) -> float:
    """The model's inference horizon ``t_end`` (its ``t_end`` attribute; 1, the paper's, if
    it has none). Objectives and the trainer read it here, so it has one owner: the model."""
    t_end = getattr(model, "t_end", None)
    return 1.0 if t_end is None else check_positive("the model's t_end", t_end)


class ODEModel(NeuralODEAdapter):
    """A Neural ODE from plain PyTorch modules, implementing :class:`LyapunovModel`.

    ``eta(0) = initial_state(context)`` (zeros by default, as in Section 4 "Restriction on
    Initial State"), ``d eta/dt = dynamics(eta, context, t)`` with
    ``context = encoder(x)``, ``y_hat = readout(eta(t_end))``.

    Arguments:
        dynamics: ``f``, called as ``dynamics(eta, context, t)`` with ``t`` of shape ``(B,)``.
        state_shape: shape of one state ``S``; required with the zero initial state.
        encoder: ``x -> context``; ``None`` passes ``x`` through.
        initial_state: ``context -> eta(0)``; ``None`` means zeros of ``state_shape``.
        readout: ``psi``; ``None`` is the identity (hidden dimension = number of classes).
        solver: the model's own solver, ``solver(func, y0, ts)``; default RK4 with 20 steps.
        t_end: the inference horizon (1 in the paper).
        conditioned_on_input: whether ``dynamics`` use the context (data-controlled
            dynamics); ``False`` when the input reaches the dynamics only through ``eta(0)``,
            which makes the trainer default to trajectory-based training.
    """

    field_name = "dynamics"

    def __init__(
        self,
        dynamics: Callable[[State, Context, Times], State],
        *,
        state_shape: Optional[Sequence[int]] = None,
        encoder: Optional[Callable[[Tensor], Tensor]] = None,
        initial_state: Optional[Callable[[Context], State]] = None,
        readout: Optional[Callable[[State], Output]] = None,
        solver: Optional[Solver] = None,
        t_end: float = 1.0,
        conditioned_on_input: bool = True,
    ) -> None:
        super().__init__(t_end=t_end, conditioned_on_input=conditioned_on_input)
        if not callable(dynamics):
            raise TypeError(f"dynamics must be callable as dynamics(eta, context, t), got {type(dynamics).__name__}")
        optional = {"encoder": encoder, "initial_state": initial_state, "readout": readout, "solver": solver}
        for name, value in optional.items():
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
        if initial_state is None and state_shape is None:
            raise ValueError("state_shape is required when initial_state is None (eta(0) = zeros of state_shape)")
        self.state_shape: Optional[tuple[int, ...]] = (
            check_shape_sequence("state_shape", state_shape) if state_shape is not None else None
        )
        self.dynamics = dynamics
        self.encoder = encoder if encoder is not None else nn.Identity()
        self.initial_state = initial_state
        self.readout_module = readout if readout is not None else nn.Identity()
        self.solver = solver if solver is not None else FixedStepSolver(method="rk4", steps=20)

    @property
    def fixed_steps(self) -> Optional[int]:
        """Steps of the model's own solver over ``[0, t_end]`` (``None`` unless it is a
        :class:`~lyapunov_plugin.FixedStepSolver`)."""
        return self.solver.steps if isinstance(self.solver, FixedStepSolver) else None

    @property
    def initial_state_trainable(self) -> bool:
        """Whether ``eta(0)`` depends on trainable parameters: never for the zero initial
        state; otherwise conservatively whenever the encoder or ``initial_state`` has any."""
        if self.initial_state is None:
            return False
        modules = [m for m in (self.encoder, self.initial_state) if isinstance(m, nn.Module)]
        return any(p.requires_grad for m in modules for p in m.parameters()) or not isinstance(
            self.initial_state, nn.Module
        )

    def _encode(self, x: Tensor) -> tuple[Context, State]:
        context = self.encoder(x)
        if self.initial_state is None:
            ref = context if isinstance(context, Tensor) and context.is_floating_point() else x
            # __init__ requires state_shape whenever initial_state is None.
            state_shape = cast(tuple[int, ...], self.state_shape)
            eta0 = torch.zeros((x.shape[0], *state_shape), dtype=ref.dtype, device=ref.device)
        else:
            eta0 = self.initial_state(context)
        return context, eta0

    def _field(self, eta: State, context: Context, t: Times) -> State:
        return self.dynamics(eta, context, t)

    def _solve(self, context: Context, eta0: State, ts: Tensor) -> Solution:
        """The trajectory at ``ts`` with this model's solver, and its evaluation count."""
        states, nfe = solve(self, context, eta0, ts, solver=self.solver, return_nfe=True)
        return Solution(states=states, ts=ts, nfe=nfe)
