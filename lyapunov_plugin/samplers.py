"""Samplers for the Monte Carlo Lyapunov objective (Algorithm 1, Appendix B).

Algorithm 1 draws ``Gamma`` pairs ``(eta, t) ~ mu_H x mu_[0,1]`` per training example.
A :class:`StateSampler` provides ``mu_H`` and a :class:`TimeSampler` provides
``mu_[0,1]``. Every sampler is a frozen dataclass whose settings are checked when it is
built; sampling takes an optional ``torch.Generator`` and follows the dtype and device
of the states it is asked for.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from ._validation import (
    check_batch,
    check_choice,
    check_like,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_real,
    check_tensor,
)

__all__ = [
    "SamplingContext",
    "StateSampler",
    "HypercubeSampler",
    "HypersphereSampler",
    "TrajectorySampler",
    "RolloutSampler",
    "MixtureSampler",
    "TimeSampler",
    "UniformTimeSampler",
    "StratifiedTimeSampler",
    "appendix_b_half_width",
]

_CENTERS = ("origin", "initial")


def _draw_shape(shape: Any) -> tuple[int, ...]:
    """``shape`` (an int or a sequence of ints >= 0) as a tuple; ``TypeError`` naming it otherwise."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, (tuple, list, torch.Size))
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**63 for n in shape)
    ):
        raise TypeError(f"shape must be a sequence of non-negative ints (int64 sizes), got {shape!r}")
    return tuple(shape)


def _random(
    kind: str,
    shape: Sequence[int],
    like: Tensor,
    generator: Optional[torch.Generator],
) -> Tensor:
    """Uniform [0, 1) or standard normal draws on ``generator``'s device, moved to ``like``.

    Drawing on the generator's own device keeps a seeded run reproducible whichever
    device the model lives on.
    """
    check_tensor("like", like, floating=True)
    shape = _draw_shape(shape)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = generator.device if generator is not None else like.device
    draw = torch.rand if kind == "uniform" else torch.randn
    out = draw(tuple(shape), generator=generator, device=device, dtype=like.dtype)
    return out.to(like.device)


@dataclass(frozen=True)
class SamplingContext:
    """What a state sampler (``mu_H`` of Algorithm 1) may condition on, per batch of examples.

    Attributes:
        eta0: initial states ``eta(0) = phi(x)``, ``(B, *S)``; fixes batch size, state
            shape, dtype and device of the samples.
        target: labels ``(B,)`` (for class-aware samplers), optional.
        trajectory: states along rollouts, ``(T, B, *S)`` (for
            :class:`TrajectorySampler` and :class:`RolloutSampler`), optional.
        trajectory_times: the times ``(T,)`` of ``trajectory`` (for samplers that pair each
            state with its time, :class:`RolloutSampler`), optional.
    """

    eta0: Tensor
    target: Optional[Tensor] = None
    trajectory: Optional[Tensor] = None
    trajectory_times: Optional[Tensor] = None

    def __post_init__(self) -> None:
        check_tensor("eta0", self.eta0, min_ndim=1, floating=True)
        batch = self.eta0.shape[0]
        if self.target is not None:
            check_tensor("target", self.target, min_ndim=1)
            check_batch("target", self.target, "eta0", batch)
        if self.trajectory is not None:
            check_tensor("trajectory", self.trajectory, min_ndim=2, floating=True)
            if tuple(self.trajectory.shape[1:]) != tuple(self.eta0.shape):
                raise ValueError(
                    "trajectory must have shape (T, *eta0.shape) = "
                    f"(T, {', '.join(map(str, self.eta0.shape))}), got {tuple(self.trajectory.shape)}"
                )
            check_like("trajectory", self.trajectory, "eta0", self.eta0)
        if self.trajectory_times is not None:
            check_tensor("trajectory_times", self.trajectory_times, min_ndim=1, floating=True)
            steps = self.trajectory.shape[0] if self.trajectory is not None else None
            if self.trajectory_times.ndim != 1 or (steps is not None and self.trajectory_times.shape[0] != steps):
                raise ValueError(
                    f"trajectory_times must have shape (T,) = ({steps},) (one time per trajectory point), "
                    f"got {tuple(self.trajectory_times.shape)}"
                )

    @classmethod
    def _trusted(
        cls,
        eta0: Tensor,
        target: Optional[Tensor] = None,
        trajectory: Optional[Tensor] = None,
        trajectory_times: Optional[Tensor] = None,
    ) -> SamplingContext:
        """A context from tensors the caller has already checked (the unchecked loss path
        builds one per training step from states it produced itself): the same object, without
        re-running :meth:`__post_init__`'s checks."""
        context = object.__new__(cls)
        for name, value in (
            ("eta0", eta0),
            ("target", target),
            ("trajectory", trajectory),
            ("trajectory_times", trajectory_times),
        ):
            object.__setattr__(context, name, value)
        return context

    @property
    def batch_size(self) -> int:
        return int(self.eta0.shape[0])

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.eta0.shape[1:])


class StateSampler(ABC):
    """Abstract state measure ``mu_H`` of Algorithm 1.

    Subclasses implement :meth:`sample`. ``requires_trajectory`` tells a caller to put
    rollouts into the :class:`SamplingContext` before sampling. ``provides_times`` marks a
    sampler whose states belong to definite times (states along rollouts): it implements
    :meth:`sample_with_times`, and a separate time measure does not apply to it.
    """

    requires_trajectory: bool = False
    provides_times: bool = False

    def sample_with_times(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``num_samples`` ``(state, time)`` pairs per example (samplers with
        ``provides_times``): ``(B, G, *S)`` states and ``(B, G)`` times."""
        raise NotImplementedError(f"{type(self).__name__} draws states only; pair it with a TimeSampler")

    @abstractmethod
    def sample(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """Draw ``num_samples`` states per example.

        Arguments:
            context: the batch's :class:`SamplingContext`.
            num_samples: ``Gamma``, samples per example.
            generator: optional ``torch.Generator`` for reproducible draws.

        Returns:
            ``(B, num_samples, *S)`` states with the dtype and device of ``context.eta0``,
            carrying no gradient.
        """


def _check_context(context: Any) -> SamplingContext:
    """``context`` must be a :class:`SamplingContext` (a bare tensor of initial states is the
    common mistake: wrap it as ``SamplingContext(eta0=...)``)."""
    if not isinstance(context, SamplingContext):
        kind = f"Tensor of shape {tuple(context.shape)}" if isinstance(context, Tensor) else type(context).__name__
        raise TypeError(
            f"context must be a SamplingContext (e.g. SamplingContext(eta0=states of shape (B, *S))), got {kind}"
        )
    return context


def _center(context: SamplingContext, center: str) -> Tensor:
    if center == "origin":
        return torch.zeros_like(context.eta0)
    return context.eta0.detach()


def _covering_extent(context: SamplingContext, center: Tensor, norm: str) -> Tensor:
    """Largest distance (``"linf"`` or ``"l2"``) from ``center`` of any rollout state in the batch."""
    if context.trajectory is None:
        raise ValueError(
            "a sampler with cover set needs SamplingContext.trajectory (rollout states of shape (T, B, *S)); got None"
        )
    offsets = (context.trajectory.detach() - center[None]).flatten(2)
    return offsets.abs().amax() if norm == "linf" else offsets.norm(dim=-1).amax()


@dataclass(frozen=True, kw_only=True)
class HypercubeSampler(StateSampler):
    """Uniform states on the hypercube ``[-s, s]^k`` (Appendix B, "Picking H").

    Appendix B's key requirement is that the region covers the states inference visits.
    ``half_width`` from :func:`appendix_b_half_width` sizes it by the loss level
    ``exp(-kappa)``, but trained dynamics can travel further (cross entropy keeps
    rewarding larger logits), and outside the region Eq. (10) is never enforced. With
    ``cover`` set, the half-width grows per batch to ``cover`` times the largest
    coordinate of the batch's rollout states, so the region always contains them.

    Arguments:
        half_width: ``s``; :func:`appendix_b_half_width` gives the paper's choice.
        center: ``"origin"`` (the paper, which fixes ``eta(0) = 0``) or ``"initial"``
            (centred on each example's ``eta(0)``, for models whose input layer is not zero).
        cover: ``None`` (fixed region) or a factor ``>= 1``: half-width
            ``max(s, cover * max |rollout state - center|)``; needs rollouts.
    """

    half_width: float
    center: str = "origin"
    cover: Optional[float] = None

    def __post_init__(self) -> None:
        check_positive("half_width", self.half_width)
        check_choice("center", self.center, _CENTERS)
        if self.cover is not None and check_real("cover", self.cover) < 1.0:
            raise ValueError(f"cover must be >= 1 (a factor on the rollouts' extent), got {self.cover}")

    @property
    def requires_trajectory(self) -> bool:  # type: ignore[override]
        return self.cover is not None

    def sample(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        _check_context(context)
        check_positive_int("num_samples", num_samples)
        shape = (context.batch_size, num_samples, *context.state_shape)
        u = _random("uniform", shape, context.eta0, generator)
        center = _center(context, self.center)
        half_width: Any = self.half_width
        if self.cover is not None:
            half_width = torch.clamp(self.cover * _covering_extent(context, center, "linf"), min=self.half_width)
        return center[:, None] + half_width * (2.0 * u - 1.0)


@dataclass(frozen=True, kw_only=True)
class HypersphereSampler(StateSampler):
    """Origin-biased states in a ball, Algorithm 3 ("Biased Sampling on Hypersphere").

    ``r ~ U(0, r_max)`` and a direction uniform on the sphere (normalised Gaussian), so
    the density grows towards the centre, where inference starts. Algorithm 3 takes the
    ball that circumscribes the Appendix-B hypercube, ``r_max = s * sqrt(k)``; see
    :meth:`around_hypercube`.

    Arguments:
        radius: ``r_max``.
        center: ``"origin"`` or ``"initial"`` as in :class:`HypercubeSampler`.
    """

    radius: float
    center: str = "origin"

    def __post_init__(self) -> None:
        check_positive("radius", self.radius)
        check_choice("center", self.center, _CENTERS)

    @classmethod
    def around_hypercube(cls, half_width: float, state_dim: int, *, center: str = "origin") -> HypersphereSampler:
        """The ball through the corners of ``[-s, s]^k``: ``r_max = s * sqrt(k)`` (Alg. 3)."""
        half_width = check_positive("half_width", half_width)
        state_dim = check_positive_int("state_dim", state_dim)
        return cls(radius=half_width * math.sqrt(state_dim), center=center)

    def sample(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        _check_context(context)
        check_positive_int("num_samples", num_samples)
        batch = context.batch_size
        shape = (batch, num_samples, *context.state_shape)
        direction = _random("normal", shape, context.eta0, generator).flatten(2)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(direction.dtype).tiny)
        r = self.radius * _random("uniform", (batch, num_samples, 1), context.eta0, generator)
        return _center(context, self.center)[:, None] + (r * direction).reshape(shape)


@dataclass(frozen=True, kw_only=True)
class TrajectorySampler(StateSampler):
    """States near each example's own rollout: ``eta(t_j) + noise_std * N(0, I)``.

    The time index ``j`` is uniform over the rollout's points. Concentrates samples on
    the states inference actually visits, which region samplers cover thinly in high
    dimension (Section 4); it is also the only well-posed choice when the vector field
    does not see the input (the state alone must then carry the label).

    Arguments:
        noise_std: standard deviation of the Gaussian perturbation, ``>= 0``.
    """

    noise_std: float = 0.0
    requires_trajectory: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        check_non_negative("noise_std", self.noise_std)

    def sample(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        _check_context(context)
        check_positive_int("num_samples", num_samples)
        if context.trajectory is None:
            raise ValueError(
                "TrajectorySampler needs SamplingContext.trajectory (states of shape (T, B, *S)); got None"
            )
        traj = context.trajectory.detach()
        steps, batch = traj.shape[0], traj.shape[1]
        u = _random("uniform", (batch, num_samples), context.eta0, generator)
        index = (u * steps).long().clamp_(max=steps - 1)
        per_example = traj.transpose(0, 1)  # (B, T, *S)
        gather_index = index.reshape(batch, num_samples, *([1] * len(context.state_shape)))
        gather_index = gather_index.expand(batch, num_samples, *context.state_shape)
        states = per_example.gather(1, gather_index)
        if self.noise_std > 0:
            states = states + self.noise_std * _random("normal", states.shape, context.eta0, generator)
        return states


@dataclass(frozen=True, kw_only=True)
class RolloutSampler(StateSampler):
    """States where inference goes, at scale-free distances from it: the default ``mu_H``.

    Each example's ``Gamma`` samples lie on its own rollout at times uniform on the
    rollout's span (linear interpolation between the rollout points), each moved by
    Gaussian noise of a scale drawn from ``noise_scales``. The scales are relative to the
    spread of the batch's rollout states (per state coordinate), so the same setting fits
    inputs in [0, 1], standardised features and logits that grow during training. The
    default stays within 0.3 spreads, which kept accuracy on the suite (docs/defaults.md);
    noise reaching 1 to 3 spreads makes the condition hold in a wider neighbourhood and the
    model more robust to input perturbations (digits, "Robustness" in docs/defaults.md), at
    an accuracy cost on harder problems.

    Appendix B asks that the sampling region contain the states inference visits; a fixed
    region does not track them as training changes the dynamics (they leave it, or the
    region outgrows the data), whereas rollouts from the current model always do. Each
    state comes with its own time, so time-dependent dynamics ``f(eta, x, t)`` are checked
    where they are used (``provides_times``).

    Arguments:
        noise_scales: non-negative relative noise levels, drawn uniformly per sample;
            ``0`` puts the sample on the rollout.
    """

    noise_scales: tuple[float, ...] = (0.0, 0.1, 0.3)
    requires_trajectory: bool = field(default=True, init=False)
    provides_times: bool = field(default=True, init=False)

    def __post_init__(self) -> None:
        scales = tuple(self.noise_scales) if isinstance(self.noise_scales, (tuple, list)) else None
        if not scales:
            raise ValueError(
                f"noise_scales must be a non-empty tuple of non-negative floats, got {self.noise_scales!r}"
            )
        object.__setattr__(
            self, "noise_scales", tuple(check_non_negative(f"noise_scales[{i}]", v) for i, v in enumerate(scales))
        )

    def sample(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        return self.sample_with_times(context, num_samples, generator=generator)[0]

    def sample_with_times(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> tuple[Tensor, Tensor]:
        _check_context(context)
        check_positive_int("num_samples", num_samples)
        if context.trajectory is None or context.trajectory_times is None:
            raise ValueError(
                "RolloutSampler needs SamplingContext.trajectory (states (T, B, *S)) and trajectory_times ((T,)); "
                f"got trajectory={'set' if context.trajectory is not None else None}, "
                f"trajectory_times={'set' if context.trajectory_times is not None else None}"
            )
        traj = context.trajectory.detach().to(context.eta0.dtype)
        ts = context.trajectory_times.detach().to(dtype=traj.dtype, device=traj.device)
        steps, batch = traj.shape[0], traj.shape[1]
        state_dims = len(context.state_shape)
        u = _random("uniform", (batch, num_samples), context.eta0, generator)
        if steps == 1:
            states = traj[0][:, None].expand(batch, num_samples, *context.state_shape)
            times = ts[0].expand(batch, num_samples)
        else:
            position = u * (steps - 1)
            lower = position.floor().long().clamp_(max=steps - 2)
            weight = (position - lower).reshape(batch, num_samples, *([1] * state_dims))
            per_example = traj.transpose(0, 1)  # (B, T, *S)

            def at(index: Tensor) -> Tensor:
                gather = index.reshape(batch, num_samples, *([1] * state_dims)).expand(
                    batch, num_samples, *context.state_shape
                )
                return per_example.gather(1, gather)

            states = (1 - weight) * at(lower) + weight * at(lower + 1)
            w = weight.reshape(batch, num_samples)
            times = (1 - w) * ts[lower] + w * ts[lower + 1]
        if any(s > 0 for s in self.noise_scales):
            spread = (
                traj.reshape(steps * batch, *context.state_shape).std(0, unbiased=False)
                if steps * batch > 1
                else torch.zeros(context.state_shape, dtype=traj.dtype, device=traj.device)
            )
            levels = torch.tensor(self.noise_scales, dtype=traj.dtype, device=traj.device)
            pick = (_random("uniform", (batch, num_samples), context.eta0, generator) * len(self.noise_scales)).long()
            scale = levels[pick.clamp_(max=len(self.noise_scales) - 1)].reshape(batch, num_samples, *([1] * state_dims))
            noise = _random("normal", (batch, num_samples, *context.state_shape), context.eta0, generator)
            states = states + scale * spread * noise
        return states, times


@dataclass(frozen=True)
class MixtureSampler(StateSampler):
    """A mixture of state samplers with fixed weights: ``mu_H`` of Algorithm 1 as a
    weighted sum of component measures.

    Samples are allocated to components in proportion to the weights (largest-remainder
    rounding, so ``Gamma`` is met exactly) rather than drawn multinomially: a
    stratified estimate of the same mixture measure, with lower variance.

    Arguments:
        samplers: the components.
        weights: non-negative weights, one per component, not all zero; normalised.
    """

    samplers: tuple[StateSampler, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        for name, value, what in (
            ("samplers", self.samplers, "StateSamplers"),
            ("weights", self.weights, "non-negative floats, one per sampler"),
        ):
            if not isinstance(value, (tuple, list)):
                raise TypeError(
                    f"{name} must be a tuple (or list) of {what}, e.g. MixtureSampler((a, b), (0.5, 0.5)); "
                    f"got {type(value).__name__}"
                )
        samplers = tuple(self.samplers)
        weights = tuple(self.weights)
        if not samplers:
            raise ValueError("samplers must hold at least one StateSampler, got none")
        for i, sampler in enumerate(samplers):
            if not isinstance(sampler, StateSampler):
                raise TypeError(f"samplers[{i}] must be a StateSampler, got {type(sampler).__name__}")
        if len(weights) != len(samplers):
            raise ValueError(f"weights must have one entry per sampler ({len(samplers)}), got {len(weights)}")
        checked = tuple(check_non_negative(f"weights[{i}]", w) for i, w in enumerate(weights))
        if sum(checked) <= 0:
            raise ValueError(f"weights must not all be zero, got {checked}")
        object.__setattr__(self, "samplers", samplers)
        object.__setattr__(self, "weights", checked)

    @property
    def requires_trajectory(self) -> bool:  # type: ignore[override]
        return any(s.requires_trajectory for s, w in zip(self.samplers, self.weights, strict=True) if w > 0)

    def allocation(self, num_samples: int) -> list[int]:
        """Samples per component for a total of ``num_samples`` (largest remainder)."""
        num_samples = check_positive_int("num_samples", num_samples)
        total = sum(self.weights)
        exact = [num_samples * w / total for w in self.weights]
        counts = [math.floor(e) for e in exact]
        order = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
        for i in order[: num_samples - sum(counts)]:
            counts[i] += 1
        return counts

    def sample(
        self, context: SamplingContext, num_samples: int, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        _check_context(context)
        parts = [
            sampler.sample(context, count, generator=generator)
            for sampler, count in zip(self.samplers, self.allocation(num_samples), strict=True)
            if count > 0
        ]
        return torch.cat(parts, dim=1)


class TimeSampler(ABC):
    """Abstract time measure ``mu_[0,1]`` of Algorithm 1 (uniform in the paper)."""

    @abstractmethod
    def sample(
        self,
        shape: Sequence[int],
        *,
        like: Tensor,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Draw times.

        Arguments:
            shape: ``(B, G)``: examples by samples per example.
            like: a tensor whose dtype and device the times take.
            generator: optional ``torch.Generator``.

        Returns:
            Times of the given shape.
        """


@dataclass(frozen=True, kw_only=True)
class _IntervalTimeSampler(TimeSampler):
    t_start: float = 0.0
    t_end: float = 1.0

    def __post_init__(self) -> None:
        start = check_real("t_start", self.t_start)
        end = check_real("t_end", self.t_end)
        if end <= start:
            raise ValueError(f"t_end must be greater than t_start={start}, got {end}")


@dataclass(frozen=True, kw_only=True)
class UniformTimeSampler(_IntervalTimeSampler):
    """Times i.i.d. uniform on ``[t_start, t_end]`` (Algorithm 1's ``mu_[0,1]``)."""

    def sample(self, shape: Sequence[int], *, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        u = _random("uniform", shape, like, generator)
        return self.t_start + (self.t_end - self.t_start) * u


@dataclass(frozen=True, kw_only=True)
class StratifiedTimeSampler(_IntervalTimeSampler):
    """One uniform time in each of ``G`` equal strata of ``[t_start, t_end]`` per example
    (``mu_[0,1]`` of Algorithm 1, stratified).

    Same marginal measure as :class:`UniformTimeSampler` with lower variance: every
    example's ``G`` samples cover the whole interval.
    """

    def sample(self, shape: Sequence[int], *, like: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        check_tensor("like", like, floating=True)
        shape = _draw_shape(shape)
        if len(shape) < 1:
            raise ValueError(f"shape must have at least one dimension (the strata), got {shape}")
        strata = shape[-1]
        u = _random("uniform", shape, like, generator)
        k = torch.arange(strata, device=like.device, dtype=like.dtype)
        return self.t_start + (self.t_end - self.t_start) * (k + u) / strata


def appendix_b_half_width(kappa: float, num_classes: int) -> float:
    """Hypercube half-width ``s`` of Appendix B, Eq. (49).

    ``s`` is chosen so that the corner ``eta*`` (``+s`` on the correct class, ``-s``
    elsewhere) has cross-entropy loss ``V_y(eta*) = exp(-kappa)`` under the identity
    readout: ``log(1 + (m - 1) exp(-2 s)) = exp(-kappa)``, so
    ``s = -log((exp(exp(-kappa)) - 1) / (m - 1)) / 2``.

    Arguments:
        kappa: the convergence rate, ``> 0``.
        num_classes: ``m >= 2``.
    """
    kappa = check_positive("kappa", kappa)
    num_classes = check_positive_int("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    target_loss = math.exp(-kappa)
    # For kappa beyond ~690 exp(-kappa) / (m - 1) reaches the subnormal range (and 0 after
    # ~745); there log(expm1(exp(-kappa))) = -kappa to within exp(-kappa) / 2.
    if target_loss < 1e-290:
        return 0.5 * (kappa + math.log(num_classes - 1))
    return -0.5 * math.log(math.expm1(target_loss) / (num_classes - 1))
