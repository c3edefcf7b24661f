"""An opt-in contraction lever: the Lyapunov condition for the *difference* of two solutions.

The default recipe enforces Eq. (10) for ``V_y(eta)``; it says where one trajectory goes,
not whether nearby trajectories stay near it. With the cross-entropy potential the logits
are driven outward and the flow can *expand* around a trajectory, which is what makes
affine bounds through the unrolled solver (:func:`~lyapunov_plugin.certify`) wide.

Incremental stability is the Lyapunov condition of Eq. (10) for the variational system
``d(delta)/dt = J_eta f(eta, x, t) delta`` with the quadratic potential
``W(delta) = |delta|^2``: ``dW/dt = 2 delta^T J_eta f delta <= -2 c |delta|^2`` at every
state, i.e. the symmetric part of ``J_eta f`` is ``<= -c I`` (contraction at rate ``c``
in the Euclidean metric; Lohmiller and Slotine 1998). As in Algorithm 1 the condition is
checked at sampled states (along gradient-free rollouts of the current model) for a random
direction ``v`` per state, which needs one Jacobian-vector product:

    contraction violation  = relu(v^T J_eta f v / |v|^2 + c)                 (per state)

A perturbation of the *input* enters the variational system as a forcing ``J_x f dx``
(Theorem 3's input-to-state view); the lever also bounds it, for the l_inf threat model,
through ``max_{|dx|_inf <= 1} u^T J_x f dx = |J_x^T u|_1`` for a random sign vector ``u``:

    input sensitivity      = |J_x^T u|_1 / dim(eta)                          (per state)

:class:`ContractionObjective` adds ``weight`` times the mean violation and
``input_weight`` times the mean sensitivity to the wrapped objective's loss (default the
Monte Carlo loss of Algorithm 1, Eq. 45). :class:`CertifiedMarginObjective` instead
penalises the bound itself: the cross entropy of the worst-case logits that
:func:`~lyapunov_plugin.certify`'s affine arithmetic gives over the threat ball, through the
same unrolled fixed-step solver (certified training). Both are opt-in:
``default_objective`` is unchanged. docs/certify.md has what they buy
(``python -m benchmarks.certify --methods ...``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ._validation import check_non_negative, check_positive, check_positive_int, check_real
from .certify import margin_lower_bounds
from .inference import EvalMode
from .losses import tile_time_major
from .model import LyapunovModel, horizon, solve
from .objectives import MonteCarloObjective, Objective, PenalisedObjective
from .solvers import FixedStepSolver

__all__ = ["ContractionObjective", "CertifiedMarginObjective", "contraction_terms"]


def _random_like(kind: str, ref: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    device = generator.device if generator is not None else ref.device
    if kind == "normal":
        out = torch.randn(tuple(ref.shape), generator=generator, device=device, dtype=ref.dtype)
    else:
        out = torch.randint(0, 2, tuple(ref.shape), generator=generator, device=device).to(ref.dtype) * 2 - 1
    return out.to(ref.device)


def contraction_terms(
    model: LyapunovModel,
    x: Tensor,
    eta: Tensor,
    t: Tensor,
    *,
    rate: float,
    with_input: bool = True,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-state contraction violation, quadratic form and input sensitivity at ``(eta, x, t)``.

    ``eta`` is ``(B, *S)`` (the states, detached), ``x`` the ``(B, ...)`` inputs whose
    encoding conditions the field, ``t`` ``(B,)``. Returns ``(violation, q, sensitivity)``,
    each ``(B,)``: ``q = v^T J_eta f v / |v|^2`` for a Gaussian ``v`` per state (one
    Jacobian-vector product, through double backward), ``violation = relu(q + rate)`` (the
    variational Lyapunov condition ``dW/dt <= -2 rate W`` of the module docstring, per unit
    ``|v|^2``), and ``sensitivity = |J_x^T u|_1 / dim(eta)`` for a random sign vector
    ``u`` (zeros when ``with_input`` is false or ``x`` is not floating). All carry
    gradient to the model's parameters.
    """
    eta = eta.detach().requires_grad_(True)
    x_in = x.detach().requires_grad_(True) if (with_input and x.is_floating_point()) else x
    context, _ = model.encode(x_in)
    f = model.vector_field(eta, context, t)
    batch = eta.shape[0]
    v = _random_like("normal", eta, generator)
    u = _random_like("sign", eta, generator)
    # J_eta^T v, differentiable: v^T J v = v . (J^T v) is the same quadratic form.
    wrt = [eta, x_in] if x_in is not x else [eta]
    grads = torch.autograd.grad((f * v).sum(), wrt, create_graph=True, allow_unused=True)
    jt_v = grads[0] if grads[0] is not None else torch.zeros_like(eta)
    q = (jt_v * v).reshape(batch, -1).sum(1) / v.reshape(batch, -1).pow(2).sum(1).clamp_min(1e-12)
    violation = torch.relu(q + rate)
    if x_in is x:
        return violation, q, torch.zeros_like(q)
    (jx_u,) = torch.autograd.grad((f * u).sum(), [x_in], create_graph=True, allow_unused=True)
    if jx_u is None:
        return violation, q, torch.zeros_like(q)
    sensitivity = jx_u.reshape(batch, -1).abs().sum(1) / float(eta[0].numel())
    return violation, q, sensitivity


@dataclass(frozen=True, kw_only=True)
class ContractionObjective(PenalisedObjective):
    """``base`` plus the contraction condition of the module docstring at sampled states:
    ``loss = base.loss + weight * mean relu(v^T J_eta f v / |v|^2 + rate)
    + input_weight * mean |J_x^T u|_1 / dim(eta)`` (Eq. 10 for the variational system with
    ``W = |delta|^2``, checked as Algorithm 1 checks Eq. 10, plus the input forcing of
    Theorem 3 in the l_inf dual norm).

    States: each example's gradient-free rollout (``rollout_solver`` on ``rollout_points``
    times over ``[0, t_end]``, eval mode) at all its points, so the condition holds where
    inference goes. No step backpropagates through a solver (the base decides its own).

    Arguments:
        base: the wrapped objective (default :class:`~lyapunov_plugin.MonteCarloObjective`).
        rate: ``c >= 0``, the contraction rate asked for.
        weight: weight of the contraction violation, ``>= 0``.
        input_weight: weight of the input sensitivity, ``>= 0``.
        rollout_solver: solver of the rollouts that place the states (default RK4, 4 steps).
        rollout_points: rollout time points used as states, ``>= 2``.

    ``pointwise``, ``v`` and ``v_dot`` of the result are the base's (the Lyapunov
    diagnostics keep their meaning).
    """

    name: ClassVar[str] = "contraction"

    base: Objective = field(default_factory=MonteCarloObjective)
    rate: float = 1.0
    weight: float = 1.0
    input_weight: float = 0.0
    rollout_solver: Any = field(default_factory=lambda: FixedStepSolver(method="rk4", steps=4))
    rollout_points: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.base, ContractionObjective):
            raise ValueError("base must not itself be a ContractionObjective (set rate/weight on one instead)")
        object.__setattr__(self, "rate", check_non_negative("rate", self.rate))
        object.__setattr__(self, "input_weight", check_non_negative("input_weight", self.input_weight))
        if not callable(self.rollout_solver):
            raise TypeError(
                f"rollout_solver must be callable as solver(func, y0, ts), got {type(self.rollout_solver).__name__}"
            )
        if check_positive_int("rollout_points", self.rollout_points) < 2:
            raise ValueError(f"rollout_points must be >= 2, got {self.rollout_points}")

    def states(self, model: LyapunovModel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(eta (T*B, *S), t (T*B,), x repeated (T*B, ...))``: the rollout states, detached."""
        t_end = horizon(model)
        with EvalMode(model), torch.no_grad():
            context, eta0 = model.encode(x)
            ts = torch.linspace(0.0, t_end, self.rollout_points, dtype=eta0.dtype, device=eta0.device)
            traj = solve(model, context, eta0, ts, solver=self.rollout_solver)
        points, batch = traj.shape[0], traj.shape[1]
        eta = traj.reshape(points * batch, *traj.shape[2:])
        t = ts.repeat_interleave(batch)
        xs = tile_time_major(x, points)
        return eta, t, xs

    @property
    def active(self) -> bool:
        return self.weight != 0.0 or self.input_weight != 0.0

    def weighted_penalty(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """``weight * mean violation + input_weight * mean sensitivity`` at the rollout states."""
        eta, t, xs = self.states(model, x)
        violation, _, sensitivity = contraction_terms(
            model, xs, eta, t, rate=self.rate, with_input=self.input_weight > 0.0, generator=generator
        )
        return self.weight * violation.mean() + self.input_weight * sensitivity.mean()


@dataclass(frozen=True, kw_only=True)
class CertifiedMarginObjective(PenalisedObjective):
    """``base`` plus certified training through the certificate's own bounds:
    ``loss = base.loss + weight * mean CE(-m)`` where ``m_j`` is the affine-arithmetic lower
    bound (:func:`~lyapunov_plugin.certify`'s, differentiated) of ``logit_y - logit_j`` over
    the l_inf ball of radius ``eps`` (within ``domain``), and ``CE(-m) = log(1 + sum_{j != y}
    exp(-m_j))`` is the cross entropy of the worst-case logits (IBP/CROWN-style certified
    training, Gowal et al. 2018, Zhang et al. 2020, on the unrolled fixed-step solver of
    Eq. 2). Penalising a small certified margin penalises exactly the bound width that the
    expanding flow of the cross-entropy potential creates (module docstring).

    The bounds run on the first ``max_examples`` examples of each batch (their cost grows
    with the number of noise symbols, ~ input size + 4 x hidden width per step).

    Arguments:
        base: the wrapped objective (default :class:`~lyapunov_plugin.MonteCarloObjective`).
        eps: training radius, ``> 0``, in input units.
        weight: weight of the certified term, ``>= 0``.
        solver: the :class:`~lyapunov_plugin.FixedStepSolver` the model is certified with.
        domain: ``(low, high)`` box of valid inputs (default ``(0, 1)``), or ``None``.
        max_examples: examples per batch that get bounds, ``>= 1``.
    """

    name: ClassVar[str] = "certified_margin"

    base: Objective = field(default_factory=MonteCarloObjective)
    eps: float = 0.02
    weight: float = 1.0
    solver: FixedStepSolver = field(default_factory=lambda: FixedStepSolver(method="rk4", steps=10))
    domain: Optional[tuple[float, float]] = (0.0, 1.0)
    max_examples: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "eps", check_positive("eps", self.eps))
        if not isinstance(self.solver, FixedStepSolver):
            raise TypeError(
                "solver must be a lyapunov_plugin.FixedStepSolver (the certified solver), "
                f"got {type(self.solver).__name__}"
            )
        if self.domain is not None:
            d = self.domain
            if not isinstance(d, (tuple, list)) or len(d) != 2:
                raise TypeError(f"domain must be a (low, high) pair or None, got {d!r}")
            low, high = check_real("domain[0]", d[0]), check_real("domain[1]", d[1])
            if not low < high:
                raise ValueError(f"domain must have low < high, got {d!r}")
            object.__setattr__(self, "domain", (low, high))
        check_positive_int("max_examples", self.max_examples)
        object.__setattr__(self, "uses_solver", True)  # the bounds run through the unrolled solver

    def penalty(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        return self.certified_loss(model, x, y)

    def certified_loss(self, model: LyapunovModel, x: Tensor, y: Tensor) -> Tensor:
        """``mean log(1 + sum_{j != y} exp(-m_j))`` over the first ``max_examples`` rows."""
        xb, yb = x[: self.max_examples], y[: self.max_examples]
        if self.domain is not None:
            xb = xb.clamp(self.domain[0], self.domain[1])
        lower = margin_lower_bounds(model, xb, yb, eps=self.eps, solver=self.solver, domain=self.domain)
        # -lower at j != y, 0 at j = y (lower is +inf there): the worst-case logits shifted by logit_y.
        worst = torch.where(torch.isinf(lower), torch.zeros_like(lower), -lower)
        return torch.logsumexp(worst, dim=1).mean()
