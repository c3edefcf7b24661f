"""The recipe: *what* is minimised and *how* it is optimised, as one frozen value.

A :class:`Recipe` holds the objective (paper Algorithms 1-2, or the supervised baseline), the
rate ``kappa`` of Eq. (10) or its schedule, the optimizer, the learning-rate schedule and
gradient clipping. ``LyapunovTrainer``, the Lightning ``LyapunovModule`` and a plain loop all
consume the same value, so the defaults live here and nowhere else::

    recipe = default_recipe(model)                       # what LyapunovTrainer(model) trains with
    optimizer = recipe.build_optimizer(model.parameters())
    for epoch in range(1, epochs + 1):
        recipe.set_learning_rate(optimizer, epoch, epochs)
        for x, y in loader:
            out = recipe.resolve(model, x).objective(model, x, y, kappa=recipe.kappa_at(epoch))
            ...

*Where* training runs (device, seeds, progress, checkpoints, ranks) is not part of a recipe:
that is the trainer's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional, Union, cast

import torch
from torch import Tensor, nn

from ._validation import check_choice, check_non_negative, check_positive
from .dispatch import as_lyapunov_model
from .objectives import (
    BARE_FLOW_KAPPA,
    BARE_FLOW_LR,
    DEFAULT_KAPPA,
    Objective,
    PathIntegralObjective,
    default_branch,
)
from .potentials import Potential
from .schedules import KappaSchedule, constant_kappa

__all__ = ["Recipe", "default_recipe", "DEFAULT_LR", "OPTIMIZERS", "SCHEDULES"]

#: Default Adam learning rate. The Lyapunov objectives converge within the suite's budget
#: at 1e-2 and fall several points behind at 1e-3 (docs/defaults.md); the baseline in that
#: comparison is standard training at its best of 1e-3, 3e-3 and 1e-2.
DEFAULT_LR = 1e-2
#: Optimizers a recipe can name; any ``params -> torch.optim.Optimizer`` factory works too.
OPTIMIZERS = ("adam", "adamw", "sgd", "nero")
#: Named learning-rate schedules; any ``optimizer -> LR scheduler`` factory works too.
SCHEDULES = ("cosine", "constant")
_INTERVALS = ("epoch", "step")

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def cosine_factor(epoch: int, epochs: int) -> float:
    """The default schedule: epoch ``epoch`` (1-based) of a run to ``epochs`` trains at
    ``lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2`` (``CosineAnnealingLR`` with
    ``T_max=epochs``, stepped once per epoch)."""
    return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def _rollout_steps(potential: Optional[Potential]) -> Optional[int]:
    """The path-integral rollout steps ``potential`` asks for (``Potential.path_steps``, MSE: 8),
    validated; ``None`` for the objective's own (4)."""
    steps = None if potential is None else potential.path_steps
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise TypeError(f"path_steps of {type(potential).__name__} must be None or a positive int, got {steps!r}")
    return max(steps, PathIntegralObjective().steps)  # never fewer steps than the objective's own


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What is minimised (a Lyapunov objective, Eq. 12-17 / Algorithms 1-2, with the rate
    ``kappa`` of Eq. 10) and how it is optimised (Lightning's ``training_step`` +
    ``configure_optimizers``, as one value).

    Arguments:
        objective: an :class:`~lyapunov_plugin.objectives.Objective`; ``None`` means
            :func:`~lyapunov_plugin.default_objective` for the model, chosen by
            :meth:`resolve` (from the model's structure, or from a first batch when the model
            cannot tell).
        potential: only with ``objective=None``: the potential ``V_y`` of the default
            objective (e.g. :class:`~lyapunov_plugin.MSEPotential` for regression; its
            ``path_steps`` sets the default path integral's rollout steps, 8 for MSE).
            An explicit objective holds its own potential.
        kappa: the rate of Eq. (10): a positive float or a
            :class:`~lyapunov_plugin.KappaSchedule` over epochs. ``None`` (default): 10, or,
            when :meth:`resolve` chooses the default objective of a bare flow (``eta(0) = x``,
            no readout, e.g. torchdyn's tutorial ``NeuralODE(f)``), ``BARE_FLOW_KAPPA = 3``.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"`` (momentum 0.9), ``"nero"``
            (paper Appendix C; needs ``pytorch-optimizer``), or a factory
            ``params -> torch.optim.Optimizer``.
        lr, weight_decay: settings of a named optimizer. ``lr=None`` (default): 1e-2, or
            ``BARE_FLOW_LR = 3e-2`` with a bare flow's default objective (as for ``kappa``).
        schedule: ``"cosine"`` (default): the learning rate falls from ``lr`` along half a
            cosine over the epochs of a run, which on the suite removed the late-training
            oscillation of a constant rate (docs/defaults.md); ``"constant"``; or a factory
            ``optimizer -> LR scheduler``.
        schedule_interval: step a scheduler from a factory every ``"epoch"`` or ``"step"``.
        grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    """

    objective: Optional[Objective] = None
    potential: Optional[Potential] = None
    kappa: Union[float, KappaSchedule, None] = None
    optimizer: Union[str, OptimizerFactory] = "adam"
    lr: Optional[float] = None
    weight_decay: float = 0.0
    schedule: Union[str, SchedulerFactory] = "cosine"
    schedule_interval: str = "epoch"
    grad_clip: Optional[float] = None

    def __post_init__(self) -> None:
        if self.objective is not None and not isinstance(self.objective, Objective):
            raise TypeError(
                f"objective must be a lyapunov_plugin Objective or None, got {type(self.objective).__name__}"
            )
        if self.potential is not None:
            if not isinstance(self.potential, Potential):
                raise TypeError(
                    f"potential must be a lyapunov_plugin.Potential or None, got {type(self.potential).__name__}"
                )
            if self.objective is not None:
                raise ValueError(
                    "potential applies only to the default objective (objective=None); pass it to the objective "
                    f"instead, e.g. {type(self.objective).__name__}(potential=...)"
                )
        if self.objective is not None:
            # An explicit objective: unset kappa / lr are the plain defaults right away (only
            # the default objective's are left to resolve(), which knows the model).
            if self.kappa is None:
                object.__setattr__(self, "kappa", DEFAULT_KAPPA)
            if self.lr is None:
                object.__setattr__(self, "lr", DEFAULT_LR)
        if self.kappa is not None and not isinstance(self.kappa, KappaSchedule):
            object.__setattr__(self, "kappa", constant_kappa(check_positive("kappa", self.kappa)))
        if isinstance(self.optimizer, str):
            check_choice("optimizer", self.optimizer, OPTIMIZERS)
        elif isinstance(self.optimizer, torch.optim.Optimizer) or not callable(self.optimizer):
            raise TypeError(
                f"optimizer must be one of {list(OPTIMIZERS)} or a factory params -> torch.optim.Optimizer, got "
                f"{type(self.optimizer).__name__} (a recipe is reusable: pass a factory such as "
                "lambda params: torch.optim.SGD(params, lr=0.1), not an optimizer instance)"
            )
        if self.lr is not None:
            object.__setattr__(self, "lr", check_positive("lr", self.lr))
        object.__setattr__(self, "weight_decay", check_non_negative("weight_decay", self.weight_decay))
        if isinstance(self.schedule, str):
            check_choice("schedule", self.schedule, SCHEDULES)
        elif not callable(self.schedule) or hasattr(self.schedule, "state_dict"):
            raise TypeError(
                f"schedule must be one of {list(SCHEDULES)} or a factory optimizer -> LR scheduler, got "
                f"{type(self.schedule).__name__}"
            )
        check_choice("schedule_interval", self.schedule_interval, _INTERVALS)
        if self.grad_clip is not None:
            object.__setattr__(self, "grad_clip", check_positive("grad_clip", self.grad_clip))

    # ------------------------------------------------------------------ what
    @property
    def kappa_schedule(self) -> KappaSchedule:
        """``kappa`` as a schedule (a float is held as a constant schedule; ``None`` is the
        default rate, 10)."""
        if self.kappa is None:
            return constant_kappa(DEFAULT_KAPPA)
        return cast(KappaSchedule, self.kappa)  # __post_init__ converted a float

    @property
    def learning_rate(self) -> float:
        """The named optimizer's learning rate (``lr``, or the default 1e-2 when unset)."""
        return DEFAULT_LR if self.lr is None else float(self.lr)

    def kappa_at(self, epoch: int) -> float:
        """The rate used during ``epoch`` (1-based)."""
        return float(self.kappa_schedule(epoch))

    @property
    def resolved(self) -> bool:
        """Whether the objective is known (not left to :meth:`resolve`)."""
        return self.objective is not None

    def resolve(self, model: Any, x: Optional[Tensor] = None) -> Recipe:
        """This recipe with its objective chosen for ``model``
        (:func:`~lyapunov_plugin.default_objective`, with :attr:`potential`), or itself when
        it has one. ``x``: a few example inputs, needed only for a model that cannot tell
        its structure without running (no ``readout_module`` / ``initial_state_trainable``).
        """
        if self.objective is not None:
            return self
        # A potential may ask for a finer rollout than the default path integral's (MSE:
        # Potential.path_steps); a model whose own fixed-step grid is coarser trains along it.
        choice, chosen = default_branch(model, x, rollout_steps=_rollout_steps(self.potential))
        if self.potential is not None:
            chosen = dataclasses.replace(chosen, potential=self.potential)
        # Unset kappa / lr: the defaults, or the bare flow's own rate and step size.
        bare = choice == "bare_flow"
        kappa = self.kappa if self.kappa is not None else (BARE_FLOW_KAPPA if bare else DEFAULT_KAPPA)
        lr = self.lr if self.lr is not None else (BARE_FLOW_LR if bare else DEFAULT_LR)
        return dataclasses.replace(self, objective=chosen, potential=None, kappa=kappa, lr=lr)

    # ------------------------------------------------------------------- how
    def build_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """The optimizer over ``params`` (those that require gradients)."""
        trainable = [p for p in params if p.requires_grad]
        if not trainable:
            raise ValueError("model has no trainable parameters")
        if not isinstance(self.optimizer, str):
            built = self.optimizer(trainable)
            if not isinstance(built, torch.optim.Optimizer):
                raise TypeError(f"optimizer factory must return a torch.optim.Optimizer, got {type(built).__name__}")
            owned = {id(p) for p in trainable}
            foreign = sum(1 for group in built.param_groups for p in group["params"] if id(p) not in owned)
            if foreign:
                raise ValueError(f"optimizer holds {foreign} parameter(s) that are not the model's trainable ones")
            return built
        if self.optimizer == "adam":
            return torch.optim.Adam(trainable, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(trainable, lr=self.learning_rate, weight_decay=self.weight_decay)
        if self.optimizer == "sgd":
            return torch.optim.SGD(trainable, lr=self.learning_rate, momentum=0.9, weight_decay=self.weight_decay)
        try:
            from pytorch_optimizer import Nero
        except ImportError as err:
            raise ImportError("optimizer='nero' needs pytorch-optimizer: pip install pytorch-optimizer") from err
        return Nero(trainable, lr=self.learning_rate)

    @property
    def cosine(self) -> bool:
        """Whether the learning rate follows the default cosine (:func:`cosine_factor`)."""
        return self.schedule == "cosine"

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The LR scheduler of a factory ``schedule`` (``None`` for the named schedules, which
        :meth:`set_learning_rate` applies)."""
        if isinstance(self.schedule, str):
            return None
        built = self.schedule(optimizer)
        if not (hasattr(built, "step") and hasattr(built, "state_dict")):
            raise TypeError(f"schedule factory must return an LR scheduler, got {type(built).__name__}")
        if getattr(built, "optimizer", optimizer) is not optimizer:
            raise ValueError("schedule factory must return a scheduler bound to the optimizer it was given")
        return built

    def set_learning_rate(
        self, optimizer: torch.optim.Optimizer, base_lrs: list[float], epoch: int, epochs: int
    ) -> None:
        """Apply the cosine schedule for ``epoch`` of ``epochs`` to ``optimizer`` (each group
        from its base rate); a no-op for other schedules."""
        if not self.cosine:
            return
        factor = cosine_factor(epoch, epochs)
        # strict=False: a parameter group added during training keeps the rate it was given.
        for group, base in zip(optimizer.param_groups, base_lrs, strict=False):
            group["lr"] = base * factor

    def clip_gradients(self, params: Iterable[nn.Parameter]) -> Tensor:
        """Clip the global gradient norm to :attr:`grad_clip` (if set); return the norm before
        clipping (non-finite when a gradient is)."""
        grads = [p for p in params if p.grad is not None]
        return torch.nn.utils.clip_grad_norm_(grads, self.grad_clip if self.grad_clip is not None else math.inf)

    def configure_optimizers(self, params: Iterable[nn.Parameter], epochs: Optional[int] = None) -> Any:
        """Lightning's ``configure_optimizers`` return value for this recipe: the optimizer,
        and with the cosine schedule over ``epochs`` a per-epoch ``LambdaLR`` giving exactly
        :func:`cosine_factor` (the trainer's rates)."""
        optimizer = self.build_optimizer(params)
        if self.cosine:
            if not epochs or epochs < 1:
                return optimizer
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: cosine_factor(e + 1, epochs))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
        built = self.build_scheduler(optimizer)
        if built is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": built, "interval": self.schedule_interval}}


def default_recipe(model: Any, x: Optional[Tensor] = None, *, potential: Optional[Potential] = None) -> Recipe:
    """The whole default training configuration for ``model`` (docs/defaults.md): the
    default objective (:func:`~lyapunov_plugin.default_objective`: Monte Carlo, Algorithm 1,
    or the path integral, Algorithm 2), ``kappa = 10`` (Eq. 10), Adam at
    ``1e-2`` with a per-run cosine decay, no clipping; for a bare flow (``eta(0) = x``, no
    readout: torchdyn's tutorial ``NeuralODE(f)``) ``kappa = 3`` and Adam at ``3e-2``. ``LyapunovTrainer(model)``,
    ``LyapunovModule(model)`` and a plain loop that calls this get the same value.

    Arguments:
        model: the user's model (any form the trainer accepts).
        x: a few example inputs; needed only to choose the objective of a model that cannot
            tell its structure without running. Without them such a model's recipe keeps
            ``objective=None`` until :meth:`Recipe.resolve` sees a batch.
        potential: the supervised loss ``V_y`` (default cross entropy; e.g.
            :class:`~lyapunov_plugin.MSEPotential` for regression).
    """
    recipe = Recipe(potential=potential)
    if x is None and not structure_is_known(model):
        return recipe  # the model cannot tell without a batch: resolved on the first one
    return recipe.resolve(model, x)


def structure_is_known(model: Any) -> bool:
    """Whether :func:`~lyapunov_plugin.default_objective` can choose for ``model`` without
    example inputs: its dynamics do not see the input, or it declares both a
    ``readout_module`` and ``initial_state_trainable`` (the adapters and ``ODEModel`` do)."""
    protocol = as_lyapunov_model(model)
    if not getattr(protocol, "conditioned_on_input", True):
        return True
    return isinstance(getattr(protocol, "readout_module", None), nn.Module) and isinstance(
        getattr(protocol, "initial_state_trainable", None), bool
    )
