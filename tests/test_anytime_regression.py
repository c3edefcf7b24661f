"""anytime_predict for regression (``potential=MSEPotential()``): the label-free rule.

With ``V = mean (psi - y)^2`` Eq. (10) at a state reads ``(2/m) r . u <= -(kappa/m) |r|^2``
for the residual ``r = psi - y`` and the output velocity ``u = dpsi/dt``; by Cauchy-Schwarz
``RMS(r) <= 2 RMS(u) / kappa`` there. The rule stops where that bound is below ``level``.

The known-answer problem is a linear contraction ``f(eta) = -a (eta - y(x))`` with the
identity readout and ``eta(0) = 0``: with RK4 steps of size ``h`` the state after ``k``
steps is ``y (1 - R^k)`` with ``R`` RK4's amplification factor at ``-a h``, and the velocity
there is ``a y R^k`` exactly, so where the rule fires follows in closed form. For
``a = kappa / 2`` Eq. (10) holds with equality and the bound is the true residual.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lyapunov_plugin import LyapunovTrainer, MSEPotential, ODEModel, Recipe, anytime_predict
from lyapunov_plugin.anytime import anytime_trace, choose_level

KAPPA = 4.0
STEPS = 20


class Contract(nn.Module):
    """``f(eta, x) = -a (eta - y)`` with ``x = [a, y]``."""

    def forward(self, eta: torch.Tensor, context: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -context[:, :1] * (eta - context[:, 1:])


def contraction_model() -> ODEModel:
    return ODEModel(Contract(), state_shape=(2,), readout=None)


def inputs(rates: list[float], targets: list[list[float]]) -> torch.Tensor:
    a = torch.tensor(rates, dtype=torch.float64)[:, None]
    return torch.cat([a, torch.tensor(targets, dtype=torch.float64)], dim=1)


def rk4_factor(z: float) -> float:
    return 1 + z + z**2 / 2 + z**3 / 6 + z**4 / 24


def expected_stop(a: float, target: list[float], level: float, kappa: float) -> int:
    """First RK4 step index ``k`` in ``[0, STEPS)`` where ``2 RMS(u_k) / kappa < level``
    (``STEPS``: never), in plain Python float64."""
    rms_target = math.sqrt(sum(v * v for v in target) / len(target))
    factor = rk4_factor(-a / STEPS)
    for k in range(STEPS):
        if 2 * a * factor**k * rms_target / kappa < level:
            return k
    return STEPS


TARGETS = [[1.0, -2.0], [0.5, 0.5], [3.0, 1.0], [-0.2, 0.1], [2.0, 2.0]]


@pytest.mark.parametrize("level", [0.05, 0.2, 0.6])
def test_the_rule_stops_where_the_bound_first_falls_below_the_level(level: float) -> None:
    model = contraction_model().double()
    rates = [KAPPA / 2] * 3 + [KAPPA, 3 * KAPPA]  # Eq. (10) tight, then strictly satisfied
    x = inputs(rates, TARGETS)
    result = anytime_predict(model, x, level=level, kappa=KAPPA, potential=MSEPotential(), solver="rk4", steps=STEPS)
    assert result.regression
    for i, (a, target) in enumerate(zip(rates, TARGETS, strict=True)):
        k = expected_stop(a, target, level, KAPPA)
        assert bool(result.converged[i]) == (k < STEPS)
        stop_k = k if k < STEPS else STEPS
        assert float(result.stop_time[i]) == pytest.approx(stop_k / STEPS, abs=1e-12)
        assert int(result.steps[i]) == stop_k
        # One evaluation at t = 0, four per step; a full solve skips the evaluation at t_end.
        assert int(result.nfe[i]) == (1 + 4 * k if k < STEPS else 4 * STEPS)
        factor = rk4_factor(-a / STEPS) ** stop_k
        expected_output = torch.tensor(target, dtype=torch.float64) * (1 - factor)
        torch.testing.assert_close(result.logits[i], expected_output, rtol=1e-12, atol=1e-12)
        if k < STEPS:
            # The guarantee where Eq. (10) holds: the stopped output is within `level` of the
            # target (RMS), and with a = kappa / 2 the bound is the residual itself.
            residual = (result.logits[i] - torch.tensor(target, dtype=torch.float64)).pow(2).mean().sqrt()
            assert float(residual) < level
            bound = 2 * float(result.potential[i]) / KAPPA
            if a == KAPPA / 2:
                assert float(residual) == pytest.approx(bound, rel=1e-12)
            else:
                assert float(residual) < bound
    # Where Eq. (10) holds on the rest of the path too, the output at t_end is within 2 level.
    full = anytime_predict(model, x, level=0.0, potential=MSEPotential(), solver="rk4", steps=STEPS)
    deviation = (result.logits - full.logits).pow(2).mean(-1).sqrt()
    assert bool((deviation[result.converged] <= 2 * level).all())
    assert not bool(result.false_stops(full.logits, tolerance=2 * level).any())


def test_a_field_slower_than_eq10_can_stop_further_from_the_target() -> None:
    # a < kappa / 2: Eq. (10) at rate kappa fails everywhere, and the bound is not one: the
    # rule with that kappa stops while the residual is still above the level.
    model = contraction_model().double()
    x = inputs([KAPPA / 8], [[2.0, 2.0]])
    result = anytime_predict(model, x, level=0.5, kappa=KAPPA, potential=MSEPotential(), solver="rk4", steps=STEPS)
    residual = float((result.logits[0] - 2.0).pow(2).mean().sqrt())
    assert bool(result.converged[0]) and residual > 0.5


def test_replay_equals_anytime_predict_with_dopri5() -> None:
    torch.manual_seed(0)
    model = contraction_model().double()
    x = inputs(torch.empty(30).uniform_(0.5, 6.0).tolist(), torch.randn(30, 2).tolist())
    trace = anytime_trace(model, x, potential=MSEPotential(), solver="dopri5")
    assert trace.regression
    for level, kappa in [(0.01, 1.0), (0.1, KAPPA), (0.5, 2.0), (0.0, 1.0)]:
        direct = anytime_predict(model, x, level=level, kappa=kappa, potential=MSEPotential(), solver="dopri5")
        replay = trace.apply(level=level, kappa=kappa)
        assert torch.equal(direct.converged, replay.converged)
        assert torch.equal(direct.nfe, replay.nfe)
        torch.testing.assert_close(direct.logits, replay.logits, rtol=0, atol=0)
        torch.testing.assert_close(direct.stop_time, replay.stop_time, rtol=0, atol=0)
        assert trace.false_stop_rate(replay, tolerance=1e-3) == pytest.approx(
            float(direct.false_stops(trace.final.logits, 1e-3).double().mean())
        )


def test_choose_level_for_regression_needs_a_tolerance_and_keeps_the_target() -> None:
    torch.manual_seed(1)
    model = contraction_model().double()
    x = inputs(torch.empty(200).uniform_(0.5, 6.0).tolist(), torch.randn(200, 2).tolist())
    tolerance = 0.05
    choice = choose_level(
        model,
        x,
        potential=MSEPotential(),
        kappa=KAPPA,
        tolerance=tolerance,
        max_false_stop_rate=0.02,
        solver="dopri5",
    )
    levels = [row[0] for row in choice.curve]
    assert levels[0] == pytest.approx(tolerance / 100) and levels[-1] == pytest.approx(10 * tolerance)
    assert choice.level > 0 and choice.false_stop_rate <= 0.02
    # The chosen level checked directly, with its own definition of a false stop.
    direct = anytime_predict(model, x, level=choice.level, kappa=KAPPA, potential=MSEPotential(), solver="dopri5")
    full = anytime_predict(model, x, level=0.0, potential=MSEPotential(), solver="dopri5")
    deviation = (direct.logits - full.logits).pow(2).mean(-1).sqrt()
    assert float((deviation > tolerance).double().mean()) == pytest.approx(choice.false_stop_rate)
    assert direct.mean_nfe < full.mean_nfe
    with pytest.raises(ValueError, match="tolerance is required"):
        choose_level(model, x, potential=MSEPotential())
    with pytest.raises(ValueError, match="tolerance applies to regression"):
        choose_level(model, torch.randn(4, 3), tolerance=0.1)
    with pytest.raises(ValueError, match="tolerance is required"):
        direct.false_stops(full.logits)
    with pytest.raises(ValueError, match="level is required"):
        anytime_predict(model, x, potential=MSEPotential())


def test_the_trainer_passes_its_regression_potential() -> None:
    readout = nn.Linear(2, 2).double()  # a trainable readout, set to the identity
    with torch.no_grad():
        readout.weight.copy_(torch.eye(2))
        readout.bias.zero_()
    model = ODEModel(Contract(), state_shape=(2,), readout=readout).double()
    trainer = LyapunovTrainer(model, Recipe(potential=MSEPotential()), progress=False)
    x = inputs([KAPPA / 2, KAPPA], [[1.0, 0.0], [0.0, 1.0]])
    result = trainer.anytime_predict(x, level=0.3, kappa=KAPPA, solver="rk4", steps=STEPS)
    assert result.regression and bool(result.converged.all())
    assert result.prediction.shape == (2, 2)


def test_benchmark_quick_mode(tmp_path) -> None:
    """``python -m benchmarks.anytime_regression --quick`` end to end: files, consistent numbers."""
    import json

    from benchmarks import anytime_regression as bench

    bench.cli(["--quick", "--out", str(tmp_path)])
    assert (tmp_path / "anytime_regression_quick.md").stat().st_size > 0
    row = json.loads((tmp_path / "anytime_regression_quick.json").read_text())["rows"][0]
    for method in ("lyanet", "standard"):
        result = row[method]
        assert 1.0 <= result["mean_nfe_anytime"] <= result["mean_nfe_full"]
        assert 0.0 <= result["false_stop_rate"] <= 1.0 and 0.0 <= result["converged_fraction"] <= 1.0
        assert result["mse_full"] >= 0.0 and result["mse_anytime"] >= 0.0
        assert result["nfe_batched_dopri5"] >= 8


class ContractGrid(nn.Module):
    """``f(eta, x) = -a (eta - y)`` on a ``(2, 3)`` state, ``x = [a, y.flatten()]``."""

    def forward(self, eta: torch.Tensor, context: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -context[:, :1, None] * (eta - context[:, 1:].reshape(-1, 2, 3))


def test_outputs_with_several_dimensions_replay_as_they_solve() -> None:
    """A ``(B, 2, 3)`` regression output: the trace's replay equals the direct solve."""
    model = ODEModel(ContractGrid(), state_shape=(2, 3), readout=None)
    torch.manual_seed(0)
    x = torch.cat([torch.tensor([[1.0], [2.0], [4.0], [8.0]]), torch.randn(4, 6)], dim=1).double()
    settings = dict(potential=MSEPotential(), solver="rk4", steps=STEPS)
    direct = anytime_predict(model, x, level=0.05, kappa=KAPPA, **settings)
    replayed = anytime_trace(model, x, **settings).apply(level=0.05, kappa=KAPPA)
    assert direct.logits.shape == replayed.logits.shape == (4, 2, 3)
    assert torch.equal(direct.logits, replayed.logits) and torch.equal(direct.nfe, replayed.nfe)
    assert 0 < int(direct.converged.sum()) < 4  # the fast rates stop, the slowest does not


class First(nn.Module):
    def forward(self, eta: torch.Tensor) -> torch.Tensor:
        return eta[:, 0]


def test_regression_inputs_that_cannot_work_are_refused_by_name() -> None:
    model = contraction_model()
    x = inputs([KAPPA, KAPPA], [[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="kappa must be > 0 with potential=MSEPotential"):
        anytime_predict(model, x, potential=MSEPotential(), level=0.1, kappa=0.0)
    classification = anytime_trace(model, x, solver="rk4", steps=STEPS)
    with pytest.raises(ValueError, match="does not match the trace"):
        choose_level(None, None, trace=classification, potential=MSEPotential(), tolerance=0.1)
    flat = ODEModel(Contract(), state_shape=(2,), readout=First())
    with pytest.raises(ValueError, match=r"outputs of shape \(B, k\).*got shape \(2,\)"):
        anytime_predict(flat, x, potential=MSEPotential(), level=0.1, kappa=KAPPA, solver="rk4", steps=STEPS)


def test_the_trainer_defaults_the_regression_kappa_to_its_training_rate() -> None:
    readout = nn.Linear(2, 2).double()
    with torch.no_grad():
        readout.weight.copy_(torch.eye(2))
        readout.bias.zero_()
    model = ODEModel(Contract(), state_shape=(2,), readout=readout).double()
    trainer = LyapunovTrainer(model, Recipe(potential=MSEPotential()), kappa=KAPPA, progress=False)
    x = inputs([KAPPA / 2, KAPPA / 4], [[1.0, 0.0], [0.0, 1.0]])
    implicit = trainer.anytime_predict(x, level=0.3, solver="rk4", steps=STEPS)
    explicit = anytime_predict(
        trainer.model, x, potential=MSEPotential(), level=0.3, kappa=KAPPA, solver="rk4", steps=STEPS
    )
    assert torch.equal(implicit.nfe, explicit.nfe) and torch.equal(implicit.logits, explicit.logits)
    slow = anytime_predict(trainer.model, x, potential=MSEPotential(), level=0.3, kappa=1.0, solver="rk4", steps=STEPS)
    assert int(slow.nfe.sum()) > int(implicit.nfe.sum())  # the anytime default rate (1) would stop later
