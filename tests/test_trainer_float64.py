"""The discrete path loss as a user gets it, through ``LyapunovTrainer`` on a torchdyn model
in float64, against Eq. (16)-(17) computed in plain Python floats (an independent RK4 of the
same weights, cross entropy from its definition, the per-step rate ``1 - exp(-kappa dt)``):
equal to 1e-10, so no float32 step (a default ``t_span``, a grid, a rate) leaks into a
float64 run (issue 13)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchdyn.core import NeuralODE

from lyapunov_plugin import LyapunovTrainer, PathIntegralObjective


def _linear(layer: nn.Linear):
    weight, bias = layer.weight.detach().tolist(), layer.bias.detach().tolist()
    return lambda z: [sum(w * v for w, v in zip(row, z, strict=True)) + b for row, b in zip(weight, bias, strict=True)]


def _field(mlp: nn.Sequential):
    first, last = _linear(mlp[0]), _linear(mlp[2])
    return lambda z: last([math.tanh(h) for h in first(z)])


def _rk4_step(field, z: list[float], h: float) -> list[float]:
    k1 = field(z)
    k2 = field([a + h / 2 * b for a, b in zip(z, k1, strict=True)])
    k3 = field([a + h / 2 * b for a, b in zip(z, k2, strict=True)])
    k4 = field([a + h * b for a, b in zip(z, k3, strict=True)])
    return [a + h / 6 * (p + 2 * q + 2 * r + s) for a, p, q, r, s in zip(z, k1, k2, k3, k4, strict=True)]


def _cross_entropy(logits: list[float], label: int) -> float:
    top = max(logits)
    return top + math.log(sum(math.exp(v - top) for v in logits)) - logits[label]


def _eq_16_17(x, y, *, encoder, field, readout, kappa: float, steps: int, first: int = 0) -> float:
    """Eq. (16)-(17) summed over the intervals that start at grid state ``first`` or later."""
    dt, total = 1.0 / steps, 0.0
    for row, label in zip(x.tolist(), y.tolist(), strict=True):
        z = encoder(row)
        values = [_cross_entropy(readout(z), label)]
        for _ in range(steps):
            z = _rk4_step(field, z, dt)
            values.append(_cross_entropy(readout(z), label))
        total += sum(max(0.0, values[j] - math.exp(-kappa * dt) * values[j - 1]) for j in range(first + 1, steps + 1))
    return total / x.shape[0]


@pytest.mark.parametrize("shape", ["bare", "sequential"])
def test_trainer_discrete_path_loss_in_float64_equals_eq_16_17(shape):
    torch.manual_seed(0)
    width = 3 if shape == "bare" else 4
    f = nn.Sequential(nn.Linear(width, 16), nn.Tanh(), nn.Linear(16, width))
    if shape == "bare":  # torchdyn's tutorial model: the state is the logits, eta(0) = x
        model = NeuralODE(f, solver="rk4").double()
        x = torch.randn(6, 3, dtype=torch.float64)
        encoder = readout = lambda z: z  # noqa: E731
    else:
        model = nn.Sequential(nn.Linear(5, 4), NeuralODE(f, solver="rk4"), nn.Linear(4, 3)).double()
        x = torch.randn(6, 5, dtype=torch.float64)
        encoder, readout = _linear(model[0]), _linear(model[2])
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    kappa, steps = 2.3, 7
    trainer = LyapunovTrainer(
        model, objective=PathIntegralObjective(form="discrete", steps=steps), kappa=kappa, progress=False
    )
    out = trainer.loss(x, y)
    assert out.loss.dtype == torch.float64
    expected = _eq_16_17(x, y, encoder=encoder, field=_field(f), readout=readout, kappa=kappa, steps=steps)
    assert expected > 0  # the untrained model violates the condition: not a 0 == 0 check
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-10, abs_tol=0.0)


@pytest.mark.parametrize(("start", "first"), [(0.5, 4), (0.25, 2), (0.01, 1), (0.95, 6)])
def test_discrete_path_loss_from_a_start_fraction_sums_the_later_intervals_only(start: float, first: int):
    # steps = 7: grid states at j / 7; the loss covers the intervals that begin at or after
    # start * t_end (the first such state is ceil(7 start)), and always at least the last one.
    torch.manual_seed(1)
    f = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 3))
    model = NeuralODE(f, solver="rk4").double()
    x = torch.randn(6, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    kappa, steps = 2.3, 7
    objective = PathIntegralObjective(form="discrete", steps=steps, start=start)
    out = LyapunovTrainer(model, objective=objective, kappa=kappa, progress=False).loss(x, y)
    identity = lambda z: z  # noqa: E731
    expected = _eq_16_17(
        x, y, encoder=identity, field=_field(f), readout=identity, kappa=kappa, steps=steps, first=first
    )
    assert expected > 0
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-10, abs_tol=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": -0.1}, "start must be >= 0"),
        ({"start": 1.0}, r"start must be a fraction of the horizon in \[0, 1\)"),
        ({"start": float("nan")}, "start"),
        ({"start": 0.5, "form": "continuous"}, "start applies to form='discrete'"),
    ],
)
def test_start_is_validated(kwargs, match):
    kwargs.setdefault("form", "discrete")
    with pytest.raises((ValueError, TypeError), match=match):
        PathIntegralObjective(**kwargs)
