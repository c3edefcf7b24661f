"""The training methods the suite compares: the standard baseline, LyaNet's defaults, and
the levers tried while the defaults were chosen (docs/defaults.md, "Every lever").

Each variant changes one thing relative to the defaults, so its suite numbers say what
that one lever does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    LyapunovModel,
    MonteCarloObjective,
    Objective,
    PathIntegralObjective,
    PenalisedObjective,
    Recipe,
    RolloutSampler,
    SupervisedObjective,
    UniformTimeSampler,
    appendix_b_half_width,
)
from lyapunov_plugin.objectives import BARE_FLOW_KAPPA, BARE_FLOW_LR, BARE_FLOW_STEPS

from .runner import Method, budget

#: Patterns the default recipe trains with Monte Carlo / with the path integral.
MC_PATTERNS = ("paper",)
PATH_PATTERNS = ("dc", "plain", "augmented", "enc_dc", "torchdiffeq")

STANDARD = Method("standard", lambda problem, pattern: Recipe(objective=SupervisedObjective()), lyanet=False)
DEFAULT = Method("lyanet", lambda problem, pattern: Recipe())


def _previous_default(problem: Any, pattern: str) -> Recipe:
    """The recipe before this work: Monte Carlo on a hypercube grown to cover twice the
    rollouts (Appendix B's half-width for an identity readout), 32 samples, Adam 1e-3;
    path integral through the model's own solver where the field does not see the input."""
    if pattern in ("plain", "augmented", "torchdiffeq"):
        return Recipe(
            objective=PathIntegralObjective(steps=10, form="discrete", solver="model"), lr=1e-3, schedule="constant"
        )
    half_width = appendix_b_half_width(10.0, problem.num_classes) if pattern == "paper" else 1.0
    sampler = HypercubeSampler(half_width=half_width, cover=2.0)
    return Recipe(
        objective=MonteCarloObjective(state_sampler=sampler, time_sampler=UniformTimeSampler(), num_samples=32),
        lr=1e-3,
        schedule="constant",
    )


@dataclass(frozen=True, kw_only=True)
class PathWithTerminalLoss(PenalisedObjective):
    """Lever: the default path integral plus ``weight`` times the cross entropy at ``t_end``
    on the same RK4-4 grid (a standard-training term mixed in; costs a second rollout)."""

    base: Objective = field(default_factory=PathIntegralObjective)
    name: ClassVar[str] = "path_integral"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "uses_solver", True)  # the terminal term backpropagates through RK4-4

    def penalty(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None
    ) -> Tensor:
        terminal = SupervisedObjective(solver=FixedStepSolver(method="rk4", steps=4))
        return terminal.compute(model, x, y, kappa=0.0).loss


@dataclass(frozen=True, kw_only=True)
class SupervisedWarmStart(Objective):
    """Lever (``benchmarks.solver_fidelity``): standard training (cross entropy at ``t_end``
    through the model's own solver) for the first ``warm_steps`` training steps, then ``base``
    (the default path integral). Where the standard model is the better point of LyaNet's own
    objective, this starts the Lyapunov phase from a supervised fit. Unlike the library's
    objectives it counts its calls (one per training step of ``LyapunovTrainer.fit``), so one
    instance serves one run."""

    warm_steps: int
    warm: Objective = field(default_factory=SupervisedObjective)
    base: Objective = field(default_factory=PathIntegralObjective)
    calls: list[int] = field(default_factory=lambda: [0], compare=False, repr=False)
    name: ClassVar[str] = "path_integral"

    def compute(
        self,
        model: LyapunovModel,
        x: Tensor,
        y: Tensor,
        *,
        kappa: float,
        generator: Optional[torch.Generator] = None,
    ) -> Any:
        self.calls[0] += 1
        phase = self.warm if self.calls[0] <= self.warm_steps else self.base
        return phase.compute(model, x, y, kappa=kappa, generator=generator)


def _warm_start(fraction: float) -> Callable[[Any, str], Recipe]:
    def recipe(problem: Any, pattern: str) -> Recipe:
        batch, epochs = budget(len(problem.y_train))
        steps = epochs * math.ceil(len(problem.y_train) / batch)
        return Recipe(objective=SupervisedWarmStart(warm_steps=int(fraction * steps)))

    return recipe


def _path_steps(steps: int) -> Method:
    """Lever ``path_steps_<steps>``: the default path integral along ``steps`` RK4 steps."""
    return Method(
        f"path_steps_{steps}",
        lambda problem, pattern: Recipe(objective=PathIntegralObjective(steps=steps)),
        patterns=PATH_PATTERNS,
    )


def _epoch_schedule(factor: Callable[[int, int], float]) -> Callable[[Any, str], Recipe]:
    """Lever: a learning-rate schedule ``lr * factor(epoch, epochs)`` over the problem's budget."""

    def recipe(problem: Any, pattern: str) -> Recipe:
        epochs = budget(len(problem.y_train))[1]
        return Recipe(schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: factor(e, epochs)))

    return recipe


def _cosine_to_floor(epoch: int, epochs: int, floor: float = 0.2) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs))


def _constant_then_cosine(epoch: int, epochs: int) -> float:
    half = epochs // 2
    return 1.0 if epoch < half else 0.5 * (1 + math.cos(math.pi * (epoch - half) / max(epochs - half, 1)))


VARIANTS: dict[str, Method] = {
    method.name: method
    for method in (
        DEFAULT,
        Method("previous_default", _previous_default),
        Method("lr_1e-3", lambda problem, pattern: Recipe(lr=1e-3)),
        Method("kappa_1", lambda problem, pattern: Recipe(kappa=1.0)),
        Method("kappa_5", lambda problem, pattern: Recipe(kappa=5.0)),
        Method("lr_3e-3", lambda problem, pattern: Recipe(lr=3e-3)),
        Method("grad_clip_1", lambda problem, pattern: Recipe(grad_clip=1.0)),
        Method("constant_lr", lambda problem, pattern: Recipe(schedule="constant")),
        Method(
            "monte_carlo_everywhere",
            lambda problem, pattern: Recipe(objective=MonteCarloObjective()),
            patterns=PATH_PATTERNS,
        ),
        Method(
            "path_everywhere", lambda problem, pattern: Recipe(objective=PathIntegralObjective()), patterns=MC_PATTERNS
        ),
        Method(
            "path_discrete",
            lambda problem, pattern: Recipe(objective=PathIntegralObjective(form="discrete")),
            patterns=PATH_PATTERNS,
        ),
        Method(
            "path_model_solver",
            lambda problem, pattern: Recipe(objective=PathIntegralObjective(solver="model")),
            patterns=PATH_PATTERNS,
        ),
        Method(
            "path_detach_v",
            lambda problem, pattern: Recipe(objective=PathIntegralObjective(detach_v=True)),
            patterns=PATH_PATTERNS,
        ),
        # The path integral along other RK4 grids: 8 steps (a classification lever); for
        # regression (MSEPotential.path_steps = 8 in the default) the previous 4 and a finer 16.
        *(_path_steps(steps) for steps in (8, 4, 16)),
        Method(
            "mc_no_noise",
            lambda problem, pattern: Recipe(
                objective=MonteCarloObjective(state_sampler=RolloutSampler(noise_scales=(0.0,)))
            ),
            patterns=MC_PATTERNS,
        ),
        Method(
            "mc_noise_to_1",
            lambda problem, pattern: Recipe(
                objective=MonteCarloObjective(state_sampler=RolloutSampler(noise_scales=(0.0, 0.1, 0.3, 1.0)))
            ),
            patterns=MC_PATTERNS,
        ),
        Method(
            "mc_noise_to_3",
            lambda problem, pattern: Recipe(
                objective=MonteCarloObjective(state_sampler=RolloutSampler(noise_scales=(0.0, 0.1, 0.3, 1.0, 3.0)))
            ),
            patterns=MC_PATTERNS,
        ),
        Method(
            "path_terminal_0.1",
            lambda problem, pattern: Recipe(objective=PathWithTerminalLoss(weight=0.1)),
            patterns=PATH_PATTERNS,
        ),
        Method(
            "path_terminal_1",
            lambda problem, pattern: Recipe(objective=PathWithTerminalLoss(weight=1.0)),
            patterns=PATH_PATTERNS,
        ),
        Method("cosine_to_0.2", _epoch_schedule(_cosine_to_floor), patterns=PATH_PATTERNS),
        Method("warm_start_half", _warm_start(0.5), patterns=PATH_PATTERNS),
        Method("constant_then_cosine", _epoch_schedule(_constant_then_cosine), patterns=PATH_PATTERNS),
        # The bare flow's own defaults (kappa 3, Adam 3e-2; docs/defaults.md): the previous
        # setting and one change at a time around the chosen one.
        Method("bare_previous", lambda problem, pattern: Recipe(kappa=10.0, lr=1e-2), patterns=("bare",)),
        Method("bare_kappa_2", lambda problem, pattern: Recipe(kappa=2.0), patterns=("bare",)),
        Method("bare_kappa_5", lambda problem, pattern: Recipe(kappa=5.0), patterns=("bare",)),
        Method("bare_lr_1e-2", lambda problem, pattern: Recipe(lr=1e-2), patterns=("bare",)),
        Method("bare_lr_5e-2", lambda problem, pattern: Recipe(lr=5e-2), patterns=("bare",)),
        # Eq. (16)-(17) enforced only from a fraction of the horizon on (the bare flow first
        # rearranges its input states; docs/defaults.md), at the bare flow's kappa and lr.
        *(
            Method(
                f"bare_start_{start:g}",
                lambda problem, pattern, start=start: Recipe(
                    objective=PathIntegralObjective(form="discrete", steps=BARE_FLOW_STEPS, start=start),
                    kappa=BARE_FLOW_KAPPA,
                    lr=BARE_FLOW_LR,
                ),
                patterns=("bare",),
            )
            for start in (0.25, 0.5)
        ),
        # The label-smoothed potential KL(q || softmax), 0 at finite logits (docs/anytime.md).
        *(
            Method(
                f"ce_smoothing_{s:g}",
                lambda problem, pattern, s=s: Recipe(potential=CrossEntropyPotential(smoothing=s)),
            )
            for s in (0.05, 0.1)
        ),
        Method(
            "mc_32_samples",
            lambda problem, pattern: Recipe(objective=MonteCarloObjective(num_samples=32)),
            patterns=MC_PATTERNS,
        ),
    )
}
