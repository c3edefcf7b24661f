"""The recipe value (what is minimised and how it is optimised) is one object that the
trainer, the Lightning module and a plain loop share; the legacy keywords map onto it with a
FutureWarning; and the refactor that introduced it left what a seeded run learns unchanged."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

from lyapunov_plugin import (
    KappaWarmup,
    LyapunovTrainer,
    MonteCarloObjective,
    MSEPotential,
    PathIntegralObjective,
    Recipe,
    SupervisedObjective,
    default_objective,
    default_recipe,
)
from lyapunov_plugin.recipe import DEFAULT_LR, cosine_factor

from . import seeded_runs
from .models import blobs, loader, torchdyn_data_controlled, torchdyn_plain


def test_seeded_runs_learn_what_they_learned_before_the_refactor():
    saved = torch.load(seeded_runs.DATA, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the runs use only the new form
        trained = seeded_runs.trained_parameters()
    assert sorted(trained) == sorted(saved)
    for name, state in trained.items():
        for key, value in state.items():
            torch.testing.assert_close(value, saved[name][key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_the_trainer_lightning_and_a_plain_loop_get_one_default():
    model = torchdyn_data_controlled()
    recipe = default_recipe(model)
    assert LyapunovTrainer(model, progress=False).recipe == recipe
    assert recipe.objective == default_objective(model)
    assert recipe.lr == DEFAULT_LR and recipe.kappa_at(1) == 10.0 and recipe.schedule == "cosine"
    pytest.importorskip("pytorch_lightning")
    from lyapunov_plugin.adapters.lightning import LyapunovModule

    assert LyapunovModule(model).recipe == recipe


def test_lightning_learning_rates_equal_the_trainers_epoch_by_epoch():
    model, epochs = torchdyn_plain(), 5
    recipe = default_recipe(model)
    configured = recipe.configure_optimizers(model.parameters(), epochs)
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    trainer = LyapunovTrainer(torchdyn_plain(), progress=False)
    x, y = blobs(32)
    trainer.fit(loader(x, y), epochs=epochs)
    for epoch in range(1, epochs + 1):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(DEFAULT_LR * cosine_factor(epoch, epochs))
        assert trainer.history[epoch - 1]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()


def test_a_plain_loop_with_the_recipe_matches_the_trainer_bit_for_bit():
    x, y = blobs(48, seed=3)
    data = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)]
    torch.manual_seed(0)
    model_a = torchdyn_data_controlled()
    torch.manual_seed(0)
    model_b = torchdyn_data_controlled()
    trainer = LyapunovTrainer(model_a, seed=5, progress=False)
    trainer.fit(data, epochs=2)
    recipe = default_recipe(model_b)
    optimizer = recipe.build_optimizer(model_b.parameters())
    base = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(5)
    for epoch in (1, 2):
        recipe.set_learning_rate(optimizer, base, epoch, 2)
        for xb, yb in data:
            optimizer.zero_grad()
            recipe.objective(model_b, xb, yb, kappa=recipe.kappa_at(epoch), generator=generator).loss.backward()
            recipe.clip_gradients(model_b.parameters())
            optimizer.step()
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_shortcuts_replace_fields_of_the_recipe():
    model = torchdyn_data_controlled()
    t = LyapunovTrainer(model, objective=SupervisedObjective(), kappa=3.0, progress=False)
    assert t.objective == SupervisedObjective() and t.kappa_at(1) == 3.0
    custom = Recipe(objective=MonteCarloObjective(num_samples=4), lr=3e-3, schedule="constant")
    t = LyapunovTrainer(model, custom, kappa=KappaWarmup(start=1.0, end=5.0, epochs=2), progress=False)
    assert t.recipe.lr == 3e-3 and t.recipe.objective == MonteCarloObjective(num_samples=4)
    assert t.kappa_at(1) == 1.0 and t.kappa_at(3) == 5.0
    assert default_recipe(model, potential=MSEPotential()).objective.potential == MSEPotential()


def test_recipe_validates_its_settings():
    with pytest.raises(ValueError, match="lr must be > 0, got -1"):
        Recipe(lr=-1)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Recipe(optimizer="lbfgs")
    with pytest.raises(TypeError, match="not an optimizer instance"):
        Recipe(optimizer=torch.optim.Adam([nn.Parameter(torch.zeros(1))]))
    with pytest.raises(ValueError, match="schedule must be one of"):
        Recipe(schedule="linear")
    with pytest.raises(ValueError, match="schedule_interval must be one of"):
        Recipe(schedule_interval="batch")
    with pytest.raises(ValueError, match="grad_clip must be > 0"):
        Recipe(grad_clip=0.0)
    with pytest.raises(TypeError, match="objective must be a lyapunov_plugin Objective or None, got str"):
        Recipe(objective="mc")
    with pytest.raises(ValueError, match="potential applies only to the default objective"):
        Recipe(objective=PathIntegralObjective(), potential=MSEPotential())
    with pytest.raises(ValueError, match="kappa must be > 0"):
        Recipe(kappa=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Recipe().lr = 1.0  # type: ignore[misc]


def test_legacy_keywords_warn_and_name_the_replacement():
    model = torchdyn_data_controlled()
    with pytest.warns(FutureWarning, match=r"\['mode'\] are deprecated.*objective=.*SupervisedObjective"):
        t = LyapunovTrainer(model, mode="standard", progress=False)
    assert t.objective == SupervisedObjective()
    with pytest.warns(FutureWarning, match=r"\['lr', 'scheduler'\] are deprecated.*Recipe\(lr=..., schedule=...\)"):
        t = LyapunovTrainer(model, lr=3e-3, scheduler="constant", progress=False)
    assert t.recipe.lr == 3e-3 and t.recipe.schedule == "constant" and t.objective == default_objective(model)
    replacement = r"\['potential'\] are deprecated and will be removed; pass recipe=Recipe\(potential=...\) instead"
    with pytest.warns(FutureWarning, match=replacement):
        t = LyapunovTrainer(model, potential=MSEPotential(), progress=False)  # the default objective, new V
    assert t.objective == dataclasses.replace(default_objective(model), potential=MSEPotential())
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['learning_rate'\]"):
        LyapunovTrainer(model, learning_rate=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LyapunovTrainer(model, progress=False)
        LyapunovTrainer(model, objective=SupervisedObjective(), kappa=2.0, progress=False)


def test_a_potential_sets_the_default_path_integrals_rollout_steps_and_only_that():
    """MSEPotential.path_steps = 8: the default path integral of a regression recipe rolls out
    with eight RK4 steps (docs/defaults.md, "Regression"); cross entropy keeps four, and an
    explicit objective, a model's own fixed steps and a coarser potential are left alone."""
    from lyapunov_plugin import CrossEntropyPotential, Potential

    x = torch.randn(4, 2)
    adaptive = torchdyn_plain(solver="dopri5")  # the path-integral branch of default_objective
    regression = Recipe(potential=MSEPotential()).resolve(adaptive, x).objective
    assert isinstance(regression, PathIntegralObjective)
    assert (
        (regression.steps, regression.form, regression.solver)
        == (MSEPotential.path_steps, "continuous", None)
        == (
            8,
            "continuous",
            None,
        )
    )
    assert Recipe().resolve(adaptive, x).objective == PathIntegralObjective()
    assert Recipe(potential=CrossEntropyPotential()).resolve(adaptive, x).objective.steps == 4
    # The trainer's keyword form reaches the same recipe.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert LyapunovTrainer(adaptive, potential=MSEPotential(), progress=False).recipe.objective == regression
    # An explicit objective is the user's: its steps stay.
    explicit = PathIntegralObjective(potential=MSEPotential())
    assert Recipe(objective=explicit).resolve(adaptive, x).objective.steps == 4
    # A torchdyn rk4 model trains along its own steps (the discrete loss on the model's grid).
    own_steps = Recipe(potential=MSEPotential()).resolve(torchdyn_plain(solver="rk4"), x).objective
    assert (own_steps.solver, own_steps.form) == ("model", "discrete")

    class Fine(Potential):
        path_steps = 16

        def value(self, output, target):
            return (output - target).pow(2).sum(-1)

    class Coarse(Fine):
        path_steps = 2  # never fewer steps than the objective's own default

    assert Recipe(potential=Fine()).resolve(adaptive, x).objective.steps == 16
    assert Recipe(potential=Coarse()).resolve(adaptive, x).objective.steps == 4


@pytest.mark.parametrize("own_steps", [4, 6])
def test_a_model_whose_own_grid_is_coarser_than_the_regression_rollout_trains_along_it(own_steps):
    """MSEPotential asks for 8 rollout steps; a model that computes 4 or 6 fixed RK4 steps at
    inference trains the map it computes (the discrete loss along its own steps), not a flow on
    a finer grid. The keyword form with detach_v reaches the same choice."""
    from lyapunov_plugin import FixedStepSolver, ODEModel
    from lyapunov_plugin.blocks import MLPDynamics

    model = ODEModel(
        MLPDynamics(3, 4, (8,)),
        state_shape=(3,),
        encoder=nn.Linear(2, 4),
        readout=nn.Linear(3, 1),
        solver=FixedStepSolver(method="rk4", steps=own_steps),
    )
    chosen = Recipe(potential=MSEPotential()).resolve(model).objective
    assert (chosen.form, chosen.solver, chosen.steps) == ("discrete", "model", own_steps)
    assert isinstance(chosen.potential, MSEPotential)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = LyapunovTrainer(model, potential=MSEPotential(), detach_v=True, progress=False).objective
    assert legacy == dataclasses.replace(chosen, detach_v=True)
    adaptive = torchdyn_plain(solver="dopri5")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        legacy = LyapunovTrainer(adaptive, potential=MSEPotential(), detach_v=True, progress=False).objective
    assert (legacy.steps, legacy.detach_v, type(legacy.potential)) == (8, True, MSEPotential)


def test_a_potentials_path_steps_are_validated_by_name():
    from lyapunov_plugin import Potential

    class Odd(Potential):
        path_steps = "8"

        def value(self, output, target):
            return (output - target).pow(2).sum(-1)

    with pytest.raises(TypeError, match=r"path_steps of Odd must be None or a positive int, got '8'"):
        Recipe(potential=Odd()).resolve(torchdyn_plain(solver="dopri5"), torch.randn(4, 2))
