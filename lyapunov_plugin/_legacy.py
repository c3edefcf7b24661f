"""The keyword form of a recipe that ``LyapunovTrainer`` accepted before :class:`Recipe`
existed (``mode="standard"``, ``num_samples=...``, ``lr=...``, ...). Exists for backward
compatibility: each keyword maps to the new objects once, with a ``FutureWarning`` that
names the replacement; examples, benchmarks and the README use only the new form."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional, cast

import torch

from ._validation import check_choice, check_positive_int
from .objectives import MonteCarloObjective, Objective, PathIntegralObjective, SupervisedObjective
from .recipe import SCHEDULES, Recipe, structure_is_known

__all__ = ["MODES", "LEGACY_KEYWORDS", "recipe_from_keywords"]

#: Training modes of the keyword form: Algorithm 1, Algorithm 2, and the standard baseline.
MODES = ("monte_carlo", "path_integral", "standard")
_MC_SETTINGS = (
    "state_sampler",
    "time_sampler",
    "num_samples",
    "counterexamples",
    "velocity_penalty",
    "rollout_solver",
    "rollout_points",
)
_PATH_SETTINGS = ("path_steps", "path_loss")
_SHARED_SETTINGS = ("potential", "detach_v")
#: Optimisation keywords -> the Recipe field they became.
_HOW = {
    "optimizer": "optimizer",
    "lr": "lr",
    "weight_decay": "weight_decay",
    "scheduler": "schedule",
    "scheduler_interval": "schedule_interval",
    "grad_clip": "grad_clip",
}
LEGACY_KEYWORDS = ("mode", *_MC_SETTINGS, *_PATH_SETTINGS, *_SHARED_SETTINGS, *_HOW)


def _objective(mode: Optional[str], settings: dict[str, Any]) -> Optional[Objective]:
    """The objective that the objective keywords describe (``None``: the default one).
    Settings that do not apply to ``mode`` raise."""
    mc = {k: settings[k] for k in _MC_SETTINGS if k in settings}
    path = {k: settings[k] for k in _PATH_SETTINGS if k in settings}
    shared = {k: settings[k] for k in _SHARED_SETTINGS if k in settings}
    if mode is None:
        if mc and path:
            raise ValueError(
                f"settings {sorted(mc)} (Monte Carlo) and {sorted(path)} (path integral) do not belong to one "
                "objective; pass an objective"
            )
        mode = "monte_carlo" if mc else ("path_integral" if path else None)
    if mode is None:
        return None
    foreign = {"monte_carlo": path, "path_integral": mc, "standard": {**mc, **path}}[mode]
    if mode == "standard" and "detach_v" in shared:
        foreign = {**foreign, "detach_v": shared["detach_v"]}
    if foreign:
        raise ValueError(f"settings {sorted(foreign)} do not apply to mode={mode!r}")
    if mode == "standard":
        return SupervisedObjective(**({"potential": shared["potential"]} if "potential" in shared else {}))
    if mode == "path_integral":
        if "path_steps" in path:
            check_positive_int("path_steps", path["path_steps"])
        if "path_loss" in path:
            check_choice("path_loss", path["path_loss"], ("continuous", "discrete"))
        renamed = {"steps": path.get("path_steps"), "form": path.get("path_loss")}
        return PathIntegralObjective(**{k: v for k, v in renamed.items() if v is not None}, **shared)
    return MonteCarloObjective(**mc, **shared)


def _instance_factory(instance: Any, model: torch.nn.Module) -> Any:
    """An optimizer instance as a factory (the recipe holds factories), after checking that
    it optimises only the model's parameters."""
    owned = {id(p) for p in model.parameters()}
    foreign = [p for group in instance.param_groups for p in group["params"] if id(p) not in owned]
    if foreign:
        raise ValueError(f"optimizer holds {len(foreign)} parameter(s) that are not the model's")
    return lambda params: instance


def _replacement(names: list[str]) -> str:
    what = [n for n in names if n not in _HOW]
    how = [f"{_HOW[n]}=..." for n in names if n in _HOW]
    if what == ["potential"]:
        # The potential alone adjusts the default objective: Recipe(potential=...) keeps what
        # Recipe.resolve chooses for it (e.g. MSEPotential's 8-step path integral), an
        # explicit objective would not (and default_recipe(model) already holds one).
        return f"recipe=Recipe({', '.join(['potential=...', *how])})"
    parts = []
    if what:
        parts.append("objective=MonteCarloObjective(...) / PathIntegralObjective(...) / SupervisedObjective(...)")
    if how:
        parts.append(f"recipe=Recipe({', '.join(how)}) (or dataclasses.replace(default_recipe(model), ...))")
    return " and ".join(parts)


def recipe_from_keywords(recipe: Recipe, keywords: dict[str, Any], model: torch.nn.Module) -> Recipe:
    """``recipe`` with the legacy keywords applied; warns once, naming the replacement."""
    unknown = sorted(k for k in keywords if k not in LEGACY_KEYWORDS)
    if unknown:
        raise TypeError(f"LyapunovTrainer got unexpected keyword argument(s) {unknown}")
    # scheduler=None meant no schedule (a constant rate); for the others None meant the default.
    given = {k: v for k, v in keywords.items() if v is not None or k == "scheduler"}
    if not given:
        return recipe
    warnings.warn(
        f"LyapunovTrainer keyword(s) {sorted(given)} are deprecated and will be removed; pass "
        f"{_replacement(sorted(given))} instead",
        FutureWarning,
        stacklevel=3,
    )
    mode = given.pop("mode", None)
    if mode is not None:
        check_choice("mode", mode, MODES)
    # Checked under the names the caller used (the Recipe names some of them differently).
    if isinstance(given.get("scheduler"), str):
        check_choice("scheduler", given["scheduler"], SCHEDULES)
    if "scheduler_interval" in given:
        check_choice("scheduler_interval", given["scheduler_interval"], ("epoch", "step"))
    how = {_HOW[k]: given.pop(k) for k in list(given) if k in _HOW}
    if isinstance(how.get("optimizer"), torch.optim.Optimizer):
        how["optimizer"] = _instance_factory(how["optimizer"], model)
    schedule = how.get("schedule")
    if schedule is None and "schedule" in how:
        how["schedule"] = "constant"
    elif hasattr(schedule, "step") and hasattr(schedule, "state_dict"):
        instance = schedule
        how["schedule"] = lambda optimizer: instance
    objective = _objective(mode, given)
    changes: dict[str, Any] = dict(how)
    if objective is not None:
        if recipe.objective is not None:
            raise ValueError("pass either objective or the keyword settings of an objective, not both")
        changes.update(objective=objective, potential=None)
    elif given:  # potential / detach_v alone adjust the default objective
        if recipe.objective is not None:
            raise ValueError(f"pass either objective or {sorted(given)}, not both (the objective holds its own)")
        if "detach_v" in given:
            if not structure_is_known(model):
                raise ValueError(
                    "detach_v needs an explicit objective for this model, e.g. objective=...(detach_v=...)"
                )
            # The default objective for the given potential (Recipe.resolve applies its
            # path_steps), then detach_v on it.
            with_potential = dataclasses.replace(recipe, potential=given.pop("potential", recipe.potential))
            base = cast(Objective, with_potential.resolve(model).objective)
            changes["objective"] = dataclasses.replace(base, **given)
            changes["potential"] = None
        else:
            changes["potential"] = given["potential"]
    return dataclasses.replace(recipe, **changes)
