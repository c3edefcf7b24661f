"""torchdyn's own quick-start model (a bare ``NeuralODE(f)`` whose 2-D state is read out as the
logits, ``eta(0) = x``) trains with the default recipe: the discrete path loss along an RK4-8
rollout (benchmarks/bare_torchdyn.py has the diagnosis; the continuous default reached ~50 %
on two moons)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lyapunov_plugin import LyapunovTrainer, PathIntegralObjective, default_objective

torchdyn = pytest.importorskip("torchdyn")
sklearn = pytest.importorskip("sklearn")


def _tutorial_model() -> nn.Module:
    from torchdyn.core import NeuralODE

    field = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))
    return NeuralODE(field, solver="dopri5", sensitivity="adjoint")


def test_the_bare_flow_gets_the_discrete_path_loss_and_other_patterns_keep_theirs():
    from .models import torchdyn_data_controlled, torchdyn_plain

    assert default_objective(_tutorial_model()) == PathIntegralObjective(form="discrete", steps=8)
    assert default_objective(torchdyn_plain(solver="dopri5")) == PathIntegralObjective()  # trainable readout
    assert default_objective(torchdyn_data_controlled()).name == "path_integral"  # trainable encoder


def test_torchdyns_tutorial_model_learns_two_moons_with_the_default_recipe():
    from sklearn.datasets import make_moons

    x, y = make_moons(1400, noise=0.1, random_state=0)  # the setting: 1,000 training points, 30 epochs
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = _tutorial_model()
    trainer = LyapunovTrainer(model, seed=0, progress=False)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:1000], y[:1000]), batch_size=64, shuffle=True)
    trainer.fit(data, epochs=30)
    error = trainer.evaluate((x[1000:], y[1000:]))["error"]
    assert error < 0.1, error  # the continuous RK4-4 default stayed near chance (0.45-0.55)


def test_the_bare_flows_default_recipe_has_its_own_kappa_and_lr_and_explicit_values_win():
    from lyapunov_plugin import Recipe, default_recipe
    from lyapunov_plugin.objectives import BARE_FLOW_KAPPA, BARE_FLOW_LR, DEFAULT_KAPPA
    from lyapunov_plugin.recipe import DEFAULT_LR

    from .models import torchdyn_data_controlled, torchdyn_plain

    bare = default_recipe(_tutorial_model())
    assert (bare.kappa_at(1), bare.lr) == (BARE_FLOW_KAPPA, BARE_FLOW_LR) == (3.0, 3e-2)
    assert LyapunovTrainer(_tutorial_model(), progress=False).recipe == bare
    # what the user sets is kept, on the bare flow too
    explicit = Recipe(kappa=10.0, lr=1e-3).resolve(_tutorial_model())
    assert (explicit.kappa_at(1), explicit.lr) == (10.0, 1e-3)
    for other in (torchdyn_plain(solver="dopri5"), torchdyn_data_controlled()):
        recipe = default_recipe(other)
        assert (recipe.kappa_at(1), recipe.lr) == (DEFAULT_KAPPA, DEFAULT_LR) == (10.0, 1e-2)
    # an explicit objective takes the plain defaults at once (nothing left to resolve)
    fixed = Recipe(objective=PathIntegralObjective(form="discrete", steps=8))
    assert (fixed.kappa_at(1), fixed.lr) == (10.0, 1e-2)
    assert fixed.resolve(_tutorial_model()) is fixed
