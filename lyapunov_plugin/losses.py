"""Lyapunov losses: point-wise (Eq. 12), Monte Carlo (Algorithm 1 / Eq. 45) and path
integral (Algorithm 2, discrete-time Eq. 16-17, and Eq. 12 along trajectory states).

All of them are pure functions of tensors and a model: they mutate nothing, hold no
schedule and can be called from any training loop (plain PyTorch, Lightning, DDP).

``detach_v``: in ``max(0, dV/deta . f + kappa V)`` the ``kappa V`` term may or may not
carry gradient. Left attached (the default, Eq. 12 as written) the loss also pushes
``V`` itself down at the sampled states, a supervised signal on the readout; detached
(as the reference implementation does) only the flow ``f`` and the slope of ``V`` are
shaped, and ``kappa V`` is a fixed per-state target for the decrease rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
from torch import Tensor

from ._typing import PerSample, Solver, State, Trajectory
from ._validation import (
    as_labels,
    as_model_dtype,
    check_batch,
    check_bool,
    check_finite,
    check_generator,
    check_like,
    check_non_negative,
    check_open_unit,
    check_positive,
    check_positive_int,
    check_readout,
    check_shape,
    check_tensor,
    floating_dtype_of,
)
from .dispatch import as_lyapunov_model
from .model import LyapunovModel, expand_to_batch, solve, solve_with_slopes
from .potentials import Potential, Readout, _readout_jvp
from .samplers import SamplingContext, StateSampler, TimeSampler
from .solvers import FixedStepSolver

__all__ = [
    "CounterexampleSearch",
    "LyapunovLossOutput",
    "lyapunov_loss",
    "monte_carlo_lyapunov_loss",
    "discrete_path_lyapunov_loss",
    "path_lyapunov_loss",
]


@dataclass(frozen=True)
class LyapunovLossOutput:
    """An objective (Eq. 13, 17 or 45) and the diagnostics a training loop logs.

    Attributes:
        loss: the scalar objective (carries gradient).
        pointwise: the point-wise losses it averages (carry gradient).
        v: ``V_y`` at the evaluated states (detached).
        v_dot: ``dV_y/dt`` there (detached; for the discrete loss, ``V_j - V_{j-1}``).
    """

    loss: Tensor
    pointwise: Tensor
    v: Tensor
    v_dot: Tensor

    @property
    def violation_fraction(self) -> Tensor:
        """Fraction of evaluated points where the Lyapunov condition fails (loss > 0)."""
        return (self.pointwise.detach() > 0).to(self.v.dtype).mean()

    @property
    def mean_v(self) -> Tensor:
        return self.v.mean()

    @property
    def mean_v_dot(self) -> Tensor:
        return self.v_dot.mean()

    def metrics(self) -> dict[str, float]:
        """Plain floats for logging: loss, violation fraction, mean V, mean dV/dt."""
        return {
            "loss": float(self.loss.detach()),
            "violation": float(self.violation_fraction),
            "mean_v": float(self.mean_v),
            "mean_v_dot": float(self.mean_v_dot),
        }


def _check_potential(potential: object) -> Potential:
    if not isinstance(potential, Potential):
        raise TypeError(f"potential must be a lyapunov_plugin.Potential, got {type(potential).__name__}")
    return potential


def _pointwise(
    eta: State,
    velocity: State,
    target: Tensor,
    potential: Potential,
    readout: Readout,
    kappa: float,
    detach_v: bool,
    check_targets: bool,
) -> tuple[PerSample, PerSample, PerSample]:
    """Eq. (12) at each state, with ``V`` and ``dV/dt``: :meth:`Potential.evaluate` without its
    tensor checks (the callers produced ``eta`` and ``velocity`` themselves); the targets are
    checked against the readout output only when ``check_targets``."""
    output, output_velocity = _readout_jvp(readout, eta, velocity)
    if check_targets:
        potential.validate(output, target)
    v, v_dot = potential.value_and_derivative(output, as_labels(target), output_velocity)
    decay_target = v.detach() if detach_v else v
    # one fused op for v_dot + kappa V (the Monte Carlo loss's inner loop); a tensor kappa
    # (a caller of Objective.compute past the public checks) keeps the plain form
    hinge = (
        torch.add(v_dot, decay_target, alpha=kappa) if isinstance(kappa, (int, float)) else v_dot + kappa * decay_target
    )
    return torch.relu(hinge), v, v_dot


def _lyapunov_loss_unchecked(
    eta: State,
    velocity: State,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    readout: Readout = None,
    detach_v: bool = False,
    check_targets: bool = False,
) -> PerSample:
    """:func:`lyapunov_loss` (Eq. 12) without input checks: for callers that validated their
    arguments once. ``check_targets`` still checks ``target`` against the potential (class
    labels in range, shapes) where the readout output is first known."""
    loss, _, _ = _pointwise(eta, velocity, target, potential, readout, kappa, detach_v, check_targets)
    return loss


def lyapunov_loss(
    eta: State,
    velocity: State,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    readout: Readout = None,
    detach_v: bool = False,
) -> PerSample:
    """Point-wise Lyapunov loss, Eq. (12): ``max(0, dV_y/deta . f(eta, x, t) + kappa V_y(eta))``.

    Zero exactly where the exponential-stability condition (Eq. 10) holds at the state.

    Arguments:
        eta: states ``(B, *S)``.
        velocity: ``f(eta, x, t)`` at those states (computed by the caller's dynamics).
        target: supervision per state (class labels ``(B,)`` for classification).
        potential: the :class:`~lyapunov_plugin.Potential` ``V_y``.
        kappa: exponential rate, ``> 0``.
        readout: ``psi`` composed into ``V_y``; ``None`` is the identity.
        detach_v: stop the gradient through ``V`` in the ``kappa V`` term (module docstring).

    Returns:
        ``(B,)`` non-negative losses.
    """
    _check_potential(potential)
    kappa = check_positive("kappa", kappa)
    check_readout("readout", readout)
    check_bool("detach_v", detach_v)
    check_tensor("eta", eta, min_ndim=1, floating=True)
    check_tensor("velocity", velocity, floating=True)
    check_shape("velocity", velocity, eta.shape, "the shape of eta")
    check_like("velocity", velocity, "eta", eta)
    check_finite("eta", eta)
    check_finite("velocity", velocity)
    check_tensor("target", target, min_ndim=1)
    return _lyapunov_loss_unchecked(
        eta, velocity, target, potential=potential, kappa=kappa, readout=readout, detach_v=detach_v, check_targets=True
    )


def _expand(value: Tensor, batch: int, samples: int) -> Tensor:
    """``(B, ...) -> (B * G, ...)`` by broadcasting, not by recomputing ``value``."""
    expanded = value.unsqueeze(1).expand(batch, samples, *value.shape[1:])
    return expanded.reshape(batch * samples, *value.shape[1:])


@dataclass(frozen=True, kw_only=True)
class CounterexampleSearch:
    """Hard-state mining for Algorithm 1, in the manner of Neural Lyapunov Control.

    A ``fraction`` of each example's Monte Carlo states is moved by ``steps`` signed
    gradient-ascent steps of size ``step_size`` on the Lyapunov margin
    ``dV/deta . f + kappa V`` (Eq. 12 before the ``max``) before the loss is taken, so the
    loss sees states where Eq. (10) is closest to failing. The search uses gradients with
    respect to the states only; parameters are not touched.

    Arguments:
        steps: ascent steps, ``>= 1``.
        step_size: step in state units, ``> 0``.
        fraction: share of the samples that is refined, in ``(0, 1]``.
    """

    steps: int = 3
    step_size: float = 0.25
    fraction: float = 0.5

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        check_positive("step_size", self.step_size)
        fraction = check_positive("fraction", self.fraction)
        if fraction > 1:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")

    def refine(
        self,
        model: LyapunovModel,
        eta: State,
        context: Optional[Tensor],
        t: Tensor,
        target: Tensor,
        *,
        potential: Potential,
        kappa: float,
        samples_per_example: int,
    ) -> State:
        """Return ``eta`` (``(B * G, *S)``) with the chosen samples moved uphill."""
        chosen = max(1, round(self.fraction * samples_per_example))
        index = torch.arange(eta.shape[0], device=eta.device) % samples_per_example < chosen
        states = eta[index].detach()
        ctx = context[index].detach() if isinstance(context, Tensor) else context
        times, labels = t[index], target[index]
        for _ in range(self.steps):
            states.requires_grad_(True)
            with torch.enable_grad():
                velocity = model.vector_field(states, ctx, times)
                v, v_dot = potential.evaluate(states, velocity, labels, readout=model.readout, validate=False)
                (grad,) = torch.autograd.grad((v_dot + kappa * v).sum(), states)
            states = (states + self.step_size * grad.sign()).detach()
        refined = eta.detach().clone()
        refined[index] = states
        return refined


def tile_time_major(value: Tensor, times: int) -> Tensor:
    """``(B, ...) -> (times * B, ...)``, time-major: row ``j * B + b`` is example ``b`` (the
    layout of a flattened ``(T, B, ...)`` trajectory; shared by the losses, diagnostics and the
    opt-in objectives)."""
    return value.repeat(times, *([1] * (value.ndim - 1)))


def monte_carlo_lyapunov_loss(
    model: LyapunovModel,
    x: Tensor,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    state_sampler: StateSampler,
    time_sampler: Optional[TimeSampler] = None,
    num_samples: int,
    detach_v: bool = False,
    trajectory: Optional[Trajectory] = None,
    trajectory_times: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    counterexamples: Optional[CounterexampleSearch] = None,
    velocity_penalty: float = 0.0,
) -> LyapunovLossOutput:
    """Monte Carlo Lyapunov objective, Algorithm 1 / Eq. (45): no ODE solve.

    For each example ``(x, y)`` draw ``Gamma = num_samples`` pairs
    ``(eta_j, t_j) ~ mu_H x mu_[0,1]`` and average Eq. (12) over all of them. The input
    layer runs once per example; its output is broadcast to the ``Gamma`` samples, so
    gradients of all samples reach the encoder through one graph node.

    Arguments:
        model: a :class:`~lyapunov_plugin.LyapunovModel`.
        x: inputs ``(B, ...)``.
        target: labels ``(B,)`` (or per-example targets of the potential).
        potential, kappa, detach_v: as in :func:`lyapunov_loss`.
        state_sampler: ``mu_H``.
        time_sampler: ``mu_[0,1]``; required unless ``state_sampler.provides_times`` (a
            sampler of states along rollouts pairs each state with its own time, and
            then a separate time measure does not apply).
        num_samples: ``Gamma``.
        trajectory: rollout states ``(T, B, *S)`` for samplers that need them.
        trajectory_times: the times ``(T,)`` of ``trajectory`` (samplers that provide times).
        generator: optional ``torch.Generator`` for the draws.
        counterexamples: optionally move part of the samples towards violations first
            (:class:`CounterexampleSearch`).
        velocity_penalty: weight ``lambda >= 0`` of ``lambda * mean |f|^2 / k`` added to the
            objective: among dynamics that satisfy Eq. (10), prefer slow ones (the
            min-norm control Lyapunov controller of control theory), which settle once
            ``V`` is small and are cheaper for adaptive solvers.

    Returns:
        :class:`LyapunovLossOutput` over the ``B * Gamma`` points.
    """
    _check_potential(potential)
    model = as_lyapunov_model(model)  # TypeError listing what is supported otherwise
    kappa = check_positive("kappa", kappa)
    num_samples = check_positive_int("num_samples", num_samples)
    velocity_penalty = check_non_negative("velocity_penalty", velocity_penalty)
    check_bool("detach_v", detach_v)
    check_generator("generator", generator)
    if not isinstance(state_sampler, StateSampler):
        raise TypeError(f"state_sampler must be a StateSampler, got {type(state_sampler).__name__}")
    if state_sampler.provides_times:
        if time_sampler is not None:
            raise ValueError(
                f"time_sampler does not apply: {type(state_sampler).__name__} pairs each state with its own "
                f"time; got time_sampler={time_sampler!r} (pass None)"
            )
    elif not isinstance(time_sampler, TimeSampler):
        raise TypeError(f"time_sampler must be a TimeSampler, got {type(time_sampler).__name__}")
    if counterexamples is not None and not isinstance(counterexamples, CounterexampleSearch):
        raise TypeError(f"counterexamples must be a CounterexampleSearch or None, got {type(counterexamples).__name__}")
    check_tensor("x", x, min_ndim=1)
    check_finite("x", x)
    check_tensor("target", target, min_ndim=1)
    check_batch("target", target, "x", x.shape[0])
    for name, value in (("trajectory", trajectory), ("trajectory_times", trajectory_times)):
        if value is not None:
            # Not checked for NaN/Inf: a rollout of diverging dynamics gives a non-finite loss,
            # which training loops handle by their non-finite policy.
            check_tensor(name, value, min_ndim=1, floating=True)
    # Numpy-style float64 features (and regression targets, rollouts) for a float32 model
    # are cast at this boundary, as the trainer does: nn.Linear refuses mixed dtypes.
    dtype = floating_dtype_of(model)
    x, target = as_model_dtype(x, dtype), as_model_dtype(target, dtype)
    if trajectory is not None:
        trajectory = as_model_dtype(trajectory, dtype)
    return _monte_carlo(
        model,
        x,
        target,
        potential=potential,
        kappa=kappa,
        state_sampler=state_sampler,
        time_sampler=time_sampler,
        num_samples=num_samples,
        detach_v=detach_v,
        trajectory=trajectory,
        trajectory_times=trajectory_times,
        generator=generator,
        counterexamples=counterexamples,
        velocity_penalty=velocity_penalty,
        checked=False,
    )


def _monte_carlo_lyapunov_loss_unchecked(
    model: LyapunovModel,
    x: Tensor,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    state_sampler: StateSampler,
    time_sampler: Optional[TimeSampler] = None,
    num_samples: int,
    detach_v: bool = False,
    trajectory: Optional[Trajectory] = None,
    trajectory_times: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    counterexamples: Optional[CounterexampleSearch] = None,
    velocity_penalty: float = 0.0,
    check_targets: bool = False,
    encoded: Optional[tuple[Any, Tensor]] = None,
) -> LyapunovLossOutput:
    """:func:`monte_carlo_lyapunov_loss` (Algorithm 1 / Eq. 45) without input checks, for a
    caller that validated its arguments once (an objective called every training step).
    ``encoded``: ``model.encode(x)`` computed by the caller this step (with gradient), used
    instead of encoding ``x`` again.

    Assumes what the public function checks: ``model`` is a ``LyapunovModel`` (already
    through ``as_lyapunov_model``), ``kappa > 0``, ``num_samples >= 1``, the samplers are of
    the right kinds (a ``TimeSampler`` unless ``state_sampler.provides_times``), ``x`` is a
    finite tensor in the model's dtype and ``target`` has ``x``'s batch size, and
    ``trajectory``/``trajectory_times`` fit the encoded states. ``check_targets=True`` still
    checks ``target`` against the potential (labels in range, shapes) where the readout
    output is first known; with the default the caller has done that too.
    """
    return _monte_carlo(
        model,
        x,
        target,
        potential=potential,
        kappa=kappa,
        state_sampler=state_sampler,
        time_sampler=time_sampler,
        num_samples=num_samples,
        detach_v=detach_v,
        trajectory=trajectory,
        trajectory_times=trajectory_times,
        generator=generator,
        counterexamples=counterexamples,
        velocity_penalty=velocity_penalty,
        checked=not check_targets,
        encoded=encoded,
    )


def _monte_carlo(
    model: LyapunovModel,
    x: Tensor,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    state_sampler: StateSampler,
    time_sampler: Optional[TimeSampler] = None,
    num_samples: int,
    detach_v: bool = False,
    trajectory: Optional[Trajectory] = None,
    trajectory_times: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    counterexamples: Optional[CounterexampleSearch] = None,
    velocity_penalty: float = 0.0,
    checked: bool,
    encoded: Optional[tuple[Any, Tensor]] = None,
) -> LyapunovLossOutput:
    """Algorithm 1 on checked arguments. ``checked=False`` (the public path) validates what
    only exists after encoding: the sampling context and the targets against the potential."""
    context, eta0 = model.encode(x) if encoded is None else encoded
    batch = eta0.shape[0]
    make_context = SamplingContext._trusted if checked else SamplingContext
    sampling = make_context(eta0=eta0.detach(), target=target, trajectory=trajectory, trajectory_times=trajectory_times)
    if state_sampler.provides_times:
        states, times = state_sampler.sample_with_times(sampling, num_samples, generator=generator)
    else:
        states = state_sampler.sample(sampling, num_samples, generator=generator)
        # Checked by the caller: a TimeSampler whenever the state sampler does not provide times.
        times = cast(TimeSampler, time_sampler).sample((batch, num_samples), like=eta0, generator=generator)

    eta = states.reshape(batch * num_samples, *eta0.shape[1:])
    t = times.reshape(batch * num_samples)
    flat_context = _expand(context, batch, num_samples) if isinstance(context, Tensor) else context
    flat_target = _expand(target, batch, num_samples)
    if counterexamples is not None:
        eta = counterexamples.refine(
            model, eta, flat_context, t, flat_target, potential=potential, kappa=kappa, samples_per_example=num_samples
        )
    velocity = model.vector_field(eta, flat_context, t)
    pointwise, v, v_dot = _pointwise(
        eta, velocity, flat_target, potential, model.readout, kappa, detach_v, check_targets=not checked
    )
    loss = pointwise.mean()
    if velocity_penalty > 0:
        loss = loss + velocity_penalty * velocity.pow(2).flatten(1).mean()
    return LyapunovLossOutput(loss, pointwise, v.detach(), v_dot.detach())


def discrete_path_lyapunov_loss(
    trajectory: Trajectory,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    readout: Readout = None,
    detach_v: bool = False,
) -> LyapunovLossOutput:
    """Discrete-time Lyapunov loss along a trajectory, Eq. (16)-(17).

    ``sum_{j=1}^{Gamma} max(0, V_y(eta(t_j)) + (kappa - 1) V_y(eta(t_{j-1})))``, averaged
    over examples: each step must shrink ``V`` by the factor ``1 - kappa``, so here
    ``0 < kappa < 1`` (Section 5.6); ``kappa`` close to 1 asks for fast decay.

    Arguments:
        trajectory: states ``(Gamma + 1, B, *S)`` at ``t_0 < ... < t_Gamma`` (with or
            without gradient, as produced by the caller's rollout).
        target: supervision per example.
        potential, readout: ``V_y``.
        kappa: discrete rate in ``(0, 1)``.
        detach_v: stop the gradient through ``V(eta(t_{j-1}))``.

    Returns:
        :class:`LyapunovLossOutput`; ``pointwise`` is ``(Gamma, B)``, ``v`` is
        ``(Gamma + 1, B)`` and ``v_dot`` holds the differences ``V_j - V_{j-1}``.
    """
    _check_potential(potential)
    kappa = check_open_unit("kappa", kappa)
    check_readout("readout", readout)
    check_bool("detach_v", detach_v)
    check_tensor("trajectory", trajectory, min_ndim=3, floating=True)
    if trajectory.shape[0] < 2:
        raise ValueError(f"trajectory needs at least 2 time points, got shape {tuple(trajectory.shape)}")
    check_finite("trajectory", trajectory)
    check_tensor("target", target, min_ndim=1)
    check_batch("target", target, "trajectory (its second dimension)", trajectory.shape[1])
    return _discrete_path_lyapunov_loss_unchecked(
        trajectory, target, potential=potential, kappa=kappa, readout=readout, detach_v=detach_v, check_targets=True
    )


def _discrete_path_lyapunov_loss_unchecked(
    trajectory: Trajectory,
    target: Tensor,
    *,
    potential: Potential,
    kappa: float,
    readout: Readout = None,
    detach_v: bool = False,
    check_targets: bool = False,
) -> LyapunovLossOutput:
    """:func:`discrete_path_lyapunov_loss` (Eq. 16-17) without input checks: ``trajectory`` is
    a finite floating tensor ``(Gamma + 1, B, *S)`` with ``Gamma >= 1``, ``target`` has batch
    ``B``, ``0 < kappa < 1``. ``check_targets=True`` still checks ``target`` against the
    potential on the readout output."""
    steps, batch = trajectory.shape[0], trajectory.shape[1]
    flat = trajectory.reshape(steps * batch, *trajectory.shape[2:])
    out = readout(flat) if readout is not None else flat
    flat_target = tile_time_major(target, steps)
    if check_targets:
        potential.validate(out, flat_target)
    v = potential._value_unchecked(out, flat_target).reshape(steps, batch)
    previous = v[:-1].detach() if detach_v else v[:-1]
    pointwise = torch.relu(v[1:] + (kappa - 1.0) * previous)
    loss = pointwise.sum(0).mean()
    return LyapunovLossOutput(loss, pointwise, v.detach(), (v[1:] - v[:-1]).detach())


def path_lyapunov_loss(
    model: LyapunovModel,
    x: Tensor,
    target: Tensor,
    ts: Tensor,
    *,
    potential: Potential,
    kappa: float,
    trajectory: Optional[Trajectory] = None,
    solver: Optional[Solver] = None,
    detach_states: bool = False,
    detach_v: bool = False,
) -> LyapunovLossOutput:
    """Continuous Lyapunov loss (Eq. 12) at the states of a trajectory: Eq. (13) with
    ``mu`` the uniform measure on the grid ``ts``.

    The continuous counterpart of :func:`discrete_path_lyapunov_loss`: the condition is
    checked with the true time derivative ``dV/deta . f`` at each visited state, so any
    ``kappa > 0`` is valid.

    Arguments:
        model: a :class:`~lyapunov_plugin.LyapunovModel`.
        x, target: a batch.
        ts: times ``(T,)`` of the trajectory.
        potential, kappa, detach_v: as in :func:`lyapunov_loss`.
        trajectory: states ``(T, B, *S)`` at ``ts``; when omitted, integrated from the
            input layer's output with ``solver`` (gradients flow through the solve), or
            with the model's own ``model.trajectory`` if ``solver`` is ``None``.
        solver: ``solver(func, y0, ts)`` for that rollout, e.g. a cheap
            :class:`~lyapunov_plugin.FixedStepSolver`.
        detach_states: treat the visited states as data (no gradient through the rollout).

    Returns:
        :class:`LyapunovLossOutput` over the ``T * B`` points.
    """
    _check_potential(potential)
    model = as_lyapunov_model(model)  # TypeError listing what is supported otherwise
    kappa = check_positive("kappa", kappa)
    check_bool("detach_states", detach_states)
    check_bool("detach_v", detach_v)
    check_tensor("ts", ts, min_ndim=1, floating=True)
    if ts.ndim != 1:
        raise ValueError(f"ts must be a 1-D tensor of times, got shape {tuple(ts.shape)}")
    check_finite("ts", ts)
    check_tensor("x", x, min_ndim=1)
    check_finite("x", x)
    check_tensor("target", target, min_ndim=1)
    check_batch("target", target, "x", x.shape[0])
    if solver is not None and not callable(solver):
        raise TypeError(f"solver must be None or callable as solver(func, y0, ts), got {type(solver).__name__}")
    if trajectory is not None:
        if solver is not None:
            raise ValueError("pass trajectory or solver, not both: solver only computes a missing trajectory")
        check_tensor("trajectory", trajectory, min_ndim=2, floating=True)
    # Numpy-style float64 features (and regression targets) for a float32 model are cast at
    # this boundary, as the trainer does: nn.Linear refuses mixed dtypes.
    dtype = floating_dtype_of(model)
    x, target = as_model_dtype(x, dtype), as_model_dtype(target, dtype)
    if trajectory is not None:
        trajectory = as_model_dtype(trajectory, dtype)
    return _path(
        model,
        x,
        target,
        ts,
        potential=potential,
        kappa=kappa,
        trajectory=trajectory,
        solver=solver,
        detach_states=detach_states,
        detach_v=detach_v,
        checked=False,
    )


def _path_lyapunov_loss_unchecked(
    model: LyapunovModel,
    x: Tensor,
    target: Tensor,
    ts: Tensor,
    *,
    potential: Potential,
    kappa: float,
    trajectory: Optional[Trajectory] = None,
    solver: Optional[Solver] = None,
    detach_states: bool = False,
    detach_v: bool = False,
    check_targets: bool = False,
) -> LyapunovLossOutput:
    """:func:`path_lyapunov_loss` (Eq. 12 along a trajectory, Eq. 13) without input checks.

    Assumes what the public function checks: ``model`` is a ``LyapunovModel``, ``kappa > 0``,
    ``ts`` a finite 1-D floating tensor, ``x`` finite in the model's dtype, ``target`` of
    ``x``'s batch size, at most one of ``trajectory``/``solver``, and a given ``trajectory``
    of shape ``(len(ts), *eta0.shape)``. ``check_targets=True`` still checks ``target``
    against the potential on the readout output.
    """
    return _path(
        model,
        x,
        target,
        ts,
        potential=potential,
        kappa=kappa,
        trajectory=trajectory,
        solver=solver,
        detach_states=detach_states,
        detach_v=detach_v,
        checked=not check_targets,
    )


def _path(
    model: LyapunovModel,
    x: Tensor,
    target: Tensor,
    ts: Tensor,
    *,
    potential: Potential,
    kappa: float,
    trajectory: Optional[Trajectory],
    solver: Optional[Solver],
    detach_states: bool,
    detach_v: bool,
    checked: bool,
) -> LyapunovLossOutput:
    """Eq. (12) along the trajectory on checked arguments. ``checked=False`` (the public path)
    validates what only exists after encoding: the trajectory's shape and the targets."""
    context, eta0 = model.encode(x)
    slopes: Optional[Tensor] = None
    if trajectory is None:
        if isinstance(solver, FixedStepSolver) and not detach_states:
            # The solver's first stages are f at the grid states: reuse them (same values,
            # same graph) and evaluate f only at the final state below.
            trajectory, slopes = solve_with_slopes(model, context, eta0, ts, solver=solver)
        else:
            trajectory = model.trajectory(x, ts) if solver is None else solve(model, context, eta0, ts, solver=solver)
    if not checked:
        check_tensor("trajectory", trajectory, min_ndim=2, floating=True)
        if trajectory.shape[0] != ts.shape[0] or tuple(trajectory.shape[1:]) != tuple(eta0.shape):
            raise ValueError(
                f"trajectory must have shape ({ts.shape[0]}, {', '.join(map(str, eta0.shape))}) "
                f"(len(ts), *eta0.shape), got {tuple(trajectory.shape)}"
            )
    if detach_states:
        trajectory = trajectory.detach()
    steps, batch = trajectory.shape[0], trajectory.shape[1]
    eta = trajectory.reshape(steps * batch, *trajectory.shape[2:])
    t = expand_to_batch(ts.to(eta.dtype).to(eta.device), steps, eta).repeat_interleave(batch)
    flat_context = tile_time_major(context, steps) if isinstance(context, Tensor) else context
    if slopes is not None and slopes.shape[0] == steps - 1:
        last = model.vector_field(trajectory[-1], context, t[-batch:])
        velocity = torch.cat([slopes.reshape((steps - 1) * batch, *trajectory.shape[2:]), last])
    else:
        velocity = model.vector_field(eta, flat_context, t)
    pointwise, v, v_dot = _pointwise(
        eta,
        velocity,
        tile_time_major(target, steps),
        potential,
        model.readout,
        kappa,
        detach_v,
        check_targets=not checked,
    )
    return LyapunovLossOutput(pointwise.mean(), pointwise, v.detach(), v_dot.detach())
