"""An opt-in penalty on the velocity of states that have already converged (issue 14, item 3).

The cross-entropy potential of Eq. (11) reaches 0 only at infinity, and Eq. (10) asks
``dV_y/dt <= -kappa V_y`` everywhere, so a Lyapunov-trained state keeps moving after it is
classified (``|f|`` at ``t_end`` is larger for LyaNet than for standard training in
docs/anytime.md), and an adaptive solver keeps paying for that motion. This objective adds
the kinetic term

    ``weight * mean over rollout states s of  1[V_y(s) < level] |f(s, x, t)|^2``

to any base objective (the default recipe's, for instance): motion is penalised only where
the true class's potential is already below ``level``, i.e. beyond convergence, so that the
condition of Eq. (10) is left alone where the state still has to travel. The rollout states
are the model's own solve at ``points`` equally spaced times in ``(0, t_end]``, computed
without gradient (detached), as the Monte Carlo objective's rollout; the velocity there
carries gradient to the dynamics (and the encoder, through the context).

It does not change the default recipe; it is measured in ``python -m benchmarks.anytime
--settling``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from torch import Tensor

from ._validation import check_non_negative, check_positive_int
from .inference import EvalMode
from .losses import tile_time_major
from .model import LyapunovModel, horizon
from .objectives import PenalisedObjective
from .potentials import CrossEntropyPotential, Potential

__all__ = ["SettlingPenalty"]


@dataclass(frozen=True, kw_only=True)
class SettlingPenalty(PenalisedObjective):
    """``base`` plus ``weight`` times the mean squared velocity of converged rollout states.

    The cross-entropy potential (Section 3.1) reaches 0 only at infinity, so a state that
    already satisfies Eq. (10) may keep moving; the penalty asks it to settle instead.

    Attributes:
        base: the objective to add the penalty to (e.g. ``default_recipe(model).objective``).
        weight: ``>= 0``; 0 is ``base`` alone.
        level: a rollout state counts as converged where ``V_y < level`` (true label ``y``).
        points: rollout times ``t_end k / points``, ``k = 1..points``.
        potential: ``V`` for the mask (default: the base objective's, else the cross entropy).
    """

    name: ClassVar[str] = "settling"

    level: float = 0.1
    points: int = 8
    potential: Optional[Potential] = field(default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_non_negative("level", self.level)
        check_positive_int("points", self.points)
        if self.potential is not None and not isinstance(self.potential, Potential):
            raise TypeError(f"potential must be a Potential or None, got {type(self.potential).__name__}")

    def mask_potential(self) -> Potential:
        """The potential the convergence mask uses."""
        if self.potential is not None:
            return self.potential
        held = getattr(self.base, "potential", None)
        return held if isinstance(held, Potential) else CrossEntropyPotential()

    def penalty(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        """``mean_s 1[V_y(s) < level] |f(s)|^2`` over the rollout states (carries gradient)."""
        t_end = horizon(model)
        with torch.no_grad(), EvalMode(model):
            context, eta0 = model.encode(x)
            ts = torch.linspace(0.0, t_end, self.points + 1, dtype=eta0.dtype, device=eta0.device)
            states = model.trajectory(x, ts)[1:]  # (T, B, *S), detached
            steps, batch = states.shape[0], states.shape[1]
            flat = states.reshape(steps * batch, *states.shape[2:])
            labels = tile_time_major(y, steps)
            settled = self.mask_potential().value(model.readout(flat), labels) < self.level
        context, _ = model.encode(x)  # with gradient: the field sees the input through it
        if isinstance(context, Tensor):
            context = tile_time_major(context, steps)
        times = ts[1:].repeat_interleave(batch)
        velocity = model.vector_field(flat, context, times)
        kinetic = velocity.flatten(1).pow(2).mean(-1)
        return (kinetic * settled.to(kinetic.dtype)).mean()
