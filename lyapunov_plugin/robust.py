"""A robust LyaNet recipe: the Lyapunov condition enforced at perturbed inputs (paper Theorem 3).

Theorem 3 bounds how far a perturbation of the *input* can move the flow of a model whose
Lyapunov condition, Eq. (10), holds: the input enters the dynamics ``f(eta, x, t)`` and a
bounded change of ``x`` is a bounded disturbance of a system that is exponentially stable
towards the correct class (the input-to-state view). The default recipe checks Eq. (10) only
at the training inputs ``x``. :class:`InputPerturbedObjective` checks it at
``f(eta, x + delta, t)``, with ``delta`` in the l_inf ball of radius ``eps`` around ``x``:
sampled uniformly (``steps=0``) or found by a few sign-gradient steps that *increase* the
violation of Eq. (10) (``steps >= 1``, a PGD search on the Lyapunov loss itself rather than
on the prediction), and then evaluates the wrapped objective (by default the Monte Carlo
loss of Algorithm 1, Eq. 45) there.

:func:`robust_objective` is the robust counterpart of
:func:`~lyapunov_plugin.default_objective`. docs/robust.md has the measurements behind it
(``python -m benchmarks.robust``: digits and MNIST-5k, three seeds, AutoAttack in the
per-example worst case) and what they do and do not show; in particular whether the gain
over standard training exceeds what adversarial training of the standard objective with
the same search gets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ._validation import check_in_range, check_non_negative, check_positive, check_real
from .inference import EvalMode
from .losses import LyapunovLossOutput
from .model import LyapunovModel
from .objectives import MonteCarloObjective, Objective, default_objective

__all__ = ["InputPerturbedObjective", "robust_objective", "ROBUST_EPS", "ROBUST_STEPS"]

#: l_inf radius (pixel units, inputs in [0, 1]) of the perturbations :func:`robust_objective`
#: trains against: the headline threat model of docs/evaluation.md on digits.
ROBUST_EPS = 0.1
#: Sign-gradient steps of the perturbation search of :func:`robust_objective`.
ROBUST_STEPS = 2


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True, kw_only=True)
class InputPerturbedObjective(Objective):
    """The Lyapunov loss at perturbed inputs: ``base(model, x + delta, y)`` with
    ``|delta|_inf <= eps`` (Eq. 10 under the input disturbance of Theorem 3).

    ``delta`` starts uniform in the ball (``random_start``) and takes ``steps`` sign-gradient
    steps of size ``step_size`` that increase ``base``'s loss (with Monte Carlo ``base``: the
    mean violation of Eq. 12 at states sampled along the perturbed rollout), projected back
    on the ball and, if ``input_range`` is set, on the valid inputs. The search runs in eval
    mode (restored afterwards) and takes gradients with respect to ``delta`` only, so it
    neither changes buffers nor accumulates parameter gradients. The returned loss is
    ``clean_weight * base(x) + (1 - clean_weight) * base(x + delta)``; ``pointwise``, ``v``
    and ``v_dot`` hold the perturbed evaluation's points (and, with ``clean_weight > 0``, the
    clean ones after them).

    Arguments:
        base: the objective evaluated at the perturbed inputs (default
            :class:`~lyapunov_plugin.MonteCarloObjective`, Algorithm 1). It must not itself
            be an ``InputPerturbedObjective``.
        eps: l_inf radius of ``delta`` in input units, ``> 0``.
        steps: sign-gradient steps of the search, ``>= 0`` (``0``: ``delta`` is the random start).
        step_size: size of each step (default ``2.5 * eps / steps``, the PGD convention).
        random_start: start from a uniform draw in the ball (``False``: from ``delta = 0``;
            then ``steps >= 1`` is required, or nothing is perturbed).
        input_range: ``(low, high)`` bounds of valid inputs (default ``(0, 1)``, pixels), or
            ``None`` for unbounded inputs.
        clean_weight: weight of the loss at the unperturbed inputs, in ``[0, 1]``.
    """

    name: ClassVar[str] = "input_perturbed"

    base: Objective = field(default_factory=MonteCarloObjective)
    eps: float = ROBUST_EPS
    steps: int = ROBUST_STEPS
    step_size: Optional[float] = None
    random_start: bool = True
    input_range: Optional[tuple[float, float]] = (0.0, 1.0)
    clean_weight: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.base, Objective):
            raise TypeError(f"base must be a lyapunov_plugin Objective, got {type(self.base).__name__}")
        if isinstance(self.base, InputPerturbedObjective):
            raise ValueError("base must not itself be an InputPerturbedObjective (nest the settings instead)")
        if not self.base.uses_lyapunov_condition:
            raise ValueError(
                f"base must evaluate the Lyapunov condition (Eq. 10), got {type(self.base).__name__} "
                "(for supervised adversarial training use an attack library)"
            )
        object.__setattr__(self, "eps", check_positive("eps", self.eps))
        _check_int("steps", self.steps, minimum=0)
        if self.step_size is not None:
            object.__setattr__(self, "step_size", check_positive("step_size", self.step_size))
        if not isinstance(self.random_start, bool):
            raise TypeError(f"random_start must be a bool, got {type(self.random_start).__name__}")
        if not self.random_start and self.steps == 0:
            raise ValueError("steps must be >= 1 when random_start=False (otherwise delta is always 0)")
        if self.input_range is not None:
            bounds = self.input_range
            if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
                raise TypeError(f"input_range must be a (low, high) pair or None, got {bounds!r}")
            low, high = check_real("input_range[0]", bounds[0]), check_real("input_range[1]", bounds[1])
            if not low < high:
                raise ValueError(f"input_range must have low < high, got {bounds!r}")
            object.__setattr__(self, "input_range", (low, high))
        weight = check_non_negative("clean_weight", self.clean_weight)
        if weight > 1.0:
            raise ValueError(f"clean_weight must be in [0, 1], got {self.clean_weight}")
        object.__setattr__(self, "clean_weight", weight)
        # Whether a step backpropagates through a solver is the base's business (the search
        # differentiates the same loss).
        object.__setattr__(self, "uses_solver", self.base.uses_solver)

    @property
    def alpha(self) -> float:
        """The step size of the search (``step_size`` or ``2.5 * eps / steps``)."""
        if self.step_size is not None:
            return float(self.step_size)
        return 2.5 * self.eps / max(self.steps, 1)

    def _project(self, x: Tensor, candidate: Tensor) -> Tensor:
        """``candidate`` projected on the l_inf ball around ``x`` and on ``input_range``."""
        out = torch.minimum(torch.maximum(candidate, x - self.eps), x + self.eps)
        if self.input_range is not None:
            out = out.clamp(self.input_range[0], self.input_range[1])
        return out

    def perturb(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """The perturbed inputs ``x + delta`` (detached) on checked arguments: the random start
        and the sign-gradient steps on ``base``'s loss described in the class docstring."""
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor to be perturbed, got dtype {x.dtype}")
        x = x.detach()
        if self.input_range is not None:
            _check_in_range(x, self.input_range, "input_range")
        if self.random_start:
            device = generator.device if generator is not None else x.device
            u = torch.rand(tuple(x.shape), generator=generator, device=device, dtype=x.dtype).to(x.device)
            x_adv = self._project(x, x + (2.0 * u - 1.0) * self.eps)
        else:
            x_adv = self._project(x, x.clone())
        if self.steps == 0:
            return x_adv
        with EvalMode(model), torch.enable_grad():
            for _ in range(self.steps):
                probe = x_adv.clone().requires_grad_(True)
                loss = self.base.compute(model, probe, y, kappa=kappa, generator=generator).loss
                (grad,) = torch.autograd.grad(loss, probe, allow_unused=True)
                if grad is None:
                    # The loss does not depend on the input (e.g. dynamics that ignore x):
                    # there is no direction to search.
                    break
                x_adv = self._project(x, x_adv + self.alpha * grad.sign())
        return x_adv.detach()

    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> LyapunovLossOutput:
        x_adv = self.perturb(model, x, y, kappa=kappa, generator=generator)
        perturbed = self.base.compute(model, x_adv, y, kappa=kappa, generator=generator)
        if self.clean_weight == 0.0:
            return perturbed
        clean = self.base.compute(model, x, y, kappa=kappa, generator=generator)
        w = self.clean_weight
        return LyapunovLossOutput(
            w * clean.loss + (1.0 - w) * perturbed.loss,
            torch.cat([perturbed.pointwise.reshape(-1), clean.pointwise.reshape(-1)]),
            torch.cat([perturbed.v.reshape(-1), clean.v.reshape(-1)]),
            torch.cat([perturbed.v_dot.reshape(-1), clean.v_dot.reshape(-1)]),
        )


def robust_objective(model: Any, x: Optional[Tensor] = None) -> Objective:
    """The robust counterpart of :func:`~lyapunov_plugin.default_objective`: Eq. (10)
    enforced at inputs perturbed within the l_inf ball of radius ``ROBUST_EPS`` (Theorem 3's
    input-to-state view), ``InputPerturbedObjective(base=default_objective(model, x),
    eps=ROBUST_EPS, steps=ROBUST_STEPS)``.

    The wrapped objective is whatever the default recipe trains this model with (Monte Carlo
    training, Algorithm 1, for the paper's model; path-integral training otherwise), so the
    model-structure rules of :func:`~lyapunov_plugin.default_objective` apply unchanged.
    ``eps`` is in input units and assumes inputs in ``[0, 1]`` (pixels); for other inputs
    build an :class:`InputPerturbedObjective` with your own ``eps`` and ``input_range``.
    What this buys and costs is measured in docs/robust.md (``python -m benchmarks.robust``).

    Arguments:
        model: the user's model (any form the trainer accepts).
        x: a few example inputs, needed only where :func:`~lyapunov_plugin.default_objective`
            needs them (a model that does not declare its readout / input layer).
    """
    if isinstance(x, Tensor) and x.is_floating_point() and x.numel():
        _check_in_range(x, (0.0, 1.0), "robust_objective's input range (pixels in [0, 1])")
    return InputPerturbedObjective(base=default_objective(model, x), eps=ROBUST_EPS, steps=ROBUST_STEPS)


def _check_in_range(x: Tensor, bounds: tuple[float, float], what: str) -> None:
    """Inputs outside the range the perturbation is projected on would be clamped into it,
    moving them far outside the eps-ball: refuse them instead."""
    check_in_range(
        "x",
        x,
        bounds[0],
        bounds[1],
        what=f"{what} [{bounds[0]:g}, {bounds[1]:g}] (the perturbed inputs are clamped into it)",
        advice="build InputPerturbedObjective(base, eps=..., input_range=...) with the range and eps of your inputs "
        "(input_range=None for no clamp)",
    )
