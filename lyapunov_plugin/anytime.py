"""Anytime inference: integrate each example only until it has converged (issue 14).

LyaNet trains the inference dynamics so that the potential ``V_y(eta) = L(psi(eta), y)``
of Eq. (11) decays exponentially along the flow, ``dV_y/deta . f + kappa V_y <= 0``
(Eq. 10), which gives ``V_y(eta(t)) <= V_y(eta(0)) e^(-kappa t)`` (Theorem 2). At test time
the label is unknown, so the rule below uses the *predicted* class ``c = argmax psi(eta)``:

**Stopping rule.** At an accepted solver state ``eta`` at time ``t < t_end``, with the
velocity ``f = f(eta, x, t)`` the solver has already computed there, stop the example when

1. ``V_c(eta) < level`` and
2. ``dV_c/deta . f + kappa V_c(eta) <= 0`` (Eq. 10 at this state, for the predicted class),

on ``patience`` consecutive accepted states, and return ``psi(eta)``. Checking costs no
evaluation of ``f`` with dopri5 (the velocity at the new state is the step's last stage,
"first same as last"); with RK4 it is the next step's first stage, so only an example that
stops pays for it (one evaluation).

**What is guaranteed, and what is not.**

- With the cross-entropy potential and ``level <= log 2``, every state of the sublevel set
  ``{eta : V_c(eta) < level}`` has ``p_c > 1/2``, so ``c`` is its unique predicted class.
- Condition 2 at the stopping state says only that ``V_c`` is not increasing *there, at that
  instant*: it is a local statement. It does **not** prove that the class cannot change
  between ``t`` and ``t_end``. That follows only if Eq. (10) (or merely ``dV_c/dt <= 0``)
  holds on the whole sublevel set ``{V_c < level}`` for all times in ``[t, t_end]``: the set
  is then forward invariant (the flow cannot cross its boundary outwards), the trajectory
  stays in it, and the prediction at ``t_end`` is ``c`` with
  ``V_c(eta(t_end)) <= V_c(eta(t)) e^(-kappa (t_end - t))`` (Theorem 2's argument). Lyapunov
  training asks for Eq. (10) along training trajectories (with the true label); nothing
  here verifies it on the sublevel set of a test example.
- So a stop may be a *false stop* (the prediction at ``t_end`` differs). The rate is
  measured, and ``level`` is chosen on a validation split to keep it below a target
  (:func:`choose_level`, optionally with a Clopper-Pearson upper confidence bound on the
  validation rate, :func:`binomial_upper_bound`); it is not zero by construction.
- The stopped prediction is that of the per-example dopri5 (or RK4) state at ``t``, with the
  solver's local error control (``rtol``, ``atol``), not of the exact flow.

**Regression** (``potential=MSEPotential()``). A regression output has no predicted class,
and ``V = mean (psi - y)^2`` needs the unknown target. But Eq. (10) at a state,
``(2/m) r . u <= -(kappa/m) |r|^2`` for the residual ``r = psi - y`` and the output velocity
``u = dpsi/dt``, gives by Cauchy-Schwarz ``RMS(r) <= 2 RMS(u) / kappa``: a bound on the
distance to the target that needs no label. The rule stops an example at an accepted state
where ``2 RMS(u) / kappa < level`` (``level`` in output units; ``potential`` in the result holds
``RMS(u)``). Guaranteed: nothing by itself. *If* Eq. (10) holds at the stopping state for the
true target at rate ``kappa``, the stopped output is within ``level`` (RMS) of that target;
if it holds on the rest of the path as well, the residual keeps shrinking and the output at
``t_end`` is within ``2 level`` of the stopped one. A field slower than Eq. (10) asks
(or a ``kappa`` above the one the model meets) stops early and further away, so ``level`` is
chosen on validation data like the classification level (:func:`choose_level` with
``tolerance``: a stop is false when the stopped output differs from the one at ``t_end`` by
more than ``tolerance``).

**Certified stops** (``rule="certified"``, :mod:`lyapunov_plugin.speed`). For a field that
ends in a linear layer after a bounded activation and a linear or identity readout, every
logit gap moves at a bounded rate ``r_cj`` at every state, so the solver can move it by at
most ``(t_end - t) G r_cj`` over the rest of the solve (``G``: the solver's sum of
``|b_i|``). Stopping where every gap of the predicted class exceeds that is never a false
stop (up to rounding), with no level and no validation split; it fires late.
``rule="either"`` stops at the first of the two rules.

**Cost.** Each example has its own time, step size and error control
(:mod:`lyapunov_plugin.adaptive`), so its path does not depend on the other rows, and
examples that stop leave the batch: only the rows still integrating are passed to
``model.vector_field`` (with the matching rows of the context). A stopped example costs no
further evaluations or wall-clock. The bookkeeping is per batch, not per row, where it can be:
every active row has been evaluated by every field call so far and has taken as many steps
as the others, so NFE and rejected steps come from two counters when a row leaves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import torch
from torch import Tensor

from ._typing import Context
from ._validation import (
    check_choice,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_real,
    check_shape,
    check_tensor,
    parameter_device,
)
from .adaptive import control, dopri5_step, initial_step, per_row, rk4_step
from .budget import SolverError
from .dispatch import as_lyapunov_model
from .inference import EvalMode
from .local_bound import LocalRateBound, local_certified_stops, local_rate_bound
from .model import LyapunovModel, check_velocity, horizon
from .potentials import CrossEntropyPotential, MSEPotential, Potential, _readout_jvp, readout_of
from .speed import LogitRateBound, certified_stops, logit_rate_bound, solver_gain, verified_field_output

__all__ = [
    "AnytimePrediction",
    "AnytimeTrace",
    "LevelChoice",
    "anytime_predict",
    "anytime_trace",
    "choose_level",
    "binomial_upper_bound",
    "DEFAULT_LEVEL",
    "DEFAULT_KAPPA",
    "DEFAULT_LEVELS",
    "SOLVERS",
    "RULES",
    "TORCHDIFFEQ_FIRST_STEP",
]

#: Default ``level``: stop once the predicted class's cross entropy is below 0.1
#: (``p_c > 0.905``). Choose it on validation data with :func:`choose_level`.
DEFAULT_LEVEL = 0.1
#: Default rate in condition 2 (Eq. 10). ``kappa = 0`` asks only that ``V_c`` does not rise.
DEFAULT_KAPPA = 1.0
#: Candidate levels of :func:`choose_level`: geometric from 1e-4 to ``log 2`` (the largest
#: level for which the cross-entropy sublevel set has a unique predicted class).
DEFAULT_LEVELS: tuple[float, ...] = tuple(1e-4 * (math.log(2.0) / 1e-4) ** (i / 40) for i in range(41))
#: ``"auto"``: RK4 with the model's own ``fixed_steps`` when it has them, dopri5 otherwise.
SOLVERS = ("auto", "dopri5", "rk4")
#: Stopping rules: ``"lyapunov"`` (Eq. 10 with a level chosen on validation data),
#: ``"certified"`` (the logit gaps cannot close before ``t_end``: never a false stop) and
#: ``"either"`` (stop when one of them fires).
RULES = ("lyapunov", "certified", "either")
#: The certified rule's bound: ``"global"`` (:mod:`lyapunov_plugin.speed`, the field's
#: fastest direction anywhere) or ``"local"`` (:mod:`lyapunov_plugin.local_bound`, from the
#: current state: earlier stops, RK4 with an ``ODEModel``'s ``MLPDynamics`` only).
BOUNDS = ("global", "local")
#: ``first_step=TORCHDIFFEQ_FIRST_STEP``: torchdiffeq's first-step estimate, cap included.
TORCHDIFFEQ_FIRST_STEP = "torchdiffeq"
#: Accepted plus rejected steps one example may take before the solve is abandoned
#: (diffrax's ``max_steps``).
DEFAULT_MAX_STEPS = 4096


@dataclass(frozen=True)
class AnytimePrediction:
    """Result of :func:`anytime_predict` (the Eq. 10 stopping rule): one entry per example, in the input's order.

    Attributes:
        logits: ``psi(eta)`` at the stopping state, ``(B, m)`` (regression: the readout's
            output shape, ``(B, k, ...)``).
        stop_time: the time each example stopped at, ``(B,)`` (``t_end`` if it never did).
        nfe: vector-field evaluations of that example (row evaluations), ``(B,)`` int64.
        converged: whether the stopping rule fired before ``t_end``, ``(B,)`` bool.
        steps: accepted solver steps per example, ``(B,)`` int64.
        rejected_steps: rejected dopri5 steps per example (0 for RK4), ``(B,)`` int64.
        potential: ``V_c`` at the stopping state for the predicted class ``c``, ``(B,)``;
            for regression the RMS speed of the output, ``RMS(dpsi/dt)`` (the rule's bound
            on the distance to the target is ``2 potential / kappa``; 0 at ``t_end`` with RK4,
            where the field is not evaluated).
        t_end: the horizon integrated towards.
        solver: ``"dopri5"`` or ``"rk4"``.
        field_calls: batched calls of ``model.vector_field`` (``None`` when the result was
            replayed from an :class:`AnytimeTrace`, which has no batch of its own).
        regression: the result of the regression rule (``potential=MSEPotential()``):
            ``logits`` are the predicted values.
    """

    logits: Tensor
    stop_time: Tensor
    nfe: Tensor
    converged: Tensor
    steps: Tensor
    rejected_steps: Tensor
    potential: Tensor
    t_end: float
    solver: str
    field_calls: Optional[int] = None
    regression: bool = False

    @property
    def prediction(self) -> Tensor:
        """Predicted classes ``argmax psi(eta)``, ``(B,)`` (for regression: the outputs)."""
        return self.logits if self.regression else self.logits.argmax(-1)

    @property
    def total_nfe(self) -> int:
        """Row evaluations of the whole batch (what a batch-shrinking solve pays)."""
        return int(self.nfe.sum())

    @property
    def mean_nfe(self) -> float:
        """Mean vector-field evaluations per example."""
        return float(self.nfe.double().mean())

    @property
    def max_nfe(self) -> int:
        """Evaluations of the slowest example (what a fixed-batch solve would pay per row)."""
        return int(self.nfe.max())

    @property
    def converged_fraction(self) -> float:
        """Fraction of examples the rule stopped before ``t_end``."""
        return float(self.converged.double().mean())

    @property
    def mean_stop_time(self) -> float:
        """Mean stopping time."""
        return float(self.stop_time.double().mean())

    def false_stops(self, reference: Tensor, tolerance: Optional[float] = None) -> Tensor:
        """``(B,)`` bool: examples whose stopped prediction differs from ``reference``
        (predicted classes ``(B,)`` or logits ``(B, m)`` at ``t_end``, e.g. of a full solve).

        For regression, ``reference`` holds the outputs at ``t_end`` and a stop is false when
        the RMS difference of the outputs exceeds ``tolerance`` (required there, and only
        there)."""
        check_tensor("reference", reference, min_ndim=1)
        if self.regression:
            if tolerance is None:
                raise ValueError("tolerance is required for a regression prediction (the RMS deviation allowed)")
            tolerance = check_non_negative("tolerance", tolerance)
            check_shape("reference", reference, self.logits.shape, "the shape of the stopped outputs")
            deviation = (self.logits - reference.to(self.logits)).flatten(1).pow(2).mean(-1).sqrt()
            return deviation > tolerance
        if tolerance is not None:
            raise ValueError(
                f"tolerance applies to regression predictions (potential=MSEPotential()) only, got {tolerance!r}"
            )
        labels = reference.argmax(-1) if reference.ndim == 2 else reference
        if labels.shape != self.prediction.shape:
            raise ValueError(
                f"reference must hold one prediction per example ({self.prediction.shape[0]}), "
                f"got shape {tuple(reference.shape)}"
            )
        return self.prediction != labels.to(self.prediction.device)


@dataclass(frozen=True)
class _Settings:
    solver: str
    steps: int
    rtol: float
    atol: float
    t_end: float
    max_steps: int
    first_step: Optional[float] = None
    #: The first-step estimate keeps torchdiffeq's ``100 h0`` cap from a zero state.
    cap_from_zero: bool = False


@dataclass(frozen=True)
class _Rule:
    level: float
    kappa: float
    patience: int
    potential: Potential
    #: The regression rule (``MSEPotential``): stop when ``2 RMS(dpsi/dt) / kappa < level``.
    regression: bool = False
    #: One of :data:`RULES`.
    kind: str = "lyapunov"
    #: The model's logit-rate bound (:mod:`lyapunov_plugin.speed`) and the solver's gain,
    #: for the certified rule (and, in a trace, to replay it).
    bound: Optional[LogitRateBound] = None
    gain: float = 1.0
    #: The most steps the solver may still take (rk4: ``steps``; dopri5: ``max_steps``), for
    #: the certified rule's rounding slack.
    step_cap: int = 0
    #: The bound local to the current state (:mod:`lyapunov_plugin.local_bound`): RK4 solves
    #: of an ``ODEModel`` with ``MLPDynamics`` only; ``None`` otherwise.
    local: Optional[LocalRateBound] = None

    @property
    def certifies(self) -> bool:
        return self.kind != "lyapunov"

    def fires(self, value: Tensor, derivative: Tensor) -> Tensor:
        """Where the Lyapunov rule holds at checked states (``value``/``derivative`` as :class:`_Checks`)."""
        if self.level <= 0:
            return torch.zeros_like(value, dtype=torch.bool)
        if self.regression:
            return 2.0 * value < self.level * self.kappa
        return (value < self.level) & (derivative + self.kappa * value <= 0)

    def certified(self, logits: Tensor, t: Tensor, t_end: float, state_scale: Tensor) -> Tensor:
        """Where the certified rule holds (the class at ``t_end`` is proven)."""
        assert self.bound is not None  # set by _with_bound whenever the rule certifies
        return certified_stops(
            logits, t, t_end, self.bound, self.gain, state_scale=state_scale, max_steps=self.step_cap
        )


def _check_settings(
    model: LyapunovModel,
    *,
    solver: Any,
    steps: Any,
    rtol: Any,
    atol: Any,
    t_end: Any,
    max_steps: Any,
    first_step: Any = None,
) -> _Settings:
    check_choice("solver", solver, SOLVERS)
    fixed = getattr(model, "fixed_steps", None)
    if solver == "auto":
        solver = "rk4" if steps is not None or isinstance(fixed, int) else "dopri5"
    if solver == "rk4":
        if steps is None:
            if not isinstance(fixed, int):
                raise ValueError(
                    "steps is required with solver='rk4' for a model without fixed_steps "
                    f"(got fixed_steps={fixed!r}); pass e.g. steps=20"
                )
            steps = fixed
        steps = check_positive_int("steps", steps)
    elif steps is not None:
        raise ValueError(f"steps applies to solver='rk4' only, got steps={steps!r} with solver={solver!r}")
    cap_from_zero = False
    if first_step is not None:
        if solver != "dopri5":
            raise ValueError(f"first_step applies to solver='dopri5' only, got solver={solver!r}")
        if isinstance(first_step, str):
            if first_step != TORCHDIFFEQ_FIRST_STEP:
                raise ValueError(
                    f"first_step must be None, a positive float or {TORCHDIFFEQ_FIRST_STEP!r}, got {first_step!r}"
                )
            first_step, cap_from_zero = None, True
        else:
            first_step = check_positive("first_step", first_step)
    return _Settings(
        solver=solver,
        steps=0 if steps is None else steps,
        rtol=check_positive("rtol", rtol),
        atol=check_positive("atol", atol),
        t_end=horizon(model) if t_end is None else check_positive("t_end", t_end),
        max_steps=check_positive_int("max_steps", max_steps),
        first_step=first_step,
        cap_from_zero=cap_from_zero,
    )


def _check_rule(level: Any, kappa: Any, patience: Any, potential: Any, rule: Any = "lyapunov") -> _Rule:
    if potential is None:
        potential = CrossEntropyPotential()
    if not isinstance(potential, Potential):
        raise TypeError(f"potential must be a lyapunov_plugin Potential, got {type(potential).__name__}")
    check_choice("rule", rule, RULES)
    # A regression output has no predicted class to score V at: MSEPotential gets the
    # label-free regression rule instead (module docstring).
    regression = isinstance(potential, MSEPotential)
    if rule != "lyapunov" and regression:
        raise ValueError(
            f"rule={rule!r} applies to classification (logit gaps); with potential=MSEPotential() use rule='lyapunov'"
        )
    if rule == "certified":
        if level is not None:
            raise ValueError(
                f"level applies to rule='lyapunov' or 'either', got level={level!r} with rule='certified' "
                "(the certified rule has no setting)"
            )
        level = 0.0
    if level is None:
        if regression:
            raise ValueError(
                "level is required with potential=MSEPotential(): the RMS distance to the target, in output "
                "units, below which an example may stop (choose it with choose_level(..., tolerance=...))"
            )
        level = DEFAULT_LEVEL
    kappa, level = check_non_negative("kappa", kappa), check_non_negative("level", level)
    if regression and kappa == 0.0 and level > 0.0:  # level 0: the rule is off, kappa unused
        raise ValueError(
            "kappa must be > 0 with potential=MSEPotential(): the regression rule's bound 2 RMS(dpsi/dt) / kappa "
            "is infinite at kappa = 0, so no example could stop (use the kappa the model was trained with)"
        )
    return _Rule(
        level=level,
        kappa=kappa,
        patience=check_positive_int("patience", patience),
        potential=potential,
        regression=regression,
        kind=rule,
    )


def _with_bound(
    rule: _Rule, model: LyapunovModel, settings: _Settings, *, required: bool, local: bool = False
) -> tuple[_Rule, str]:
    """``rule`` with the model's logit-rate bound attached (:mod:`lyapunov_plugin.speed`), and
    why there is none (``""`` when there is). Call it in eval mode without gradients: a
    parametrised weight is then read as inference computes it.

    ``required``: raise a ``ValueError`` when the model has none (the certified rule asked
    for); otherwise return ``rule`` unchanged (a trace records what it can). ``local``: also
    attach the bound local to the state (``bound="local"``; a ``ValueError`` where it does
    not apply)."""
    if rule.regression:
        return rule, "rule='certified' applies to classification (logit gaps), not to potential=MSEPotential()"
    try:
        bound = logit_rate_bound(model, "rule='certified'")
    except NotImplementedError as error:
        if required:
            raise ValueError(str(error)) from None
        return rule, str(error)
    cap = settings.steps if settings.solver == "rk4" else settings.max_steps
    found = None
    if local:
        if settings.solver != "rk4":
            raise ValueError(
                f"bound='local' needs the fixed-step RK4 solver (solver='rk4', or 'auto' on a model with fixed_steps), "
                f"got solver={settings.solver!r}: dopri5's stage weights have both signs, so only the global bound "
                "holds for every step sequence it may take"
            )
        found = local_rate_bound(model, bound)
        if found is None:
            raise ValueError(
                "bound='local' needs an ODEModel whose dynamics are lyapunov_plugin.blocks.MLPDynamics made of "
                "nn.Linear and monotone elementwise layers (not Softplus), without forward hooks, got "
                f"{type(model).__name__}; use bound='global'"
            )
    return replace(rule, bound=bound, gain=solver_gain(settings.solver), step_cap=cap, local=found), ""


def _select(context: Context, rows: Tensor) -> Context:
    return None if context is None else context[rows]


@dataclass
class _Checks:
    """``V_c``, ``dV_c/dt`` and the logits at one batch of checked states."""

    logits: Tensor
    value: Tensor
    derivative: Tensor
    #: ``|eta|_inf`` per state (the certified rule's rounding slack).
    scale: Tensor
    #: Where the local bound proves the class (:mod:`lyapunov_plugin.local_bound`; ``None``: not checked).
    local: Optional[Tensor] = None


class _Recorder:
    """Every checked state of a solve (rows, times, cumulative NFE, logits, ``V_c``, ``dV_c/dt``)."""

    def __init__(self) -> None:
        self.parts: list[tuple[Tensor, ...]] = []

    def add(self, rows: Tensor, t: Tensor, nfe: int, checks: _Checks) -> None:
        count = torch.full_like(rows, nfe)
        local = torch.zeros_like(rows, dtype=torch.bool) if checks.local is None else checks.local
        self.parts.append((rows, t.clone(), count, checks.logits, checks.value, checks.derivative, checks.scale, local))


class _Solve:
    """The shrinking batch of one anytime solve (see :func:`anytime_predict`).

    Bookkeeping that costs nothing per row: every row still active has been evaluated by
    every call of the field so far (all rows start together and stopped rows leave), so a
    row's NFE is the number of calls when it leaves; and every active row has taken the same
    number of (accepted or rejected) steps, so its rejected steps are that count minus its
    accepted ones. Finished rows are collected and written to the output once, at the end.
    """

    def __init__(
        self, model: LyapunovModel, x: Tensor, settings: _Settings, rule: _Rule, recorder: Optional[_Recorder]
    ):
        self.model, self.settings, self.rule, self.recorder = model, settings, rule, recorder
        context, eta0 = model.encode(x)
        if context is not None and not isinstance(context, Tensor):
            raise TypeError(
                "anytime_predict needs the model's context to be a tensor with one row per example "
                f"(or None) so that stopped rows can leave the batch, got {type(context).__name__}"
            )
        if isinstance(context, Tensor) and (context.ndim == 0 or context.shape[0] != eta0.shape[0]):
            raise ValueError(
                f"the model's context must have one row per example ({eta0.shape[0]}), got shape {tuple(context.shape)}"
            )
        batch, device, dtype = eta0.shape[0], eta0.device, eta0.dtype
        self.batch = batch
        # The readout resolved once (identity / linear get their closed-form JVP every step).
        self.readout = readout_of(model.readout)
        self.field_calls = 0
        self.attempts = 0  # accepted + rejected steps of every active row
        # Finished rows: (rows, logits, time, accepted steps, V_c, converged, nfe, attempts).
        self.done: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]] = []
        # The active rows (everything below is indexed like `rows`).
        self.rows = torch.arange(batch, device=device)
        self.context = context
        self.eta = eta0
        self.t = torch.zeros(batch, dtype=dtype, device=device)
        self.steps = torch.zeros(batch, dtype=torch.long, device=device)
        self.streak: Optional[Tensor] = (
            torch.zeros(batch, dtype=torch.long, device=device) if rule.patience > 1 else None
        )
        self.h = torch.zeros(batch, dtype=dtype, device=device)
        self.k1 = eta0
        self.check_rule = rule.level > 0 or rule.certifies or recorder is not None
        if rule.bound is not None:  # the bound's matrices on the state's device, once
            bound = replace(
                rule.bound,
                pairwise=rule.bound.pairwise.to(device=device, dtype=dtype),
                readout_l1=rule.bound.readout_l1.to(device=device, dtype=dtype),
            )
            local = None if rule.local is None else rule.local.to(device)
            self.rule = rule = replace(rule, bound=bound, local=local)
        # RK4 steps still to take after the current state (the local bound's horizon).
        self.steps_left = settings.steps
        # Outputs of the field's last layer, one per evaluation (while the bound is used).
        self.seen: Optional[list[Tensor]] = None
        self.bound_error = ""  # why a trace lost its bound during the solve

    def field(self, eta: Tensor, t: Tensor) -> Tensor:
        """``f`` on the active rows; every call evaluates every active row once."""
        self.field_calls += 1
        velocity = self.model.vector_field(eta, self.context, t)
        seen, bound = self.seen, self.rule.bound
        if seen is not None and bound is not None:
            # The bound is on the output of the field's last layer: check, at every call, that
            # this is what the model returns as its velocity (not a rescaled or post-processed copy).
            out = seen[-1] if seen else None  # a reused last layer runs more than once: its last output
            seen.clear()
            same = out is velocity or (
                out is not None
                and isinstance(velocity, Tensor)
                and out.shape == velocity.shape
                and torch.equal(out, velocity)
            )
            if not same:
                if not self.rule.certifies:  # a trace recording what it can: no certified replay
                    self.rule, self.seen = replace(self.rule, bound=None), None
                    self.bound_error = "the model's velocity is not the output of its field's last layer"
                else:
                    raise ValueError(
                        f"rule={self.rule.kind!r}: the model's velocity is not the output of its field's last layer "
                        f"({type(bound.module).__name__}), so the bound on the field does not bound it"
                    )
        return check_velocity(velocity, eta)

    def checks(self, eta: Tensor, velocity: Tensor) -> _Checks:
        """Eq. (10)'s two terms for the predicted class at states ``eta`` with ``f = velocity``
        (regression: the RMS speed of the output, and zeros)."""
        output, output_velocity = _readout_jvp(self.readout, eta, velocity)
        if self.rule.regression:
            if output.ndim < 2:
                raise ValueError(
                    "potential=MSEPotential() needs readout outputs of shape (B, k) (one row per example), got "
                    f"shape {tuple(output.shape)}; give a 1-output regressor a (B, 1) readout"
                )
            speed = output_velocity.flatten(1).pow(2).mean(-1).sqrt()
            return _Checks(output, speed, torch.zeros_like(speed), torch.zeros_like(speed))
        value, derivative = self.rule.potential.value_and_derivative(output, output.argmax(-1), output_velocity)
        return _Checks(output, value, derivative, eta.flatten(1).abs().amax(-1))

    def check(self, accepted: Optional[Tensor], interior: bool) -> tuple[Optional[Tensor], Optional[_Checks]]:
        """The rule at the active states (``accepted``: which took a step; ``None``: all).

        Returns which rows stop now (``None``: none can) and the checks (``None`` when the
        rule is off and nothing is recorded: :meth:`finish` then checks only the rows that finish)."""
        if not self.check_rule:
            return None, None
        checks = self.checks(self.eta, self.k1)
        if interior and self.rule.local is not None and self.rule.bound is not None and not self.rule.regression:
            checks.local = local_certified_stops(
                self.rule.local,
                self.rule.bound,
                self.eta,
                self.context,
                self.t,
                checks.logits,
                steps_left=self.steps_left,
                step=self.settings.t_end / self.settings.steps,
                max_steps=self.rule.step_cap,
            )
        if self.recorder is not None:
            if accepted is None:
                self.recorder.add(self.rows, self.t, self.field_calls, checks)
            else:
                self.recorder.add(self.rows[accepted], self.t[accepted], self.field_calls, _subset(checks, accepted))
        if self.rule.level <= 0 and not self.rule.certifies:
            return None, checks
        fired = self.rule.fires(checks.value, checks.derivative)
        if accepted is not None:
            fired &= accepted
        if self.streak is not None:
            streak = (self.streak + 1) * fired
            self.streak = streak if accepted is None else torch.where(accepted, streak, self.streak)
            fired = self.streak >= self.rule.patience
        if self.rule.certifies:  # proven stops need no patience
            proven = self.rule.certified(checks.logits, self.t, self.settings.t_end, checks.scale)
            if checks.local is not None:
                proven = proven | checks.local
            fired = fired | (proven if accepted is None else proven & accepted)
        return (fired if interior else None), checks

    def finish(self, done: Optional[Tensor], converged: Union[Tensor, bool], checks: Optional[_Checks]) -> None:
        """Record the finished rows' results and drop them from the active batch."""
        if done is None:
            index = None
        else:
            index = done.nonzero()[:, 0]
            if not index.numel():
                return
        pick = (lambda v: v) if index is None else (lambda v: v.index_select(0, index))
        rows = pick(self.rows)
        pick_checks = pick
        if checks is None:  # the rule is off: V_c and the logits only at the rows that finish
            checks, pick_checks = self.checks(pick(self.eta), pick(self.k1)), (lambda v: v)
        self.done.append(
            (
                rows,
                pick_checks(checks.logits),
                pick(self.t),
                pick(self.steps),
                pick_checks(checks.value),
                pick(converged)
                if isinstance(converged, Tensor)
                else torch.full_like(rows, converged, dtype=torch.bool),
                torch.full_like(rows, self.field_calls),
                torch.full_like(rows, self.attempts),
            )
        )
        if index is None or index.numel() == self.rows.numel():
            self.rows = self.rows[:0]
            return
        keep = (~done).nonzero()[:, 0]  # type: ignore[operator]
        self.rows, self.eta, self.k1 = (v.index_select(0, keep) for v in (self.rows, self.eta, self.k1))
        self.t, self.h, self.steps = (v.index_select(0, keep) for v in (self.t, self.h, self.steps))
        if self.streak is not None:
            self.streak = self.streak.index_select(0, keep)
        if self.context is not None:
            self.context = self.context.index_select(0, keep)

    def run(self) -> AnytimePrediction:
        if self.rule.bound is None:
            return self._run()
        with verified_field_output(self.rule.bound) as seen:
            self.seen = seen
            try:
                return self._run()
            finally:
                self.seen = None

    def _run(self) -> AnytimePrediction:
        settings = self.settings
        self.k1 = self.field(self.eta, self.t)
        stop, checks = self.check(None, True)
        if stop is not None:
            self.finish(stop, True, checks)
        if settings.solver == "dopri5":
            self._dopri5()
        else:
            self._rk4()
        return self._result()

    def _result(self) -> AnytimePrediction:
        rows, logits, time, steps, value, converged, nfe, attempts = (
            torch.cat(part) for part in zip(*self.done, strict=True)
        )

        def place(v: Tensor) -> Tensor:
            out = v.new_empty((self.batch, *v.shape[1:]))
            out[rows] = v
            return out

        steps = place(steps)
        return AnytimePrediction(
            logits=place(logits),
            stop_time=place(time),
            nfe=place(nfe),
            converged=place(converged),
            steps=steps,
            rejected_steps=place(attempts) - steps,
            potential=place(value),
            t_end=self.settings.t_end,
            solver=self.settings.solver,
            field_calls=self.field_calls,
            regression=self.rule.regression,
        )

    def _dopri5(self) -> None:
        settings, t_end = self.settings, self.settings.t_end
        if self.rows.numel():
            if settings.first_step is not None:
                self.h = torch.full_like(self.t, settings.first_step)
            else:
                self.h = initial_step(
                    self.field,
                    self.t,
                    self.eta,
                    self.k1,
                    rtol=settings.rtol,
                    atol=settings.atol,
                    cap_from_zero=settings.cap_from_zero,
                )
        while self.rows.numel():
            if self.attempts >= settings.max_steps:
                raise SolverError(
                    f"an example needed more than max_steps={settings.max_steps} dopri5 steps in anytime_predict "
                    "(a stiff or diverging field); raise max_steps or loosen rtol/atol"
                )
            remaining = t_end - self.t
            last = self.h >= remaining
            h = torch.where(last, remaining, self.h)
            eta_new, error, k7 = dopri5_step(self.field, self.t, self.eta, self.k1, h)
            accepted, self.h, squared = control(error, self.eta, eta_new, h, rtol=settings.rtol, atol=settings.atol)
            self.attempts += 1
            # One synchronisation per step: NaN/Inf anywhere, and whether every row was accepted.
            finite, everyone = (bool(v) for v in torch.stack([squared.sum().isfinite(), accepted.all()]).tolist())
            if not finite:
                raise SolverError(
                    "the vector field returned NaN/Inf during anytime_predict's dopri5 step "
                    f"(at t in [{float(self.t.min()):.4g}, {float(self.t.max()):.4g}])"
                )
            if everyone:
                self.eta, self.k1 = eta_new, k7
                # The last step lands on t_end exactly, not on t + h with its rounding.
                self.t = torch.where(last, t_end, self.t + h)
                self.steps += 1
            else:
                grid = per_row(accepted, self.eta)
                self.eta = torch.where(grid, eta_new, self.eta)
                self.k1 = torch.where(grid, k7, self.k1)
                self.t = torch.where(accepted, torch.where(last, t_end, self.t + h), self.t)
                self.steps += accepted
            reached = accepted & last
            stop, checks = self.check(None if everyone else accepted, True)
            if stop is not None:
                stop &= ~last
                self.finish(stop | reached, stop, checks)
            else:
                self.finish(reached, False, checks)

    def _rk4(self) -> None:
        settings = self.settings
        h = settings.t_end / settings.steps
        for i in range(1, settings.steps + 1):
            if not self.rows.numel():
                return
            step = torch.full_like(self.t, h)
            self.eta = rk4_step(self.field, self.t, self.eta, self.k1, step)
            if not bool(self.eta.isfinite().all()):  # one synchronisation per step, as dopri5's
                raise SolverError(
                    "the vector field returned NaN/Inf during anytime_predict's RK4 step "
                    f"(at t = {float(self.t.max()):.4g})"
                )
            self.t = torch.full_like(self.t, settings.t_end if i == settings.steps else i * h)
            self.steps += 1
            self.attempts += 1
            self.steps_left = settings.steps - i
            if i == settings.steps:
                # No evaluation at t_end: nothing would use it. V_c is reported with f = 0.
                self.finish(None, False, self.checks(self.eta, torch.zeros_like(self.eta)))
                return
            self.k1 = self.field(self.eta, self.t)
            stop, checks = self.check(None, True)
            if stop is not None:
                self.finish(stop, True, checks)


def _subset(checks: _Checks, rows: Tensor) -> _Checks:
    local = None if checks.local is None else checks.local[rows]
    return _Checks(checks.logits[rows], checks.value[rows], checks.derivative[rows], checks.scale[rows], local)


def _prepare(model: Any, x: Any) -> tuple[LyapunovModel, Tensor]:
    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=1)
    device = parameter_device(model)
    return model, (x.to(device) if device is not None else x)


def anytime_predict(
    model: Any,
    x: Tensor,
    *,
    level: Optional[float] = None,
    kappa: float = DEFAULT_KAPPA,
    patience: int = 1,
    potential: Optional[Potential] = None,
    solver: str = "auto",
    steps: Optional[int] = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    t_end: Optional[float] = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    first_step: Union[float, str, None] = None,
    rule: str = "lyapunov",
    bound: str = "global",
) -> AnytimePrediction:
    """Predict with each example integrated only until the Lyapunov stopping rule fires.

    The rule (module docstring; Eq. 10, Theorem 2): at an accepted state at ``t < t_end``,
    with the predicted class ``c = argmax psi(eta)``, stop when ``V_c(eta) < level`` and
    ``dV_c/deta . f + kappa V_c(eta) <= 0`` on ``patience`` consecutive accepted states.
    Guaranteed: the stopped class is the predicted class at the stopping state, and (for the
    cross entropy with ``level <= log 2``) the unique class of the sublevel set. Not
    guaranteed: that the class at ``t_end`` is the same; that holds only if Eq. (10) holds
    on the whole sublevel set ``{V_c < level}`` over ``[t, t_end]``, which is not checked.
    Choose ``level`` on validation data with :func:`choose_level`.

    Arguments:
        model: any model ``LyapunovTrainer`` accepts (torchdyn, torchdiffeq, a
            :class:`~lyapunov_plugin.LyapunovModel`); it is put in eval mode for the call
            and restored afterwards; no gradients are recorded.
        x: inputs ``(B, ...)``; moved to the model's parameter device.
        level: stop only below this potential; ``0`` disables the rule (a full solve).
            ``None``: :data:`DEFAULT_LEVEL` (classification); required for regression.
        kappa: the rate of Eq. (10) in the rule, ``>= 0``.
        patience: consecutive accepted states the rule must hold on.
        potential: ``V`` of Eq. (11), evaluated with the predicted class as the target;
            default :class:`~lyapunov_plugin.CrossEntropyPotential`. With
            :class:`~lyapunov_plugin.MSEPotential` (regression: no predicted class to score)
            the rule is the label-free bound of the module docstring instead: stop when
            ``2 RMS(dpsi/dt) / kappa < level``, ``level`` in output units (pass the ``kappa``
            the model was trained with for the tightest bound that Eq. 10 justifies).
        solver: ``"dopri5"`` (per-example adaptive Dormand-Prince 5(4)), ``"rk4"``
            (``steps`` fixed steps of ``t_end / steps``) or ``"auto"``: RK4 with the model's
            own ``fixed_steps`` when it has them (or when ``steps`` is given), dopri5 otherwise.
        steps: RK4 steps over ``[0, t_end]``.
        rtol, atol: dopri5 tolerances (docs/evaluation.md's NFE protocol uses 1e-3).
        t_end: the horizon (default the model's, 1 in the paper).
        max_steps: accepted plus rejected dopri5 steps allowed per example.
        first_step: dopri5's first step size. ``None``: the two-evaluation estimate of
            Hairer-Norsett-Wanner II.4 (:func:`lyapunov_plugin.adaptive.initial_step`), as
            torchdiffeq's default, except from a zero state (the paper's ``eta(0) = 0``):
            there torchdiffeq caps the first step at 1e-4 whatever the dynamics, and with
            the tenfold growth limit an example needs 24 evaluations to reach ``t = 0.1``;
            this solver takes the book's derivative-based estimate instead (still error
            controlled). ``"torchdiffeq"``: the capped estimate, so that each example takes
            exactly torchdiffeq's steps. A float: that step (saves the estimate's evaluation).
        rule: ``"lyapunov"`` (the rule above), ``"certified"`` or ``"either"``. The certified
            rule (:mod:`lyapunov_plugin.speed`) stops an example once no logit gap can close
            before ``t_end``: for a field ending in a linear layer after a bounded activation
            (``tanh``, ``sigmoid``) and a linear or identity readout, ``|d(z_c - z_j)/dt| <=
            r_cj`` everywhere, and the solver moves the gap by at most ``(t_end - t) G r_cj``
            (``G``: 1 for RK4, 1.645 for dopri5), so it stops where ``z_c - z_j`` exceeds that
            for every ``j``. Guaranteed: the stopped class is the solver's class at ``t_end``
            (no false stop, up to rounding), with no level, label or validation split; it
            fires late unless the margins are large. ``level`` must be ``None`` with it.
            ``"either"`` stops at the first of the two: its false stops are among the
            Lyapunov rule's at the same ``level``, and it never stops later. Classification
            only; models whose field or readout are not of that form get a ``ValueError``.
        bound: the certified rule's bound (``rule="certified"`` or ``"either"``):
            ``"global"`` (above) or ``"local"`` (:mod:`lyapunov_plugin.local_bound`): also
            stop where a bound started from the current state's own gap rate, and the
            deviation the field's layers allow as the state and time move, proves the class;
            the same guarantee, earlier stops, but each check costs the arithmetic of about
            ``2 log2(steps left)`` passes through the field's layers, not counted in ``nfe``
            (on small fields more wall clock than the evaluations it saves). RK4 on an
            ``ODEModel`` with ``MLPDynamics`` only (a ``ValueError`` otherwise).

    Returns:
        An :class:`AnytimePrediction`.

    Raises:
        SolverError: the field returned NaN/Inf, or an example needed more than
            ``max_steps`` steps.
    """
    model, x = _prepare(model, x)
    settings = _check_settings(
        model,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        t_end=t_end,
        max_steps=max_steps,
        first_step=first_step,
    )
    checked = _check_rule(level, kappa, patience, potential, rule)
    local = _check_bound(bound, rule)
    with EvalMode(model), torch.no_grad():
        if checked.certifies:
            checked, _ = _with_bound(checked, model, settings, required=True, local=local)
        return _Solve(model, x, settings, checked, None).run()


def _check_bound(bound: Any, rule: str) -> bool:
    """Whether ``bound`` asks for the local bound; it applies to the certified rule only."""
    check_choice("bound", bound, BOUNDS)
    if bound == "local" and rule == "lyapunov":
        raise ValueError("bound='local' applies to rule='certified' or 'either', got rule='lyapunov'")
    return bound == "local"


@dataclass(frozen=True)
class AnytimeTrace:
    """Every accepted state of a full per-example solve, to replay the rule at any setting.

    Because each example's steps do not depend on the other rows, stopping an example
    only truncates its own path: :meth:`apply` gives what :func:`anytime_predict` would
    return for any ``level``, ``kappa`` and ``patience`` without integrating again (used by
    :func:`choose_level` and for accuracy-vs-NFE curves).

    Attributes:
        logits, value, derivative, nfe, time: ``(B, K)``-padded per checked state
            (``K``: most checked states of any example), ``value = V_c``,
            ``derivative = dV_c/deta . f``, ``nfe`` cumulative evaluations at that state.
        valid: ``(B, K)`` which entries exist.
        last: ``(B,)`` index of each example's final state (at ``t_end``).
        final: the full solve, an :class:`AnytimePrediction` with the rule off.
        regression: recorded with ``MSEPotential`` (``value`` is the output's RMS speed).
        bound, gain, step_cap: the model's logit-rate bound, the solver's gain and its step
            cap, to replay ``rule="certified"`` (``bound`` is ``None`` when the model has none;
            ``bound_error`` says why).
        state_scale: ``(B, K)`` ``|eta|_inf`` per checked state (the rounding slack).
        local_certified: ``(B, K)`` where the bound local to the state proved the class
            (:mod:`lyapunov_plugin.local_bound`, RK4 solves of an ``ODEModel`` with
            ``MLPDynamics``), ``None`` where it does not apply.
    """

    logits: Tensor
    value: Tensor
    derivative: Tensor
    nfe: Tensor
    time: Tensor
    valid: Tensor
    last: Tensor
    final: AnytimePrediction
    regression: bool = False
    bound: Optional[LogitRateBound] = None
    gain: float = 1.0
    step_cap: int = 0
    state_scale: Optional[Tensor] = None
    bound_error: str = ""
    local_certified: Optional[Tensor] = None

    def apply(
        self,
        *,
        level: Optional[float] = None,
        kappa: float = DEFAULT_KAPPA,
        patience: int = 1,
        rule: str = "lyapunov",
        bound: str = "global",
    ) -> AnytimePrediction:
        """The anytime prediction for these rule settings (no integration); ``bound="local"``
        needs a trace recorded with ``anytime_trace(..., bound="local")``."""
        checked = _check_rule(level, kappa, patience, MSEPotential() if self.regression else None, rule)
        local = _check_bound(bound, rule)
        if local and self.local_certified is None:
            raise ValueError(
                "bound='local' cannot be replayed from this trace: record it with anytime_trace(..., bound='local')"
            )
        if checked.certifies:
            if self.bound is None:
                raise ValueError(
                    f"rule={rule!r} cannot be replayed from this trace: its model has no logit-rate bound "
                    f"({self.bound_error or 'none was recorded'})"
                )
            checked = replace(checked, bound=self.bound, gain=self.gain, step_cap=self.step_cap)
        batch, width = self.valid.shape
        interior = self.valid & (torch.arange(width, device=self.valid.device)[None, :] < self.last[:, None])
        fired = interior & checked.fires(self.value, self.derivative)
        scale = torch.zeros_like(self.time) if self.state_scale is None else self.state_scale
        proven = (
            interior & checked.certified(self.logits, self.time, self.final.t_end, scale)
            if checked.certifies
            else torch.zeros_like(fired)
        )
        if local:
            proven |= interior & self.local_certified  # type: ignore[operator]  # checked above
        streak = torch.zeros(batch, dtype=torch.long, device=fired.device)
        stop_at = self.last.clone()
        stopped = torch.zeros(batch, dtype=torch.bool, device=fired.device)
        for k in range(width):
            streak = (streak + 1) * fired[:, k]
            now = ~stopped & ((streak >= checked.patience) | proven[:, k])
            stop_at = torch.where(now, torch.full_like(stop_at, k), stop_at)
            stopped |= now
        index = stop_at[:, None]
        flat = self.logits.flatten(2)  # regression outputs may have several non-batch dimensions
        logits = flat.gather(1, index[:, :, None].expand(-1, 1, flat.shape[-1]))[:, 0]
        logits = logits.reshape(batch, *self.logits.shape[2:])
        steps = torch.where(stopped, stop_at, self.final.steps)
        return AnytimePrediction(
            logits=logits,
            stop_time=self.time.gather(1, index)[:, 0],
            nfe=self.nfe.gather(1, index)[:, 0],
            converged=stopped,
            steps=steps,
            rejected_steps=torch.where(stopped, torch.zeros_like(steps), self.final.rejected_steps),
            potential=self.value.gather(1, index)[:, 0],
            t_end=self.final.t_end,
            solver=self.final.solver,
            regression=self.regression,
        )

    def false_stop_rate(self, prediction: AnytimePrediction, tolerance: Optional[float] = None) -> float:
        """Fraction of examples whose stopped prediction differs from the full solve's
        (regression: by more than ``tolerance``, RMS over the outputs)."""
        return float(prediction.false_stops(self.final.logits, tolerance).double().mean())


def anytime_trace(
    model: Any,
    x: Tensor,
    *,
    potential: Optional[Potential] = None,
    solver: str = "auto",
    steps: Optional[int] = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    t_end: Optional[float] = None,
    max_steps: int = DEFAULT_MAX_STEPS,
    first_step: Union[float, str, None] = None,
    bound: str = "global",
) -> AnytimeTrace:
    """Solve to ``t_end`` per example (same solver as :func:`anytime_predict`) and record
    ``V_c``, ``dV_c/deta . f``, the logits and the cumulative NFE at every accepted state.

    Rejected steps before a stopping state are not separated out in the replay
    (:meth:`AnytimeTrace.apply` reports ``rejected_steps = 0`` for stopped examples; their
    ``nfe`` is exact). ``bound="local"`` also records where the bound local to the state
    proves the class (:func:`anytime_predict`'s ``bound``; a ``ValueError`` where it does
    not apply), to replay it with ``apply(rule=..., bound="local")``."""
    model, x = _prepare(model, x)
    settings = _check_settings(
        model,
        solver=solver,
        steps=steps,
        rtol=rtol,
        atol=atol,
        t_end=t_end,
        max_steps=max_steps,
        first_step=first_step,
    )
    rule = _check_rule(0.0, 0.0, 1, potential)
    check_choice("bound", bound, BOUNDS)
    recorder = _Recorder()
    with EvalMode(model), torch.no_grad():
        if bound == "local":
            if rule.regression:
                raise ValueError(
                    "bound='local' applies to classification (logit gaps), not to potential=MSEPotential()"
                )
            rule, bound_error = _with_bound(rule, model, settings, required=True, local=True)
        else:
            rule, bound_error = _with_bound(rule, model, settings, required=False)
        solve = _Solve(model, x, settings, rule, recorder)
        final = solve.run()
    rule = solve.rule  # without the bound if the model's velocity turned out not to be the field's
    if settings.solver == "rk4":
        # The last RK4 state has no velocity (no evaluation at t_end); record it as final.
        rows = torch.arange(final.logits.shape[0], device=final.logits.device)
        zeros = torch.zeros_like(final.potential)
        no = torch.zeros_like(rows, dtype=torch.bool)
        recorder.parts.append((rows, final.stop_time, final.nfe, final.logits, final.potential, zeros, zeros, no))
    rows, time, nfe, logits, value, derivative, scale, local = (
        torch.cat(part) for part in zip(*recorder.parts, strict=True)
    )
    # Stable sort by time, then by row: each row's states in time order.
    order = torch.argsort(time, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, time, nfe, logits, value, derivative, scale, local = (
        v[order] for v in (rows, time, nfe, logits, value, derivative, scale, local)
    )
    batch = final.logits.shape[0]
    counts = torch.bincount(rows, minlength=batch)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    column = torch.arange(rows.numel(), device=rows.device) - starts[rows]

    def pad(v: Tensor, fill: float) -> Tensor:
        out = v.new_full((batch, width, *v.shape[1:]), fill)
        out[rows, column] = v
        return out

    valid = torch.zeros(batch, width, dtype=torch.bool, device=rows.device)
    valid[rows, column] = True
    return AnytimeTrace(
        logits=pad(logits, 0.0),
        value=pad(value, math.inf),
        derivative=pad(derivative, 0.0),
        nfe=pad(nfe, 0),
        time=pad(time, settings.t_end),
        valid=valid,
        last=counts - 1,
        final=final,
        regression=rule.regression,
        bound=rule.bound,
        gain=rule.gain,
        step_cap=rule.step_cap,
        state_scale=pad(scale, 0.0),
        bound_error=solve.bound_error or bound_error,
        local_certified=pad(local, False) if rule.local is not None else None,
    )


def binomial_upper_bound(events: int, trials: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper confidence bound on a binomial rate.

    :func:`choose_level` uses it to bound the false-stop rate of the Eq. (10) stopping rule
    (Theorem 2) from a validation split.

    The ``p`` at which observing at most ``events`` in ``trials`` has probability
    ``1 - confidence``: with probability at least ``confidence`` the true rate is below it
    (exact, not an asymptotic approximation). ``events = 0`` gives
    ``1 - (1 - confidence)^(1 / trials)``. Solved by bisection on the binomial CDF (float64).

    Arguments:
        events: observed events (false stops), ``0 <= events <= trials``.
        trials: examples, ``>= 1``.
        confidence: in ``(0, 1)``.
    """
    trials = check_positive_int("trials", trials)
    if isinstance(events, bool) or not isinstance(events, int) or not 0 <= events <= trials:
        raise ValueError(f"events must be an int in [0, trials={trials}], got {events!r}")
    confidence = check_real("confidence", confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if events == trials:
        return 1.0
    tail = 1.0 - confidence

    def cdf(p: float) -> float:  # P(Binomial(trials, p) <= events)
        if p <= 0.0:
            return 1.0
        log_p, log_q = math.log(p), math.log1p(-p)
        terms = [
            math.lgamma(trials + 1)
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * log_p
            + (trials - k) * log_q
            for k in range(events + 1)
        ]
        top = max(terms)
        return math.exp(top) * sum(math.exp(t - top) for t in terms)

    # The root lies above k / n for confidence >= 1/2 (the usual case); below it otherwise.
    low, high = events / trials, 1.0
    if cdf(low) <= tail:
        low, high = 0.0, low
    for _ in range(100):  # the CDF falls in p; 100 halvings reach float64 resolution
        mid = 0.5 * (low + high)
        if cdf(mid) > tail:
            low = mid
        else:
            high = mid
    return high


@dataclass(frozen=True)
class LevelChoice:
    """What :func:`choose_level` chose, and the validation curve it chose from (the level
    of the Eq. (10) stopping rule of :func:`anytime_predict`).

    Attributes:
        level: the largest candidate such that it and every smaller candidate have a
            validation false-stop rate (or, with ``confidence``, an upper confidence bound)
            at most the target (``0.0``, the rule off, if the smallest does not).
        false_stop_rate, mean_nfe, converged_fraction: the validation numbers at ``level``.
        upper_bound: the Clopper-Pearson bound on the false-stop rate at ``level`` (``None``
            without ``confidence``, or when the rule is off).
        confidence: the confidence of the bound (``None``: the point estimate was used).
        curve: one ``(level, false_stop_rate, mean_nfe, converged_fraction)`` per candidate.
    """

    level: float
    false_stop_rate: float
    mean_nfe: float
    converged_fraction: float
    curve: tuple[tuple[float, float, float, float], ...]
    upper_bound: Optional[float] = None
    confidence: Optional[float] = None


def _smallest_certifying_split(confidence: float, rate_target: float) -> Optional[int]:
    """The smallest ``n`` whose zero-false-stop bound :func:`binomial_upper_bound` ``(0, n)``
    is at most ``rate_target`` (``None`` for a zero target, which no ``n`` certifies)."""
    if rate_target <= 0:
        return None
    # The closed form 1 - (1 - confidence)^(1/n) <= target, then the bound function's own
    # rounding: step up until it agrees (at most a few steps).
    n = max(1, math.ceil(math.log1p(-confidence) / math.log1p(-rate_target)))
    while n > 1 and binomial_upper_bound(0, n - 1, confidence) <= rate_target:
        n -= 1
    while binomial_upper_bound(0, n, confidence) > rate_target:
        n += 1
    return n


def choose_level(
    model: Any,
    x_val: Optional[Tensor],
    *,
    max_false_stop_rate: float = 0.005,
    confidence: Optional[float] = None,
    levels: Optional[Sequence[float]] = None,
    kappa: float = DEFAULT_KAPPA,
    patience: int = 1,
    potential: Optional[Potential] = None,
    solver: str = "auto",
    steps: Optional[int] = None,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    t_end: Optional[float] = None,
    trace: Optional[AnytimeTrace] = None,
    first_step: Union[float, str, None] = None,
    tolerance: Optional[float] = None,
    rule: str = "lyapunov",
) -> LevelChoice:
    """Choose the stopping rule's ``level`` on a validation split (never the test split).

    The rule is :func:`anytime_predict`'s: ``V_c < level`` and Eq. (10) at the current state
    (regression, ``potential=MSEPotential()``: ``2 RMS(dpsi/dt) / kappa < level``).

    A false stop is an example whose stopped prediction differs from its prediction at
    ``t_end`` (no labels needed). The candidates are tested in increasing order (fixed-sequence
    testing, as in Learn-then-Test, Angelopoulos et al. 2021): a candidate passes when its
    false-stop rate on ``x_val`` is at most ``max_false_stop_rate`` (with ``confidence``:
    when its one-sided Clopper-Pearson upper bound, :func:`binomial_upper_bound`, is), the
    walk stops at the first that fails, and the last pass is returned. With ``confidence``,
    and treating the test examples as draws from the validation distribution, the chosen
    level's true false-stop rate exceeds the target with probability at most
    ``1 - confidence``, the choice among the candidates included (each candidate is tested
    only if every smaller one passed, so no correction for their number is needed).
    A validation split of ``n``
    examples can certify the target only if ``1 - (1 - confidence)^(1/n)`` is below it
    (zero false stops): with ``confidence = 0.8`` and the 0.5% target that needs
    ``n >= 322``; smaller splits get the rule off (``level = 0``) and a ``UserWarning``
    that names the size needed, which is the price of the guarantee.

    Arguments:
        model, x_val: the trained model and validation inputs (both unused, and may be
            ``None``, when ``trace`` is given).
        max_false_stop_rate: the target, in ``[0, 1)``.
        confidence: ``None`` (the point estimate) or the bound's confidence in ``(0, 1)``.
        levels: candidates (default :data:`DEFAULT_LEVELS`, 1e-4 to ``log 2``; for
            regression 41 geometric levels from ``tolerance / 100`` to ``10 tolerance``).
        kappa, patience, potential, solver, steps, rtol, atol, t_end, first_step: as in
            :func:`anytime_predict` (use the same values there).
        trace: a precomputed :func:`anytime_trace` of ``x_val`` (then ``x_val`` is not
            integrated again).
        tolerance: regression only (``potential=MSEPotential()``, required there): a stop is
            false when the stopped outputs differ from those at ``t_end`` by more than this
            (RMS over the outputs).
        rule: ``"lyapunov"`` or ``"either"`` (the level of the Lyapunov part of
            :func:`anytime_predict`'s ``rule="either"``; its certified stops are never false,
            so a level can only pass more easily). ``"certified"`` has no level to choose.
    """
    check_choice("rule", rule, RULES)
    if rule == "certified":
        raise ValueError("rule='certified' has no level to choose (it has no setting); use 'lyapunov' or 'either'")
    rate_target = check_real("max_false_stop_rate", max_false_stop_rate)
    if not 0.0 <= rate_target < 1.0:
        raise ValueError(f"max_false_stop_rate must lie in [0, 1), got {rate_target}")
    if confidence is not None:
        confidence = check_real("confidence", confidence)
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be None or lie in (0, 1), got {confidence}")
    regression = trace.regression if trace is not None else isinstance(potential, MSEPotential)
    if trace is not None and potential is not None and isinstance(potential, MSEPotential) != trace.regression:
        raise ValueError(
            f"potential={type(potential).__name__}() does not match the trace, which was recorded "
            f"{'with' if trace.regression else 'without'} potential=MSEPotential() (pass the trace's potential, "
            "or none)"
        )
    if regression and rule != "lyapunov":
        raise ValueError(
            f"rule={rule!r} applies to classification (logit gaps); with potential=MSEPotential() use rule='lyapunov'"
        )
    if regression:
        if tolerance is None:
            raise ValueError(
                "tolerance is required for regression (potential=MSEPotential()): the RMS deviation from the "
                "output at t_end that counts as a false stop"
            )
        tolerance = check_positive("tolerance", tolerance)
    elif tolerance is not None:
        raise ValueError(f"tolerance applies to regression (potential=MSEPotential()) only, got {tolerance!r}")
    if levels is None:
        candidates = (
            tuple(tolerance * 1e-2 * 1e3 ** (i / 40) for i in range(41)) if tolerance is not None else DEFAULT_LEVELS
        )
    else:
        candidates = tuple(levels)
    if not candidates:
        raise ValueError("levels must hold at least one candidate level")
    candidates = tuple(sorted(check_non_negative("levels[i]", v) for v in candidates))
    if trace is None:
        if x_val is None:
            raise ValueError("choose_level needs x_val (validation inputs) or a precomputed trace, got neither")
        trace = anytime_trace(
            model,
            x_val,
            potential=potential,
            solver=solver,
            steps=steps,
            rtol=rtol,
            atol=atol,
            t_end=t_end,
            first_step=first_step,
        )
    if rule == "either" and trace.bound is None:
        raise ValueError(f"rule='either' needs the model's logit-rate bound, and it has none: {trace.bound_error}")
    n = int(trace.final.logits.shape[0])
    if confidence is not None and binomial_upper_bound(0, n, confidence) > rate_target:
        needed = _smallest_certifying_split(confidence, rate_target)
        warnings.warn(
            f"choose_level: {n} validation examples cannot certify max_false_stop_rate={rate_target:g} at "
            f"confidence={confidence:g} even with no false stop"
            + ("" if needed is None else f" (that needs at least {needed})")
            + "; the Lyapunov rule is off (level 0"
            + (", certified stops only" if rule == "either" else "")
            + "). Use a larger validation split, a larger target or a lower confidence.",
            UserWarning,
            stacklevel=2,
        )
    curve, counts = [], []
    for level in candidates:
        result = trace.apply(level=level, kappa=kappa, patience=patience, rule=rule)
        false = int(result.false_stops(trace.final.logits, tolerance).sum())
        curve.append((level, false / n, result.mean_nfe, result.converged_fraction))
        counts.append(false)
    # Fixed-sequence testing: walk up from the most conservative level and stop at the first
    # one that fails, so the chosen level is the last of an unbroken run of passes (with a
    # bound, this controls the chance of choosing a level over the target, with no
    # correction for the number of candidates).
    # Level 0: the Lyapunov rule off (with "either", the certified stops remain; measured, not assumed).
    off = trace.apply(level=0.0, kappa=kappa, patience=patience, rule=rule)
    off_rate = int(off.false_stops(trace.final.logits, tolerance).sum()) / n
    best, best_bound = (0.0, off_rate, off.mean_nfe, off.converged_fraction), None
    for row, false in zip(curve, counts, strict=True):
        # The bound only for the candidates the walk reaches (it costs O(false stops) per
        # bisection step on a large split).
        bound = None if confidence is None else binomial_upper_bound(false, n, confidence)
        if (row[1] if bound is None else bound) > rate_target:
            break
        best, best_bound = row, bound
    return LevelChoice(
        level=best[0],
        false_stop_rate=best[1],
        mean_nfe=best[2],
        converged_fraction=best[3],
        curve=tuple(curve),
        upper_bound=best_bound,
        confidence=confidence,
    )
