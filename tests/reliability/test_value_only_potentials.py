"""Potentials that define only ``value`` (a user's own, the focal loss, ``MarginPotential``)
train models with linear and MLP readouts under every objective: Monte Carlo (Algorithm 1)
and both path-integral forms (Eq. 12 along the rollout, Eq. 16-17)."""

import math

import pytest
import torch
import torch.nn as nn

from lyapunov_plugin import (
    FixedStepSolver,
    LyapunovTrainer,
    MarginPotential,
    MonteCarloObjective,
    ODEModel,
    PathIntegralObjective,
    Potential,
)
from lyapunov_plugin.blocks import MLPDynamics

from ..models import blobs, loader


class Focal(Potential):
    """The README's example: defines only the value."""

    def value(self, output, target):
        log_p = output.log_softmax(-1).gather(-1, target[:, None])[:, 0]
        return -((1 - log_p.exp()) ** 2) * log_p


def _model(readout: str) -> ODEModel:
    torch.manual_seed(0)
    head = nn.Linear(3, 2) if readout == "linear" else nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    return ODEModel(
        MLPDynamics(3, 2, (16,)), state_shape=(3,), readout=head, solver=FixedStepSolver(method="rk4", steps=4)
    )


OBJECTIVES = {
    "monte_carlo": lambda p: MonteCarloObjective(potential=p, num_samples=8),
    "path_continuous": lambda p: PathIntegralObjective(potential=p),
    "path_discrete": lambda p: PathIntegralObjective(potential=p, form="discrete"),
}


@pytest.mark.parametrize("readout", ["linear", "mlp"])
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("potential", [Focal(), MarginPotential()], ids=["focal", "margin"])
def test_a_value_only_potential_trains(readout, objective, potential):
    x, y = blobs(96, seed=1)
    model = _model(readout)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = LyapunovTrainer(model, OBJECTIVES[objective](potential), seed=0, progress=False)
    history = trainer.fit(loader(x, y), epochs=6)
    assert all(math.isfinite(r["train_loss"]) for r in history)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=False))
    if objective != "monte_carlo":  # trajectories are trained directly: the blobs are learned
        assert trainer.evaluate((x, y))["error"] <= 0.1
