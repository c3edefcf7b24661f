"""Inference and certificate diagnostics (paper Fig. 3, Eq. 10, Theorem 3).

All functions take a :class:`~lyapunov_plugin.LyapunovModel` and data given either as a
pair of tensors ``(x, y)`` or as an iterable of such batches (a ``DataLoader``). They run
without gradient and do not change the model's train/eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
from torch import Tensor, nn

from ._typing import Solver
from ._validation import (
    as_labels,
    as_model_dtype,
    check_batch,
    check_bool,
    check_generator,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
    check_time_grid,
    floating_dtype_of,
    parameter_device,
)
from .dispatch import as_lyapunov_model
from .losses import monte_carlo_lyapunov_loss, tile_time_major
from .model import LyapunovModel, integrate
from .potentials import CrossEntropyPotential, Potential
from .samplers import StateSampler, TimeSampler, UniformTimeSampler

__all__ = [
    "InferenceCurve",
    "DecayStatistics",
    "iter_batches",
    "states_along",
    "loss_error_curve",
    "nfe_to_end",
    "lyapunov_condition_rate",
    "trajectory_violation_rate",
    "decay_statistics",
    "theorem3_radius",
    "spectral_lipschitz_bound",
    "empirical_lipschitz",
    "Theorem3Certificate",
    "theorem3_certificate",
]


def iter_batches(data: Any) -> Iterable[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches from a tensor pair or from an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Tensor) for d in data):
        yield _paired(data[0], data[1])
        return
    if isinstance(data, (Tensor, str, bytes, dict)) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be an (x, y) pair of tensors or an iterable of (x, y) batches (e.g. a DataLoader), "
            f"got {type(data).__name__}"
        )
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"data must yield (x, y) batches, got {type(batch).__name__}")
        for name, value in (("x", batch[0]), ("y", batch[1])):
            if not isinstance(value, Tensor):
                raise TypeError(f"data must yield (x, y) batches of tensors, got {name} of type {type(value).__name__}")
        yield _paired(batch[0], batch[1])


def _paired(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """One target per input, checked here: later the targets are repeated per state, and a
    mismatch would be reported with that expanded batch size."""
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"data must pair each input with its target: x has shape {tuple(x.shape)}, y has shape {tuple(y.shape)}"
        )
    return x, y


def _check_solver(solver: Any) -> Optional[Solver]:
    if solver is not None and not callable(solver):
        raise TypeError(f"solver must be None or callable as solver(func, y0, ts), got {type(solver).__name__}")
    return cast(Optional[Solver], solver)


def _check_potential(potential: Any, *, optional: bool) -> Potential:
    if potential is None and optional:
        return CrossEntropyPotential()
    if not isinstance(potential, Potential):
        expected = "a lyapunov_plugin.Potential or None" if optional else "a lyapunov_plugin.Potential"
        raise TypeError(f"potential must be {expected}, got {type(potential).__name__}")
    return potential


def _is_class_labels(y: Tensor) -> bool:
    """Integer targets ``(B,)`` are class labels; error rates and "correct" only exist for them
    (a regression potential such as MSE takes float targets ``(B, k)``)."""
    return y.ndim == 1 and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool


def states_along(model: LyapunovModel, x: Tensor, ts: Tensor, *, solver: Optional[Solver] = None) -> Tensor:
    """States ``(T, B, *S)`` at ``ts``: the model's own solver, or ``solver`` through the protocol."""
    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=1)
    check_time_grid("ts", ts)
    _check_solver(solver)
    x = as_model_dtype(x, floating_dtype_of(model))
    if solver is None:
        return model.trajectory(x, ts)
    return integrate(model, x, ts, solver=solver)


def _batches_on_model_device(model: Any, data: Any) -> Iterable[tuple[Tensor, Tensor]]:
    """:func:`iter_batches`, each batch moved to the device of the model's parameters, with
    floating-point features and targets in the model's dtype (float64 numpy data for a
    float32 model, as the trainer does)."""
    device = parameter_device(model)
    dtype = floating_dtype_of(model)
    for x, y in iter_batches(data):
        if device is not None:
            x, y = x.to(device), y.to(device)
        yield as_model_dtype(x, dtype), as_model_dtype(y, dtype)


def _end_grid(model: Any, x: Tensor, t_end: float) -> Tensor:
    """``[0, t_end]`` in the model's floating dtype (a float32 grid would round ``t_end`` in a
    float64 model), on ``x``'s device."""
    dtype = floating_dtype_of(model) or (x.dtype if x.is_floating_point() else torch.get_default_dtype())
    return torch.tensor([0.0, t_end], dtype=dtype, device=x.device)


def _outputs_along(
    model: LyapunovModel, data: Any, ts: Tensor, solver: Optional[Solver]
) -> Iterable[tuple[Tensor, Tensor]]:
    """Per batch: readout outputs ``(T, B, m)`` along the trajectories, and the labels."""
    for x, y in _batches_on_model_device(model, data):
        states = states_along(model, x, ts, solver=solver)
        steps, batch = states.shape[0], states.shape[1]
        out = model.readout(states.reshape(steps * batch, *states.shape[2:]))
        yield out.reshape(steps, batch, *out.shape[1:]), y


@dataclass(frozen=True)
class InferenceCurve:
    """Loss and error of ``psi(eta(t))`` over a time grid (paper Fig. 3).

    Attributes:
        ts: the grid.
        loss: mean potential ``V_y(eta(t))`` per grid time.
        error: error rate per grid time (NaN for targets that are not class labels, e.g.
            regression targets of :class:`~lyapunov_plugin.MSEPotential`).
        num_points: examples averaged over.
    """

    ts: list[float]
    loss: list[float]
    error: list[float]
    num_points: int


def loss_error_curve(
    model: LyapunovModel,
    data: Any,
    ts: Tensor,
    *,
    potential: Optional[Potential] = None,
    solver: Optional[Solver] = None,
    only_correct: bool = True,
) -> InferenceCurve:
    """Loss and error of the early-terminated prediction ``psi(eta(t))`` for ``t`` in ``ts``.

    Paper Fig. 3: with ``only_correct`` the average is over examples classified
    correctly at the last grid time, so the curve shows how early inference gets there.

    Arguments:
        model: a :class:`~lyapunov_plugin.LyapunovModel`.
        data: ``(x, y)`` or an iterable of batches.
        ts: increasing grid starting at 0.
        potential: the loss to report (default cross entropy).
        solver: integrate with this solver instead of the model's own.
        only_correct: restrict to examples correct at ``ts[-1]`` (class labels only; with
            regression targets every example counts and the error is NaN).
    """
    model = as_lyapunov_model(model)
    check_time_grid("ts", ts)
    potential = _check_potential(potential, optional=True)
    _check_solver(solver)
    check_bool("only_correct", only_correct)
    loss_sum = torch.zeros(ts.numel(), dtype=torch.float64)
    err_sum = torch.zeros(ts.numel(), dtype=torch.float64)
    count, batches = 0, 0
    classes = True
    steps = ts.numel()
    with torch.no_grad():
        for out, y in _outputs_along(model, data, ts, solver):
            batches += 1
            potential.validate(out[-1], y)  # labels in range: a clear error, not an empty curve
            y = as_labels(y)
            classes = classes and _is_class_labels(y)
            if _is_class_labels(y) and only_correct:
                keep = out[-1].argmax(-1) == y
            else:
                keep = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
            if not bool(keep.any()):
                continue
            out, yk = out[:, keep], y[keep]
            values = potential.value(out.reshape(-1, *out.shape[2:]), tile_time_major(yk, steps)).reshape(steps, -1)
            loss_sum += values.double().sum(1).cpu()
            if _is_class_labels(yk):
                err_sum += (out.argmax(-1) != yk).double().sum(1).cpu()
            count += int(keep.sum())
    if batches == 0:
        raise ValueError("data yielded no batches; loss_error_curve needs at least one (x, y) batch")
    denom = max(count, 1)
    error = (err_sum / denom).tolist() if classes else [math.nan] * steps
    return InferenceCurve(ts=[float(t) for t in ts], loss=(loss_sum / denom).tolist(), error=error, num_points=count)


def nfe_to_end(model: LyapunovModel, x: Tensor, *, t_end: float = 1.0, solver: Optional[Solver] = None) -> int:
    """Vector-field evaluations to integrate a batch from 0 to ``t_end`` (paper Section 5.3).

    With ``solver=None`` the model's own solver is used and the count comes back with its
    :class:`~lyapunov_plugin.model.Solution` (the adapters report torchdyn's counter or count
    torchdiffeq calls); otherwise the
    evaluations of ``solver`` through the protocol are counted, e.g.
    ``functools.partial(torchdiffeq.odeint, method="dopri5", rtol=1e-3, atol=1e-3)``.
    """
    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=1)
    t_end = check_positive("t_end", t_end)
    _check_solver(solver)
    device = parameter_device(model)
    if device is not None:
        x = x.to(device)
    x = as_model_dtype(x, floating_dtype_of(model))
    ts = _end_grid(model, x, t_end)
    with torch.no_grad():
        if solver is None:
            solution = getattr(model, "solution", None)
            if not callable(solution):
                raise TypeError(
                    f"{type(model).__name__} has no solution(x, ts) method reporting its evaluations; pass a "
                    "solver to count evaluations instead"
                )
            return int(solution(x, ts).nfe)
        _, nfe = integrate(model, x, ts, solver=solver, return_nfe=True)
        return int(nfe)


def lyapunov_condition_rate(
    model: LyapunovModel,
    data: Any,
    *,
    potential: Potential,
    kappa: float,
    state_sampler: StateSampler,
    time_sampler: Optional[TimeSampler] = None,
    num_samples: int = 256,
    trajectory_ts: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Fraction of sampled ``(eta, t)`` where the Lyapunov condition Eq. (10) holds.

    An empirical certificate statistic: 1.0 means no sampled state violates
    ``dV/deta . f + kappa V <= 0`` (it is evidence, not a proof, that Eq. (10) holds on
    the sampled region).

    Arguments:
        trajectory_ts: grid for rollouts when ``state_sampler`` needs trajectories.
    """
    model = as_lyapunov_model(model)
    potential = _check_potential(potential, optional=False)
    kappa = check_positive("kappa", kappa)
    if not isinstance(state_sampler, StateSampler):
        raise TypeError(f"state_sampler must be a StateSampler, got {type(state_sampler).__name__}")
    if time_sampler is not None and not isinstance(time_sampler, TimeSampler):
        raise TypeError(f"time_sampler must be a TimeSampler or None, got {type(time_sampler).__name__}")
    num_samples = check_positive_int("num_samples", num_samples)
    if trajectory_ts is not None:
        check_time_grid("trajectory_ts", trajectory_ts)
    check_generator("generator", generator)
    if state_sampler.provides_times:
        time_sampler = None
    elif time_sampler is None:
        time_sampler = UniformTimeSampler()
    holds, total = 0.0, 0
    with torch.no_grad():
        for x, y in _batches_on_model_device(model, data):
            trajectory: Optional[Tensor] = None
            if state_sampler.requires_trajectory:
                if trajectory_ts is None:
                    raise ValueError("trajectory_ts is required for a state sampler that needs trajectories")
                trajectory = model.trajectory(x, trajectory_ts.to(x.device))
            # trajectory is only set when trajectory_ts is given; the second test narrows the type.
            trajectory_times = (
                trajectory_ts.to(x.device) if trajectory is not None and trajectory_ts is not None else None
            )
            out = monte_carlo_lyapunov_loss(
                model,
                x,
                y,
                potential=potential,
                kappa=kappa,
                state_sampler=state_sampler,
                time_sampler=time_sampler,
                num_samples=num_samples,
                trajectory=trajectory,
                trajectory_times=trajectory_times,
                generator=generator,
            )
            bad = int((~torch.isfinite(out.pointwise)).sum())
            if bad:
                raise ValueError(
                    f"the Lyapunov condition (Eq. 10) is NaN/Inf at {bad} of {out.pointwise.numel()} sampled states "
                    "(non-finite vector field or potential); no condition rate can be given"
                )
            holds += float((out.pointwise <= 0).sum())
            total += out.pointwise.numel()
    if total == 0:
        raise ValueError("data yielded no batches; the condition rate needs at least one (x, y) batch")
    return holds / total


def trajectory_violation_rate(
    model: LyapunovModel,
    data: Any,
    *,
    potential: Optional[Potential] = None,
    kappa: float,
    ts: Tensor,
    solver: Optional[Solver] = None,
) -> float:
    """Fraction of states *on inference trajectories* where Eq. (10) fails,
    ``dV/deta . f + kappa V > 0``: the violation rate at test time.

    Unlike :func:`lyapunov_condition_rate` nothing is sampled: the states are those the
    model's own solver (or ``solver``) visits at ``ts``, each checked at its own time.
    """
    model = as_lyapunov_model(model)
    kappa = check_positive("kappa", kappa)
    check_time_grid("ts", ts)
    potential = _check_potential(potential, optional=True)
    _check_solver(solver)
    violated, total, batches = 0.0, 0, 0
    with torch.no_grad():
        for x, y in _batches_on_model_device(model, data):
            batches += 1
            context, _ = model.encode(x)
            grid = ts.to(x.device)
            states = states_along(model, x, grid, solver=solver)
            steps, batch = states.shape[0], states.shape[1]
            eta = states.reshape(steps * batch, *states.shape[2:])
            t = grid.to(eta.dtype).repeat_interleave(batch)
            flat_context = tile_time_major(context, steps) if isinstance(context, Tensor) else context
            v, v_dot = potential.evaluate(
                eta, model.vector_field(eta, flat_context, t), tile_time_major(y, steps), readout=model.readout
            )
            violated += float((v_dot + kappa * v > 0).sum())
            total += int(v.numel())
    if batches == 0:
        raise ValueError("data yielded no batches; the violation rate needs at least one (x, y) batch")
    return violated / max(total, 1)


@dataclass(frozen=True)
class DecayStatistics:
    """How ``V_y`` decays along inference trajectories, against Theorem 2's ``exp(-kappa t)``.

    Attributes:
        monotone_fraction: examples whose ``V`` never increases on the grid (up to a tolerance).
        median_rate: median of ``log(V(t_0) / V(t_end)) / (t_end - t_0)``.
        rate_at_least_kappa: fraction of examples with that rate ``>= kappa``.
        num_points: examples measured.
    """

    monotone_fraction: float
    median_rate: float
    rate_at_least_kappa: float
    num_points: int


def decay_statistics(
    model: LyapunovModel,
    data: Any,
    *,
    potential: Potential,
    kappa: float,
    ts: Tensor,
    solver: Optional[Solver] = None,
    only_correct: bool = True,
    tolerance: float = 1e-6,
) -> DecayStatistics:
    """Empirical decay of ``V`` along trajectories (Theorem 2, Eq. 14).

    ``V`` counts as monotone if ``V(t_j) <= V(t_{j-1}) + tolerance`` at every grid step.
    ``only_correct`` applies to class labels; with regression targets every example counts.
    The rate uses the end points only; ``V`` is floored at 1e-12 so a fully converged
    example has a large finite rate.
    """
    model = as_lyapunov_model(model)
    potential = _check_potential(potential, optional=False)
    kappa = check_positive("kappa", kappa)
    check_time_grid("ts", ts)
    _check_solver(solver)
    check_bool("only_correct", only_correct)
    tolerance = check_non_negative("tolerance", tolerance)
    monotone, rates = [], []
    batches = 0
    with torch.no_grad():
        for out, y in _outputs_along(model, data, ts, solver):
            batches += 1
            steps, batch = out.shape[0], out.shape[1]
            potential.validate(out[-1], y)
            y = as_labels(y)
            flat = out.reshape(steps * batch, *out.shape[2:])
            v = potential.value(flat, tile_time_major(y, steps)).reshape(steps, batch)
            if _is_class_labels(y) and only_correct:
                keep = out[-1].argmax(-1) == y
            else:
                keep = torch.ones(batch, dtype=torch.bool, device=v.device)
            v = v[:, keep].double()
            monotone.append((v[1:] <= v[:-1] + tolerance).all(0).cpu())
            span = float(ts[-1] - ts[0])
            rates.append((torch.log(v[0].clamp_min(1e-12)) - torch.log(v[-1].clamp_min(1e-12))).cpu() / span)
    if batches == 0:
        raise ValueError("data yielded no batches; decay_statistics needs at least one (x, y) batch")
    mono = torch.cat(monotone) if monotone else torch.zeros(0, dtype=torch.bool)
    rate = torch.cat(rates) if rates else torch.zeros(0, dtype=torch.float64)
    n = int(mono.numel())
    if n == 0:
        return DecayStatistics(float("nan"), float("nan"), float("nan"), 0)
    return DecayStatistics(
        monotone_fraction=float(mono.double().mean()),
        median_rate=float(rate.median()),
        rate_at_least_kappa=float((rate >= kappa).double().mean()),
        num_points=n,
    )


def theorem3_radius(delta: Any, lipschitz: float, kappa: float) -> Tensor:
    """Largest input perturbation ``epsilon`` that Theorem 3 (Eq. 15) certifies.

    Eq. (15), ``delta <= log 2 - (L epsilon / kappa)(1 - exp(-kappa))``, solved for
    ``epsilon``: ``kappa (log 2 - delta) / (L (1 - exp(-kappa)))``, and 0 where
    ``delta >= log 2``. Valid under the theorem's assumptions: the Lyapunov condition
    holds at every state (the diagnostics above only sample it), ``delta`` bounds
    ``exp(-kappa) V_y(eta(0))`` and ``V_y(eta(1))``, and ``L = L_V L_f`` bounds the
    Lipschitz constants of ``V_y`` in ``eta`` and of ``f`` in ``x`` in the norm of
    ``epsilon``.

    Arguments:
        delta: the delta-final loss per example (tensor or float).
        lipschitz: ``L``, ``> 0``.
        kappa: ``> 0``.
    """
    lipschitz = check_positive("lipschitz", lipschitz)
    kappa = check_positive("kappa", kappa)
    if isinstance(delta, Tensor):
        if not delta.is_floating_point():
            raise TypeError(f"delta must be a floating-point tensor or a real number, got dtype {delta.dtype}")
        if not bool((delta.isfinite() & (delta >= 0)).all()):
            raise ValueError("delta must hold finite values >= 0 (a loss), got a negative, NaN or infinite entry")
    else:
        check_non_negative("delta", delta)
    delta = torch.as_tensor(delta, dtype=torch.float64)
    radius = kappa * (math.log(2.0) - delta) / (lipschitz * (-math.expm1(-kappa)))
    return radius.clamp_min(0.0)


# Lipschitz constants (l2) of element-wise activations; a module not listed here makes
# spectral_lipschitz_bound refuse rather than guess.
_ACTIVATION_LIPSCHITZ: dict[type, float] = {
    nn.ReLU: 1.0,
    nn.Tanh: 1.0,
    nn.Sigmoid: 0.25,
    nn.Softplus: 1.0,
    nn.ELU: 1.0,
    nn.Identity: 1.0,
    nn.Flatten: 1.0,
    nn.Dropout: 1.0,
    # sup |GELU'(x)| = 1.1289 (at x ~ 0.75).
    nn.GELU: 1.1290,
}


def spectral_lipschitz_bound(module: nn.Module) -> float:
    """An upper bound on the l2 Lipschitz constant of a feed-forward stack (Theorem 3's ``L_f``).

    The product of the spectral norms of the ``nn.Linear`` weights (computed exactly by
    SVD) and of the activations' Lipschitz constants, for an ``nn.Linear``, a listed
    activation, or an ``nn.Sequential`` of them. A module with a ``lipschitz_bound()``
    method (e.g. :class:`~lyapunov_plugin.blocks.LipschitzMLP`,
    :class:`~lyapunov_plugin.blocks.Standardize`) supplies its own. Raises ``TypeError``
    for anything else: residual or convolutional blocks need their own bound.
    """
    own_bound = getattr(module, "lipschitz_bound", None)
    if callable(own_bound):
        return float(own_bound())
    if isinstance(module, nn.Sequential):
        bound = 1.0
        for layer in module:
            bound *= spectral_lipschitz_bound(layer)
        return bound
    if isinstance(module, nn.Linear):
        with torch.no_grad():
            return float(torch.linalg.matrix_norm(module.weight.detach().double(), ord=2))
    if isinstance(module, nn.LeakyReLU):
        return max(1.0, abs(module.negative_slope))
    for kind, constant in _ACTIVATION_LIPSCHITZ.items():
        if type(module) is kind:
            return constant
    supported = ["nn.Sequential", "nn.Linear", "nn.LeakyReLU", *(f"nn.{k.__name__}" for k in _ACTIVATION_LIPSCHITZ)]
    raise TypeError(
        f"module: spectral_lipschitz_bound supports {supported} (or a module with a lipschitz_bound() method), "
        f"got {type(module).__name__}"
    )


def empirical_lipschitz(
    fn: Any,
    x: Tensor,
    *,
    iterations: int = 20,
    generator: Optional[torch.Generator] = None,
) -> float:
    """Largest local l2 Jacobian norm of ``fn`` over the rows of ``x`` (power iteration).

    A *lower* bound on the Lipschitz constant ``L`` of Theorem 3, useful to see how
    loose :func:`spectral_lipschitz_bound` is; it cannot certify anything by itself.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(x) -> tensor, got {type(fn).__name__}")
    iterations = check_positive_int("iterations", iterations)
    check_tensor("x", x, min_ndim=2, floating=True)
    check_generator("generator", generator)
    x = x.detach()
    v = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device if generator else x.device)
    v = v.to(x.device)
    v = v / v.flatten(1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
    sigma = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        # Without has_aux, jvp returns (output, jvp) and vjp returns (output, vjp_fn).
        _, jv = cast(tuple[Tensor, Tensor], torch.func.jvp(fn, (x,), (v,)))
        _, vjp = cast(tuple[Tensor, Callable[[Tensor], tuple[Tensor, ...]]], torch.func.vjp(fn, x))
        (jtjv,) = vjp(jv)
        sigma = jv.flatten(1).norm(dim=1)
        norm = jtjv.flatten(1).norm(dim=1).clamp_min(1e-30)
        v = jtjv / norm.reshape(-1, *([1] * (x.ndim - 1)))
    return float(sigma.max())


@dataclass(frozen=True)
class Theorem3Certificate:
    """Per-example Theorem-3 radii and the evidence they rest on.

    Attributes:
        radius: certified perturbation size per example (norm of ``lipschitz``), 0 where
            the example is misclassified or a sampled state violated Eq. (10).
        delta: ``exp(-kappa) V_y(eta(0))`` per example (the delta-final loss).
        correct: examples classified correctly at ``t_end``.
        condition_held: examples at all of whose sampled states Eq. (10) held.
        lipschitz: the constant ``L = L_V L_f`` used.
        radius_if_held: the radius Eq. (15) would give each correct example if its
            premise held (shows how far the Lipschitz constant alone leaves a certificate).
        violation_rate: fraction of all sampled ``(eta, t)`` violating Eq. (10).
    """

    radius: Tensor
    delta: Tensor
    correct: Tensor
    condition_held: Tensor
    lipschitz: float
    radius_if_held: Tensor
    violation_rate: float

    def certified_accuracy(self, eps: float) -> float:
        """Fraction of examples certified at perturbation size ``eps`` (same norm)."""
        return float((self.radius >= eps).double().mean())

    def summary(self) -> dict[str, float]:
        return {
            "lipschitz": self.lipschitz,
            "radius_median": float(self.radius.median()),
            "radius_max": float(self.radius.max()),
            "correct_fraction": float(self.correct.double().mean()),
            "condition_fraction": float(self.condition_held.double().mean()),
            "radius_if_held_median": float(self.radius_if_held.median()),
            "violation_rate": self.violation_rate,
        }


def theorem3_certificate(
    model: LyapunovModel,
    x: Tensor,
    y: Tensor,
    *,
    potential: Potential,
    kappa: float,
    lipschitz: float,
    state_sampler: StateSampler,
    num_samples: int = 256,
    time_sampler: Optional[TimeSampler] = None,
    solver: Optional[Solver] = None,
    t_end: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Theorem3Certificate:
    """Theorem 3 (Eq. 15) radii per example, with the exponential-stability premise checked
    on ``num_samples`` sampled states per example.

    The theorem needs Eq. (10) at *every* state; sampling cannot prove that, so the radii
    are certificates conditional on the sampled check (stated as such by the caller).
    ``delta = exp(-kappa) V_y(eta(0))``: with the condition holding, Definition 5's
    delta-final loss bound follows from Eq. (14).

    Arguments:
        lipschitz: ``L = L_V L_f`` in the norm the radius is wanted in, e.g.
            ``sqrt(2) * L_f`` for cross entropy on an identity readout (``|p - e_y| <= sqrt 2``).
    """
    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=1)
    check_tensor("y", y, min_ndim=1)
    check_batch("y", y, "x", x.shape[0])
    potential = _check_potential(potential, optional=False)
    lipschitz = check_positive("lipschitz", lipschitz)
    kappa = check_positive("kappa", kappa)
    t_end = check_positive("t_end", t_end)
    _check_solver(solver)
    if time_sampler is not None and not isinstance(time_sampler, TimeSampler):
        raise TypeError(f"time_sampler must be a TimeSampler or None, got {type(time_sampler).__name__}")
    time_sampler = time_sampler if time_sampler is not None else UniformTimeSampler(t_end=t_end)
    x = as_model_dtype(x, floating_dtype_of(model))
    with torch.no_grad():
        _, eta0 = model.encode(x)
        delta = math.exp(-kappa) * potential.value(model.readout(eta0), y).double()
        final = states_along(model, x, _end_grid(model, x, t_end), solver=solver)[-1]
        correct = model.readout(final).argmax(-1) == y
        out = monte_carlo_lyapunov_loss(
            model,
            x,
            y,
            potential=potential,
            kappa=kappa,
            state_sampler=state_sampler,
            time_sampler=time_sampler,
            num_samples=num_samples,
            generator=generator,
        )
        held = (out.pointwise.reshape(x.shape[0], num_samples) <= 0).all(dim=1)
    unconditional = theorem3_radius(delta.cpu(), lipschitz, kappa)
    zeros = torch.zeros_like(unconditional)
    radius = torch.where((correct & held).cpu(), unconditional, zeros)
    radius_if_held = torch.where(correct.cpu(), unconditional, zeros)
    violation = float((out.pointwise > 0).double().mean())
    return Theorem3Certificate(radius, delta.cpu(), correct.cpu(), held.cpu(), lipschitz, radius_if_held, violation)
