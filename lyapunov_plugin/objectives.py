"""Objectives: *what* is minimised, as small frozen configurations (paper Algorithms 1-2).

An :class:`Objective` is called as ``objective(model, x, y, kappa=..., generator=...)`` and
returns a :class:`~lyapunov_plugin.LyapunovLossOutput`. It is pure (no state, no mutation of
the model), so ``LyapunovTrainer``, a plain loop and a Lightning ``training_step`` compute
the same thing from the same object:

    objective = default_objective(model)                 # the trainer's default recipe
    out = objective(model, x, y)                         # out.loss.backward()

- :class:`MonteCarloObjective`: Algorithm 1, Eq. (45). No differentiable solve: states and
  times are sampled (by default along cheap, gradient-free rollouts of the current model).
- :class:`PathIntegralObjective`: Algorithm 2. Eq. (12) at the states of a rollout that
  carries gradients (``"continuous"``), or Eq. (16)-(17) between its steps (``"discrete"``).
- :class:`SupervisedObjective`: the standard baseline, the potential at ``t_end`` through
  the model's own solver.

:func:`default_objective` is the recipe ``LyapunovTrainer(model)`` uses (docs/defaults.md).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from ._typing import Solver
from ._validation import (
    as_labels,
    as_model_dtype,
    check_choice,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
    floating_dtype_of,
)
from .dispatch import as_lyapunov_model
from .inference import EvalMode
from .losses import (
    CounterexampleSearch,
    LyapunovLossOutput,
    _discrete_path_lyapunov_loss_unchecked,
    _monte_carlo_lyapunov_loss_unchecked,
    _path_lyapunov_loss_unchecked,
)
from .model import LyapunovModel, horizon, solve
from .potentials import CrossEntropyPotential, Potential
from .samplers import RolloutSampler, StateSampler, TimeSampler, UniformTimeSampler
from .solvers import FixedStepSolver

if TYPE_CHECKING:
    from dataclasses import Field

__all__ = [
    "DEFAULT_KAPPA",
    "Objective",
    "MonteCarloObjective",
    "PathIntegralObjective",
    "SupervisedObjective",
    "PenalisedObjective",
    "default_objective",
    "readout_is_trainable",
    "initial_state_is_trainable",
]

#: Default rate of Eq. (10). With ``kappa = 10`` the potential must fall by ``e^-10`` over
#: ``[0, 1]`` (by ``e^-2.5`` by ``t = 0.25``), which is what makes early-terminated
#: predictions as good as final ones; on the suite (docs/defaults.md) ``kappa = 1`` was
#: less accurate in most cells and left the error at ``t = 0.25`` far above that at ``t = 1``.
DEFAULT_KAPPA = 10.0
_PATH_FORMS = ("continuous", "discrete")


def _check_potential(potential: Any) -> Potential:
    if not isinstance(potential, Potential):
        raise TypeError(f"potential must be a lyapunov_plugin.Potential, got {type(potential).__name__}")
    return potential


def _check_solver(name: str, solver: Any) -> None:
    if not callable(solver):
        raise TypeError(f"{name} must be callable as solver(func, y0, ts), got {type(solver).__name__}")


def _check_call(model: Any, x: Any, y: Any, kappa: Any, generator: Any) -> tuple[LyapunovModel, Tensor, Tensor, float]:
    """The one check of an objective call from a user's loop: the model through the
    dispatcher, tensors with one row per example, floating inputs and targets in the model's
    dtype (numpy's float64 for a float32 model), a generator, ``kappa > 0``."""
    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=1)
    check_tensor("y", y, min_ndim=1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have batch size {x.shape[0]} (the batch size of x), got shape {tuple(y.shape)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    dtype = floating_dtype_of(model)
    return model, as_model_dtype(x, dtype), as_model_dtype(as_labels(y), dtype), check_positive("kappa", kappa)


def _time_dtype(x: Tensor) -> torch.dtype:
    """Time grids in the inputs' precision (a float32 grid would leak rounding into a float64
    run); integer inputs (an embedding input layer) use the default dtype."""
    return x.dtype if x.is_floating_point() else torch.get_default_dtype()


class Objective(ABC):
    """What a training step minimises: ``objective(model, x, y, *, kappa, generator)``, a
    Lyapunov loss of Eq. (12)-(17) (or the supervised baseline).

    Implementations are frozen, keyword-only dataclasses that hold only the settings that
    apply to them and check them when built. Calls are pure: they neither store anything
    nor change the model (rollouts run the dynamics in eval mode and restore the mode; the
    Monte Carlo rollout starts from the step's own train-mode encoder pass).
    """

    #: Whether a step backpropagates through an ODE solve.
    uses_solver: ClassVar[bool] = True
    #: Short name for logs and history records.
    name: ClassVar[str] = "objective"
    #: Whether the loss evaluates the Lyapunov condition, Eq. (10) (so its violation
    #: statistics mean something); ``False`` for the supervised baseline.
    uses_lyapunov_condition: ClassVar[bool] = True

    if TYPE_CHECKING:
        # Every implementation is a dataclass (see above): declaring the marker lets
        # dataclasses.replace accept an Objective statically. No effect at run time.
        __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def __call__(
        self,
        model: Any,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float = DEFAULT_KAPPA,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        """The objective on one batch, for a user's own loop: checks its arguments once, then
        :meth:`compute`.

        Arguments:
            model: a :class:`~lyapunov_plugin.LyapunovModel`, or a model the dispatcher
                wraps (torchdyn ``NeuralODE``, torchdiffeq field).
            x, y: inputs and targets.
            kappa: the rate of Eq. (10) for this step (schedules live with the caller).
            generator: ``torch.Generator`` for the Monte Carlo draws (reproducible runs).

        Returns:
            :class:`~lyapunov_plugin.LyapunovLossOutput` (``loss`` carries gradient).
        """
        protocol, x, y, kappa = _check_call(model, x, y, kappa, generator)
        return self.compute(protocol, x, y, kappa=kappa, generator=generator)

    @abstractmethod
    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        """The objective on one batch whose arguments the caller has already checked (the
        trainer validates each batch once where it enters): ``model`` is a
        :class:`~lyapunov_plugin.LyapunovModel`, ``x``/``y`` tensors of one batch on the
        model's device, ``kappa`` a positive float. An implementation of a new objective
        overrides this method only."""


@dataclass(frozen=True, kw_only=True)
class MonteCarloObjective(Objective):
    """Algorithm 1 / Eq. (45): the Lyapunov loss (Eq. 12) at sampled states and times.

    No step backpropagates through a solver. With the default
    :class:`~lyapunov_plugin.RolloutSampler`, each batch first takes a cheap,
    gradient-free rollout of the current model (``rollout_solver`` on ``rollout_points``
    times over ``[0, t_end]``, the dynamics in eval mode) and samples states along and
    around it. The rollout starts from the step's own encoder pass, so the input layer runs
    once per step.

    Arguments:
        potential: ``V_y`` (default cross entropy, Eq. 11).
        state_sampler: ``mu_H`` (default :class:`~lyapunov_plugin.RolloutSampler`).
        time_sampler: ``mu_[0,1]``, for state samplers that do not pair states with
            times; ``None`` then means uniform on ``[0, t_end]``. Must be ``None`` for
            samplers that provide times.
        num_samples: ``Gamma``, samples per example.
        rollout_solver: solver of the gradient-free rollouts (default RK4, 4 steps).
        rollout_points: time points of those rollouts, ``>= 2``.
        detach_v: stop the gradient through ``kappa V`` (see :mod:`lyapunov_plugin.losses`).
        counterexamples: optional hard-state mining (:class:`~lyapunov_plugin.CounterexampleSearch`).
        velocity_penalty: weight of ``mean |f|^2`` (see :func:`~lyapunov_plugin.monte_carlo_lyapunov_loss`).
    """

    uses_solver: ClassVar[bool] = False
    name: ClassVar[str] = "monte_carlo"

    potential: Potential = field(default_factory=CrossEntropyPotential)
    state_sampler: StateSampler = field(default_factory=RolloutSampler)
    time_sampler: Optional[TimeSampler] = None
    num_samples: int = 16
    rollout_solver: Solver = field(default_factory=lambda: FixedStepSolver(method="rk4", steps=4))
    rollout_points: int = 5
    detach_v: bool = False
    counterexamples: Optional[CounterexampleSearch] = None
    velocity_penalty: float = 0.0

    def __post_init__(self) -> None:
        _check_potential(self.potential)
        if not isinstance(self.state_sampler, StateSampler):
            raise TypeError(f"state_sampler must be a StateSampler, got {type(self.state_sampler).__name__}")
        if self.time_sampler is not None:
            if not isinstance(self.time_sampler, TimeSampler):
                raise TypeError(f"time_sampler must be a TimeSampler or None, got {type(self.time_sampler).__name__}")
            if self.state_sampler.provides_times:
                raise ValueError(
                    f"time_sampler does not apply: {type(self.state_sampler).__name__} pairs each state with its "
                    "own time (leave time_sampler=None)"
                )
        check_positive_int("num_samples", self.num_samples)
        _check_solver("rollout_solver", self.rollout_solver)
        if check_positive_int("rollout_points", self.rollout_points) < 2:
            raise ValueError(f"rollout_points must be >= 2, got {self.rollout_points}")
        if not isinstance(self.detach_v, bool):
            raise TypeError(f"detach_v must be a bool, got {type(self.detach_v).__name__}")
        if self.counterexamples is not None and not isinstance(self.counterexamples, CounterexampleSearch):
            raise TypeError(
                f"counterexamples must be a CounterexampleSearch or None, got {type(self.counterexamples).__name__}"
            )
        check_non_negative("velocity_penalty", self.velocity_penalty)

    def rollout(
        self, model: LyapunovModel, x: Tensor, *, encoded: Optional[tuple[Any, Tensor]] = None
    ) -> tuple[Tensor, Tensor]:
        """Gradient-free rollout of the current model in eval mode: ``(states (T, B, *S), ts (T,))``.

        ``encoded``: the step's own ``model.encode(x)`` (as :meth:`compute` passes it), so the
        input layer runs once per step; the solve does not record gradients either way. Without
        it, ``x`` is encoded here, in eval mode."""
        t_end = horizon(model)
        with EvalMode(model), torch.no_grad():
            context, eta0 = model.encode(x) if encoded is None else encoded
            ts = torch.linspace(0.0, t_end, self.rollout_points, dtype=eta0.dtype, device=eta0.device)
            return solve(model, context, eta0, ts, solver=self.rollout_solver), ts

    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        trajectory = ts = encoded = None
        if self.state_sampler.requires_trajectory:
            # One encoder pass per step, shared by the rollout and the loss: the input layer
            # (a ResNet trunk in the image benchmarks) is the costly part of many models, and
            # encoding twice made a Monte Carlo step dearer than backpropagating through
            # RK4-10 there (docs/vision.md). The rollout then sees the context the loss sees
            # (train-mode batch statistics where the encoder has batch norm).
            encoded = model.encode(x)
            trajectory, ts = self.rollout(model, x, encoded=encoded)
        time_sampler = self.time_sampler
        if time_sampler is None and not self.state_sampler.provides_times:
            time_sampler = UniformTimeSampler(t_end=horizon(model))
        return _monte_carlo_lyapunov_loss_unchecked(
            model,
            x,
            y,
            potential=self.potential,
            kappa=kappa,
            state_sampler=self.state_sampler,
            time_sampler=time_sampler,
            num_samples=self.num_samples,
            detach_v=self.detach_v,
            trajectory=trajectory,
            trajectory_times=ts,
            generator=generator,
            counterexamples=self.counterexamples,
            velocity_penalty=self.velocity_penalty,
            check_targets=True,
            encoded=encoded,
        )


@dataclass(frozen=True, kw_only=True)
class PathIntegralObjective(Objective):
    """Algorithm 2: the Lyapunov condition along a rollout that carries gradients.

    ``form="continuous"`` evaluates Eq. (12) (the true derivative ``dV/deta . f``) at the
    ``steps + 1`` states of the rollout, so any ``kappa > 0`` is valid and the rollout
    only decides *where* the condition is checked. ``form="discrete"`` is Eq. (16)-(17)
    between consecutive states, with the per-step rate ``1 - exp(-kappa dt)`` so that
    ``kappa`` keeps its continuous meaning.

    Because gradients flow through the rollout, the input layer and a trainable readout
    learn jointly with the dynamics, which sampled (detached) states cannot give them.

    Arguments:
        potential: ``V_y`` (default cross entropy).
        steps: rollout intervals over ``[0, t_end]``.
        form: ``"continuous"`` (default) or ``"discrete"``.
        solver: ``None`` (default) for RK4 with ``steps`` steps through the protocol (cheap,
            fixed cost), ``"model"`` for the model's own solver (``model.trajectory``), or
            any ``solver(func, y0, ts)``.
        detach_v: stop the gradient through ``kappa V`` (continuous) or ``V_{j-1}`` (discrete).
        start: with ``form="discrete"``, the fraction of ``[0, t_end]`` before which
            Eq. (16)-(17) is not enforced (``0``, the default: from ``t = 0``, Theorem 2's
            exponential decay from the start). With ``start = s`` the loss covers the grid
            intervals that begin at or after ``s t_end``, so the flow is free to rearrange the
            states first and is asked only for ``V(t) <= V(s t_end) exp(-kappa (t - s t_end))``
            afterwards: a weaker guarantee (nothing is promised before ``s t_end``), chosen for
            bare flows whose state at ``t = 0`` is the input itself (docs/defaults.md).
    """

    uses_solver: ClassVar[bool] = True
    name: ClassVar[str] = "path_integral"

    potential: Potential = field(default_factory=CrossEntropyPotential)
    steps: int = 4
    form: str = "continuous"
    solver: Union[Solver, str, None] = None
    detach_v: bool = False
    start: float = 0.0

    def __post_init__(self) -> None:
        _check_potential(self.potential)
        check_positive_int("steps", self.steps)
        check_choice("form", self.form, _PATH_FORMS)
        start = check_non_negative("start", self.start)
        if start >= 1.0:
            raise ValueError(f"start must be a fraction of the horizon in [0, 1), got {self.start!r}")
        if start > 0.0 and self.form != "discrete":
            raise ValueError(
                f"start applies to form='discrete' (Eq. 16-17 between grid states), got form={self.form!r}"
            )
        object.__setattr__(self, "start", start)
        if isinstance(self.solver, str):
            if self.solver != "model":
                raise ValueError(
                    f"solver must be None, 'model' or a callable solver(func, y0, ts), got {self.solver!r}"
                )
        elif self.solver is not None:
            _check_solver("solver", self.solver)
        if not isinstance(self.detach_v, bool):
            raise TypeError(f"detach_v must be a bool, got {type(self.detach_v).__name__}")

    def _solver(self) -> Optional[Solver]:
        if self.solver == "model":
            return None
        if self.solver is None:
            return FixedStepSolver(method="rk4", steps=self.steps)
        return self.solver  # type: ignore[return-value]

    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        t_end = horizon(model)
        ts = torch.linspace(0.0, t_end, self.steps + 1, dtype=_time_dtype(x), device=x.device)
        if self.form == "continuous":
            return _path_lyapunov_loss_unchecked(
                model,
                x,
                y,
                ts,
                potential=self.potential,
                kappa=kappa,
                solver=self._solver(),
                detach_v=self.detach_v,
                check_targets=True,
            )
        solver = self._solver()
        if solver is None:
            trajectory = model.trajectory(x, ts)
        else:
            context, eta0 = model.encode(x)
            trajectory = solve(model, context, eta0, ts.to(eta0.dtype), solver=solver)
        step_rate = -math.expm1(-kappa * t_end / self.steps)
        if self.start > 0.0:
            # The first grid state at or after start * t_end (ts[j] = j t_end / steps), and
            # at least one interval after it.
            first = min(math.ceil(self.start * self.steps - 1e-9), self.steps - 1)
            trajectory = trajectory[first:]
        return _discrete_path_lyapunov_loss_unchecked(
            trajectory,
            y,
            potential=self.potential,
            kappa=step_rate,
            readout=model.readout,
            detach_v=self.detach_v,
            check_targets=True,
        )


@dataclass(frozen=True, kw_only=True)
class SupervisedObjective(Objective):
    """The standard baseline: the supervised loss ``V_y(eta(t_end))`` of Eq. (11) (cross
    entropy by default), backpropagated (or adjoint) through the solve of ``eta(t_end)``.

    No Lyapunov condition is evaluated: the output's ``v_dot`` is zero.

    Arguments:
        potential: the supervised loss (default cross entropy).
        solver: ``None`` (default) for the model's own solver (``model.trajectory``), or any
            ``solver(func, y0, ts)`` through the protocol, e.g. the fixed RK4 grid of a
            path-integral objective, to compare the two at equal solver cost.
    """

    uses_solver: ClassVar[bool] = True
    uses_lyapunov_condition: ClassVar[bool] = False
    name: ClassVar[str] = "standard"

    potential: Potential = field(default_factory=CrossEntropyPotential)
    solver: Optional[Solver] = None

    def __post_init__(self) -> None:
        _check_potential(self.potential)
        if self.solver is not None:
            _check_solver("solver", self.solver)

    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        ts = torch.tensor([0.0, horizon(model)], dtype=_time_dtype(x), device=x.device)
        if self.solver is None:
            final = model.trajectory(x, ts)[-1]
        else:
            context, eta0 = model.encode(x)
            final = solve(model, context, eta0, ts.to(eta0.dtype), solver=self.solver)[-1]
        out = model.readout(final)
        self.potential.validate(out, y)
        values = self.potential.value(out, y)
        return LyapunovLossOutput(values.mean(), values, values.detach(), torch.zeros_like(values.detach()))


@dataclass(frozen=True, kw_only=True)
class PenalisedObjective(Objective):
    """``base`` plus a weighted extra term: ``loss = base.loss + weight * penalty(model, x, y)``,
    where ``base`` is usually a Lyapunov loss of Eq. (12)-(17) (any objective is accepted).

    The shared shape of the opt-in levers that add a term to a Lyapunov objective
    (:class:`~lyapunov_plugin.SettlingPenalty`, :class:`~lyapunov_plugin.ContractionObjective`,
    :class:`~lyapunov_plugin.CertifiedMarginObjective`): subclasses implement
    :meth:`penalty`, or :meth:`weighted_penalty` and :attr:`active` when the term has several
    weights. ``pointwise``, ``v`` and ``v_dot`` of the result are the base's, so the Lyapunov
    diagnostics keep their meaning; with the penalty inactive (``weight = 0``) the result is
    exactly ``base``'s. ``uses_solver`` and ``uses_lyapunov_condition`` are the base's
    (a subclass whose term goes through a solver sets ``uses_solver`` after
    ``super().__post_init__()``).

    Arguments:
        base: the wrapped objective.
        weight: weight of the extra term, ``>= 0``.
    """

    name: ClassVar[str] = "penalised"

    base: Objective
    weight: float = 1.0

    def __post_init__(self) -> None:
        cls = type(self)
        if cls.penalty is PenalisedObjective.penalty and cls.weighted_penalty is PenalisedObjective.weighted_penalty:
            raise TypeError(
                f"{cls.__name__} must implement penalty() or weighted_penalty() (PenalisedObjective is a base)"
            )
        if not isinstance(self.base, Objective):
            raise TypeError(f"base must be a lyapunov_plugin Objective, got {type(self.base).__name__}")
        object.__setattr__(self, "weight", check_non_negative("weight", self.weight))
        object.__setattr__(self, "uses_solver", self.base.uses_solver)
        object.__setattr__(self, "uses_lyapunov_condition", self.base.uses_lyapunov_condition)

    @property
    def active(self) -> bool:
        """Whether the extra term is computed at all (``False``: the base alone)."""
        return self.weight != 0.0

    def penalty(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """The unweighted extra term, a scalar that carries gradient."""
        raise NotImplementedError(f"{type(self).__name__} must implement penalty() or weighted_penalty()")

    def weighted_penalty(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """What is added to the base loss: ``weight * penalty(...)``."""
        return self.weight * self.penalty(model, x, y, generator=generator)

    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        out = self.base.compute(model, x, y, kappa=kappa, generator=generator)
        if not self.active:
            return out
        loss = out.loss + self.weighted_penalty(model, x, y, generator=generator)
        return LyapunovLossOutput(loss, out.pointwise, out.v, out.v_dot)


def readout_is_trainable(model: Any, x: Optional[Tensor] = None) -> bool:
    """Whether ``psi`` has trainable parameters.

    Read from the model's ``readout_module`` (the adapters and ``ODEModel`` have one);
    otherwise probed on the states of two examples of ``x`` (eval mode, no gradient
    through the input layer, no buffer changes): the readout's output requires grad
    exactly when it has trainable parameters.

    Raises:
        ValueError: the model has no ``readout_module`` and no ``x`` was given.
    """
    model = as_lyapunov_model(model)
    module = getattr(model, "readout_module", None)
    if isinstance(module, nn.Module):
        return any(p.requires_grad for p in module.parameters())
    if x is None:
        raise ValueError(
            f"{type(model).__name__} has no readout_module: pass example inputs x so the readout can be probed"
        )
    check_tensor("x", x, min_ndim=1)
    with EvalMode(model):
        with torch.no_grad():
            _, eta0 = model.encode(x[:2])
        with torch.enable_grad():
            out = model.readout(eta0.detach())
    return isinstance(out, Tensor) and out.requires_grad


def initial_state_is_trainable(model: Any, x: Optional[Tensor] = None) -> bool:
    """Whether ``eta(0) = phi(x)`` depends on trainable parameters (paper Section 4,
    "Restriction on Initial State": Monte Carlo training assumes it does not).

    Read from the model's ``initial_state_trainable`` attribute (the adapters and
    ``ODEModel`` have one); otherwise probed on two examples of ``x``.

    Raises:
        ValueError: the model has no such attribute and no ``x`` was given.
    """
    model = as_lyapunov_model(model)
    flag = getattr(model, "initial_state_trainable", None)
    if isinstance(flag, bool):
        return flag
    if x is None:
        raise ValueError(
            f"{type(model).__name__} has no initial_state_trainable attribute: pass example inputs x so the "
            "input layer can be probed"
        )
    check_tensor("x", x, min_ndim=1)
    with EvalMode(model), torch.enable_grad():
        _, eta0 = model.encode(x[:2])
    return isinstance(eta0, Tensor) and eta0.requires_grad


def default_objective(model: Any, x: Optional[Tensor] = None) -> Objective:
    """The recipe ``LyapunovTrainer(model)`` trains with (docs/defaults.md), for a user's
    own loop or Lightning ``training_step``: ``objective = default_objective(model, x)``.

    - The paper's model: the dynamics see the input, ``eta(0)`` does not depend on
      trainable parameters (Section 4, "Restriction on Initial State") and the readout
      has none (e.g. a data-controlled field from ``eta(0) = 0`` whose state is the
      logits): Monte Carlo training, Algorithm 1, with states sampled along and around
      rollouts of the current model (:class:`MonteCarloObjective` defaults). No step
      backpropagates through a solver.
    - Otherwise (a trainable readout, a trainable input layer in front of ``eta(0)``, or
      dynamics that see the input only through ``eta(0)``): path-integral training,
      Algorithm 2, Eq. (12) along a cheap RK4 rollout that carries gradients
      (:class:`PathIntegralObjective` defaults). Sampled states are detached from the
      input layer, and with a trainable readout the loss can be lowered by reshaping ``V``
      instead of steering the flow; both need gradients through the states, which only a
      differentiable rollout gives. If the model's own solver is a fixed-step scheme
      that takes fewer steps over ``[0, t_end]`` than that rollout (``fixed_steps``, e.g.
      a torchdyn ``rk4`` model: one step), the discrete path loss, Eq. (16)-(17), along
      the model's own steps instead: the flow learned on a finer grid is not the map such
      a model computes at inference.
    - A bare flow (the dynamics do not see the input, ``eta(0) = x`` has no trainable input
      layer and the state is read out without parameters, as torchdyn's tutorial
      ``NeuralODE(f)`` on 2-D data): the discrete path loss, Eq. (16)-(17), along an RK4
      rollout of ``BARE_FLOW_STEPS = 8`` steps. Eq. (10) at the fixed initial states asks
      for ``|f(x)| >= kappa V / |dV/deta|`` at inputs of opposite labels close together, a
      field stiff enough that the continuous condition is met at RK4-4 grid states that are
      not on the flow (the true flow collapsed to the decision boundary, ~50 % accuracy on
      two moons); the discrete loss constrains the states the steps actually reach
      (benchmarks/bare_torchdyn.py, docs/defaults.md).

    Arguments:
        model: the user's model (any form the trainer accepts).
        x: a few example inputs, needed only for a model without ``readout_module`` or
            ``initial_state_trainable`` (it is probed on them; nothing is trained).
    """
    return default_branch(model, x)[1]


def default_branch(
    model: Any, x: Optional[Tensor] = None, *, rollout_steps: Optional[int] = None
) -> tuple[str, Objective]:
    """The branch of :func:`default_objective` that applies to ``model`` (see
    :func:`default_choice`) and its objective. ``rollout_steps``: the RK4 steps of the path
    integral (default the objective's own, 4; a potential's ``path_steps`` through
    :meth:`~lyapunov_plugin.Recipe.resolve`): a model whose own fixed-step grid is coarser
    trains along that grid, and a bare flow rolls out along at least ``BARE_FLOW_STEPS``."""
    rollout = PathIntegralObjective().steps if rollout_steps is None else rollout_steps
    choice, steps = default_choice(model, x, rollout_steps=rollout)
    if choice == "monte_carlo":
        return choice, MonteCarloObjective()
    if choice == "model_steps":
        # Inference takes fewer fixed steps than the rollout would: the flow learned on the
        # finer grid is not what the model computes (a torchdyn rk4 model takes one step over
        # [0, t_end]). Train the map inference uses: the discrete path loss, Eq. (16)-(17),
        # along the model's own steps.
        return choice, PathIntegralObjective(form="discrete", solver="model", steps=steps)
    if choice == "bare_flow":
        return choice, PathIntegralObjective(form="discrete", steps=max(BARE_FLOW_STEPS, rollout))
    return choice, PathIntegralObjective(steps=rollout)


def default_choice(model: Any, x: Optional[Tensor] = None, *, rollout_steps: Optional[int] = None) -> tuple[str, int]:
    """Which branch of :func:`default_objective` applies to ``model`` (``"monte_carlo"``,
    ``"model_steps"``, ``"bare_flow"`` or ``"path_integral"``), and the model's fixed steps
    for ``"model_steps"`` (0 otherwise). :meth:`~lyapunov_plugin.Recipe.resolve` reads it
    for the bare flow's own ``kappa`` and learning rate (``BARE_FLOW_KAPPA``, Section 3.2).
    ``rollout_steps`` (default 4): a path-integral model whose own fixed-step grid is coarser
    than that rollout trains along its own steps (a bare flow only below four steps, its own
    rollout being the discrete loss's)."""
    protocol = as_lyapunov_model(model)
    conditioned = bool(getattr(protocol, "conditioned_on_input", True))
    if conditioned and not readout_is_trainable(protocol, x) and not initial_state_is_trainable(protocol, x):
        return "monte_carlo", 0
    steps = getattr(protocol, "fixed_steps", None)
    fixed = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1 else 0
    if fixed and fixed < PathIntegralObjective().steps:
        return "model_steps", fixed
    if not conditioned and _is_bare_flow(protocol, x):
        return "bare_flow", 0
    if fixed and rollout_steps is not None and fixed < rollout_steps:
        return "model_steps", fixed
    return "path_integral", 0


#: Rollout steps of the discrete path loss for a bare flow (see :func:`default_objective`).
BARE_FLOW_STEPS = 8
#: The rate of Eq. (10) in a bare flow's default recipe (Section 3.2, "Choosing kappa": a
#: large kappa makes learning harder). With ``eta(0) = x`` fixed and no readout, the one
#: field must untangle the classes *and* raise the margin at rate ``kappa`` from ``t = 0``;
#: at ``kappa = 10`` the discrete loss asks for a 71 % drop of ``V`` per step and the suite's
#: bare cells fell 1-26 points behind standard training (docs/defaults.md, "The bare pattern").
BARE_FLOW_KAPPA = 3.0
#: The Adam learning rate of a bare flow's default recipe (chosen with ``BARE_FLOW_KAPPA`` on
#: the suite's development problems' validation splits, docs/defaults.md).
BARE_FLOW_LR = 3e-2


def _is_bare_flow(model: Any, x: Optional[Tensor]) -> bool:
    """Whether the model is a bare flow: ``eta(0) = x`` without trainable input layer, the
    state read out without trainable readout (torchdyn's tutorial ``NeuralODE(f)``). Read
    from the declared attributes, or probed on ``x``; ``False`` when neither is available."""
    declared = isinstance(getattr(model, "readout_module", None), nn.Module) and isinstance(
        getattr(model, "initial_state_trainable", None), bool
    )
    if not declared and x is None:
        return False
    return not readout_is_trainable(model, x) and not initial_state_is_trainable(model, x)
