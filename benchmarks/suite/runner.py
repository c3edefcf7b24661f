"""One training run of the suite: a problem, a model pattern, a method, a seed.

Both methods go through ``LyapunovTrainer``, so they share the loop, the data order and
the optimiser (Adam); they differ only in the recipe: LyaNet's (the trainer's defaults,
:func:`~lyapunov_plugin.default_recipe`, or a named variant of the lever study) or
``objective=SupervisedObjective()`` (the supervised loss at ``t = 1`` backpropagated
through the model's own solver). Test accuracy is
measured after every epoch with the model's own solver; the clock counts the CPU time of
training only (one intra-op thread per run).

On a regression problem (``problem.is_regression``) both methods use ``MSEPotential``: the
default recipe with ``Recipe(potential=MSEPotential())`` (an explicit objective of a variant
gets it as its own potential) and the baseline with ``SupervisedObjective(MSEPotential())``;
the metric is the test MSE (standardised targets) instead of the accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import Tensor

from lyapunov_plugin import (
    CrossEntropyPotential,
    LyapunovTrainer,
    MSEPotential,
    Potential,
    Recipe,
    decay_statistics,
    nfe_to_end,
    trajectory_violation_rate,
)

from .patterns import build
from .problems import Problem

#: Steps the budget aims at; epochs are clamped to [MIN_EPOCHS, MAX_EPOCHS].
TARGET_STEPS = 300
MIN_EPOCHS, MAX_EPOCHS = 20, 100
#: Rate at which test-time violations of Eq. (10) are counted, for both methods.
CHECK_KAPPA = 10.0
EARLY_TIMES = (0.25, 0.5)


def budget(num_train: int) -> tuple[int, int]:
    """``(batch_size, epochs)`` for a training set of ``num_train`` examples: about
    ``TARGET_STEPS`` optimisation steps, the same for every method."""
    batch = 32 if num_train < 500 else 64
    steps_per_epoch = math.ceil(num_train / batch)
    return batch, max(MIN_EPOCHS, min(MAX_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))


class Batches:
    """``(x, y)`` batches of in-memory tensors, reshuffled every epoch by a seeded generator."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.y), generator=self.generator)
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            yield self.x[index], self.y[index]

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)


@dataclass(frozen=True)
class Method:
    """How a run trains: ``recipe(problem, pattern)``, the :class:`~lyapunov_plugin.Recipe`
    given to ``LyapunovTrainer`` (its objective ``None``: the default for the model)."""

    name: str
    recipe: Callable[[Problem, str], Recipe]
    lyanet: bool = True
    #: Patterns the method differs from the defaults on (``None``: all); on the others the
    #: lever study reuses the default runs instead of repeating them.
    patterns: Optional[tuple[str, ...]] = None


def _accuracy(trainer: LyapunovTrainer, x: Tensor, y: Tensor, t_end: Optional[float] = None) -> float:
    return float((trainer.predict(x, t_end=t_end).argmax(-1) == y).double().mean())


def _mse(trainer: LyapunovTrainer, x: Tensor, y: Tensor, t_end: Optional[float] = None) -> float:
    with torch.no_grad():
        return float((trainer.predict(x, t_end=t_end).double() - y.double()).pow(2).mean())


def with_potential(recipe: Recipe, potential: Potential) -> Recipe:
    """``recipe`` with ``potential`` as the supervised loss: the default objective's potential
    (``objective=None``) or the explicit objective's own ``potential`` field."""
    if recipe.objective is None:
        return replace(recipe, potential=potential)
    if not any(f.name == "potential" for f in dataclasses.fields(recipe.objective)):
        raise ValueError(f"objective {type(recipe.objective).__name__} has no potential to set for regression")
    return replace(recipe, objective=replace(recipe.objective, potential=potential))


def run(
    problem: Problem,
    pattern: str,
    method: Method,
    *,
    seed: int,
    lr: Optional[float] = None,
    schedule: Optional[str] = None,
    epochs: Optional[int] = None,
    keep: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train ``pattern`` on ``problem`` with ``method``; return curves and final metrics.

    ``lr`` and ``schedule`` (``"cosine"`` or ``"constant"``) override the method's (the
    baseline's tuning grid). If ``keep`` is a dict, the trained trainer is put in it
    (``keep["trainer"]``), for pictures."""
    torch.manual_seed(seed)
    batch_size, default_epochs = budget(len(problem.y_train))
    epochs = default_epochs if epochs is None else epochs
    user_model = build(pattern, problem.num_features, problem.num_classes, seed=seed, image_shape=problem.image_shape)
    recipe = method.recipe(problem, pattern)
    regression = problem.is_regression
    potential: Potential = MSEPotential() if regression else CrossEntropyPotential()
    if regression:
        recipe = with_potential(recipe, potential)
    if lr is not None:
        recipe = replace(recipe, lr=lr)
    if schedule is not None:
        recipe = replace(recipe, schedule=schedule)
    trainer = LyapunovTrainer(user_model, recipe, progress=False, seed=seed)
    data = Batches(problem.x_train, problem.y_train, batch_size, seed)
    started = time.perf_counter()
    # The test set as the trainer's validation data: scored after every epoch, outside the
    # training clock (train_seconds counts the optimisation steps only).
    history = trainer.fit(data, epochs=epochs, val_loader=[(problem.x_test, problem.y_test)])
    # Training CPU seconds (one intra-op thread per run): unlike the wall clock they do not
    # depend on what else the machine runs, so runs made in parallel stay comparable.
    curve: list[tuple[int, float, float]] = []
    seconds = wall = 0.0
    for record in history:
        seconds += record["train_cpu_seconds"]
        wall += record["train_seconds"]
        # Regression: the curve holds the test MSE (``val_loss`` is the mean MSEPotential).
        score = record["val_loss"] if regression else 1.0 - record["val_error"]
        curve.append((record["epoch"], seconds, score))
    if keep is not None:
        keep["trainer"] = trainer
    x, y = problem.x_test, problem.y_test
    ts = torch.linspace(0.0, trainer.t_end, 11)
    with torch.no_grad():
        monotone = decay_statistics(
            trainer.model, (x, y), potential=potential, kappa=CHECK_KAPPA, ts=ts, only_correct=False
        ).monotone_fraction
        violation = trajectory_violation_rate(trainer.model, (x, y), potential=potential, kappa=CHECK_KAPPA, ts=ts)
        nfe = nfe_to_end(trainer.model, x, t_end=trainer.t_end)
    if regression:
        metrics = {
            "test_mse": _mse(trainer, x, y),
            "val_mse": _mse(trainer, problem.x_val, problem.y_val),
            **{f"test_mse_t{t}": _mse(trainer, x, y, t) for t in EARLY_TIMES},
        }
        metrics["val_loss"] = metrics["val_mse"]
    else:
        metrics = {
            "test_acc": curve[-1][2],
            "val_acc": _accuracy(trainer, problem.x_val, problem.y_val),
            "val_loss": float(potential.value(trainer.predict(problem.x_val), problem.y_val).mean()),
            **{f"test_acc_t{t}": _accuracy(trainer, x, y, t) for t in EARLY_TIMES},
        }
    return {
        "problem": problem.name,
        "task": problem.task,
        "pattern": pattern,
        "method": method.name,
        "lyanet": method.lyanet,
        "objective": trainer.mode,
        "seed": seed,
        "lr": float(trainer.base_lrs[0]),
        "schedule": "cosine" if trainer.recipe.cosine else ("constant" if trainer.scheduler is None else "custom"),
        "epochs": epochs,
        "batch_size": batch_size,
        "train_seconds": seconds,
        "train_wall_seconds": wall,
        "wall_seconds": time.perf_counter() - started,
        "curve": curve,
        **metrics,
        "nfe": nfe,
        "v_monotone": monotone,
        "test_violation": violation,
        "skipped_steps": sum(r["skipped_steps"] for r in trainer.history),
    }


def time_to(curve: list[tuple[int, float, float]], target: float, *, lower_is_better: bool = False) -> float:
    """Training seconds until the test accuracy first reaches ``target`` (``inf``: never);
    with ``lower_is_better`` (a regression curve of test MSE) until it first falls to ``target``."""
    for _, seconds, score in curve:
        if (score <= target + 1e-12) if lower_is_better else (score >= target - 1e-12):
            return seconds
    return math.inf
