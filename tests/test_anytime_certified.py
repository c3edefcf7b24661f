"""The certified stop of ``anytime_predict(..., rule="certified")`` (lyapunov_plugin.speed).

Checked here: the logit-rate bound against an independent brute-force maximum over the
vertices of the activation box (float64, exact for a field whose last bounded activation
feeds its last linear layer) and, by Hypothesis, against the field's actual rate at random
states, contexts and times; the stopping time on a saturated field whose logit gaps grow at
exactly the bounded rate (closed form: ``t > G / (1 + G) t_end``); no false stop on
trained and random models (RK4 and dopri5, torchdyn and ``ODEModel``); replay equals the
direct solve; ``rule="either"`` never stops later nor falsely more often than the Lyapunov
rule; and the refusals.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lyapunov_plugin import LyapunovTrainer, MSEPotential, ODEModel, anytime_predict, as_lyapunov_model
from lyapunov_plugin.anytime import anytime_trace, choose_level
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.speed import LogitRateBound, certified_stops, logit_rate_bound, solver_gain
from tests import models


def _mlp_model(seed: int, *, hidden=(5,), readout: bool = True, dtype=torch.float64) -> ODEModel:
    torch.manual_seed(seed)
    dynamics = MLPDynamics(3, 2, hidden=hidden, time_dependent=True)
    model = ODEModel(dynamics, state_shape=(3,), encoder=nn.Linear(2, 2), readout=nn.Linear(3, 4) if readout else None)
    return model.to(dtype)


def _brute_force(model: ODEModel) -> torch.Tensor:
    """max over the vertices of [-1, 1]^H of |(W_c - W_j)(A s + a)| (independent of the module)."""
    last = model.dynamics.net[-1]
    a, a0 = last.weight.detach().double(), last.bias.detach().double()
    w = model.readout_module.weight.detach().double()
    m, width = w.shape[0], a.shape[1]
    vertices = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=width)), dtype=torch.float64)
    z_rate = (vertices @ a.T + a0) @ w.T  # (2^H, m): dz/dt at every vertex
    out = torch.zeros(m, m, dtype=torch.float64)
    for c in range(m):
        for j in range(m):
            out[c, j] = (z_rate[:, c] - z_rate[:, j]).abs().max()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bound_equals_the_brute_force_maximum_over_the_activation_box(seed: int) -> None:
    model = _mlp_model(seed)
    bound = logit_rate_bound(model)
    torch.testing.assert_close(bound.pairwise, _brute_force(model), rtol=1e-12, atol=1e-12)
    assert bound.pairwise.dtype == torch.float64
    assert torch.equal(bound.pairwise, bound.pairwise.T)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.1, 1.0, 10.0, 1e3]),
    hidden=st.sampled_from([(5,), (4, 3)]),
    identity=st.booleans(),
)
def test_bound_holds_at_random_states_contexts_and_times(seed: int, scale: float, hidden, identity: bool) -> None:
    model = _mlp_model(seed % 7, hidden=hidden, readout=not identity)
    g = torch.Generator().manual_seed(seed)
    eta = scale * torch.randn(64, 3, generator=g, dtype=torch.float64)
    context = scale * torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.rand(64, generator=g, dtype=torch.float64)
    with torch.no_grad():
        f = model.vector_field(eta, context, t)
        rate = f if identity else f @ model.readout_module.weight.double().T  # dz/dt
    gap_rate = (rate[:, :, None] - rate[:, None, :]).abs()  # (B, m, m)
    assert bool((gap_rate <= logit_rate_bound(model).pairwise + 1e-12).all())


def test_rk4_stops_where_the_gap_first_exceeds_its_reach() -> None:
    model = models.saturated_paper_model()
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    out = anytime_predict(model, x, rule="certified", solver="rk4", steps=20)
    # gap(t) = d t and reach(t) = (1 - t) d (G = 1): strictly larger from t = 0.55 (at 0.5 they are equal).
    torch.testing.assert_close(out.stop_time, torch.full((2,), 0.55, dtype=torch.float64))
    assert out.converged.all() and out.prediction.tolist() == [0, 2]
    assert out.nfe.tolist() == [1 + 4 * 11] * 2  # the first evaluation, then 3 stages + the check per step
    full = anytime_predict(model, x, level=0.0, solver="rk4", steps=20)
    assert torch.equal(out.prediction, full.prediction)


def test_dopri5_stops_at_the_first_accepted_state_past_the_closed_form_time() -> None:
    model = models.saturated_paper_model()
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    gain = solver_gain("dopri5")
    assert gain == pytest.approx(1 + 2 * 2187 / 6784)
    threshold = gain / (1 + gain)
    trace = anytime_trace(model, x, solver="dopri5")
    out = anytime_predict(model, x, rule="certified", solver="dopri5")
    for row in range(2):
        times = trace.time[row][trace.valid[row]]
        assert float(out.stop_time[row]) == float(times[times > threshold + 1e-9].min())
    replay = trace.apply(rule="certified")
    assert torch.equal(replay.stop_time, out.stop_time) and torch.equal(replay.nfe, out.nfe)


def _trained_torchdyn(seed: int, pattern):
    torch.manual_seed(seed)
    x, y = models.blobs(96, seed=seed)
    model = pattern()
    trainer = LyapunovTrainer(model, seed=seed, progress=False)
    trainer.fit(models.loader(x, y), epochs=4)
    return trainer.model, x


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
@pytest.mark.parametrize("pattern", ["data_controlled", "plain"])
def test_no_false_stop_on_trained_torchdyn_models(solver: str, pattern: str) -> None:
    pytest.importorskip("torchdyn")
    build = {
        "data_controlled": lambda: models.torchdyn_data_controlled(solver=solver),
        "plain": lambda: models.torchdyn_plain(solver=solver),
    }[pattern]
    model, x = _trained_torchdyn(0, build)
    kwargs = {"steps": 20} if solver == "rk4" else {}
    full = anytime_predict(model, x, level=0.0, solver=solver, **kwargs)
    out = anytime_predict(model, x, rule="certified", solver=solver, **kwargs)
    assert not bool(out.false_stops(full.logits).any())
    assert bool((out.nfe <= full.nfe).all())
    if solver == "rk4":  # on these separable blobs most examples are proven before t_end
        assert out.converged_fraction > 0.5
    trace = anytime_trace(model, x, solver=solver, **kwargs)
    replay = trace.apply(rule="certified")
    assert torch.equal(replay.stop_time, out.stop_time) and torch.equal(replay.prediction, out.prediction)


@pytest.mark.parametrize("seed", range(4))
def test_no_false_stop_on_random_fields_with_large_weights(seed: int) -> None:
    # Large output weights make the logits move fast and far, so stops happen and would be
    # wrong if the bound were not one.
    model = _mlp_model(seed, hidden=(8,), dtype=torch.float32)
    with torch.no_grad():
        model.dynamics.net[-1].weight.mul_(20.0)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(seed))
    for solver in ("rk4", "dopri5"):
        kwargs = {"steps": 20} if solver == "rk4" else {}
        full = anytime_predict(model, x, level=0.0, solver=solver, **kwargs)
        out = anytime_predict(model, x, rule="certified", solver=solver, **kwargs)
        assert not bool(out.false_stops(full.logits).any())
        assert bool(out.converged.any())  # stops happen (dopri5 checks only a few states: fewer)


def _bound(pairwise: torch.Tensor, l1: float = 0.0, field_max: float = 0.0) -> LogitRateBound:
    return LogitRateBound(
        pairwise=pairwise, module=nn.Identity(), readout_l1=torch.full_like(pairwise, l1), field_max=field_max
    )


def test_certified_stops_needs_a_strict_margin_for_every_other_class() -> None:
    bound = _bound(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]], dtype=torch.float64))
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 2.5, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([0.5, 0.5, 0.99], dtype=torch.float64)
    # Row 0: gaps 2 > 0.5 and 3 > 1.0; row 1: gap 0.5 = reach 0.5 (not strict); row 2: a tie.
    assert certified_stops(logits, t, 1.0, bound, 1.0).tolist() == [True, False, False]
    # The solver's gain multiplies the reach: with dopri5's 1.645 row 0's gap of 2 to class 1
    # still exceeds 0.82, with a gain of 4.5 (reach 2.25) it does not.
    assert certified_stops(logits, t, 1.0, bound, solver_gain("dopri5")).tolist() == [True, False, False]
    assert certified_stops(logits, t, 1.0, bound, 4.5).tolist() == [False, False, False]
    # At t_end nothing is left to move: any strict margin is proven.
    assert certified_stops(logits, torch.ones(3, dtype=torch.float64), 1.0, bound, 1.0).tolist() == [
        True,
        True,
        False,
    ]


def test_the_rounding_slack_grows_with_the_state_not_only_the_logits() -> None:
    # A readout bias that cancels a large state: small logits, a float32 state of 1e6 whose
    # every RK4 addition rounds by far more than the logits' ulp (found by review: without the
    # state term the rule stopped here and the class at t_end differed).
    dynamics = MLPDynamics(1, 1, hidden=(1,), time_dependent=False)
    with torch.no_grad():
        dynamics.net[2].weight.zero_()
        dynamics.net[2].bias.fill_(-0.8)  # f = -0.8, exactly its bound
    readout = nn.Linear(1, 2)
    with torch.no_grad():
        readout.weight.copy_(torch.tensor([[1.0], [0.0]]))
        readout.bias.copy_(torch.tensor([-1e6, 0.0]))
    model = ODEModel(
        dynamics, encoder=nn.Identity(), readout=readout, initial_state=lambda c: torch.full((c.shape[0], 1), 1e6 + 1.0)
    )
    x = torch.zeros(1, 1)
    out = anytime_predict(model, x, rule="certified", solver="rk4", steps=20)
    full = anytime_predict(model, x, level=0.0, solver="rk4", steps=20)
    assert not bool(out.false_stops(full.logits).any())
    small = _bound(torch.zeros(2, 2), l1=1.0, field_max=0.0)
    logits, t = torch.tensor([[0.01, 0.0]]), torch.tensor([0.5])
    assert certified_stops(logits, t, 1.0, small, 1.0).tolist() == [True]
    scale = torch.tensor([1e6])
    assert certified_stops(logits, t, 1.0, small, 1.0, state_scale=scale, max_steps=20).tolist() == [False]


def test_either_never_stops_later_and_its_false_stops_are_the_lyapunov_rules() -> None:
    pytest.importorskip("torchdyn")
    model, x = _trained_torchdyn(1, lambda: models.torchdyn_data_controlled(solver="dopri5"))
    full = anytime_predict(model, x, level=0.0, solver="dopri5")
    for level in (0.05, 0.3, 0.69):
        lyapunov = anytime_predict(model, x, level=level, kappa=0.0, solver="dopri5")
        either = anytime_predict(model, x, level=level, kappa=0.0, solver="dopri5", rule="either")
        assert bool((either.nfe <= lyapunov.nfe).all())
        false_either, false_lyapunov = either.false_stops(full.logits), lyapunov.false_stops(full.logits)
        assert bool((false_either <= false_lyapunov).all())
    trace = anytime_trace(model, x, solver="dopri5")
    choice = choose_level(None, None, trace=trace, rule="either", kappa=0.0)
    plain = choose_level(None, None, trace=trace, kappa=0.0)
    assert choice.level >= plain.level and choice.mean_nfe <= plain.mean_nfe


def test_the_trainer_reaches_the_certified_rule() -> None:
    pytest.importorskip("torchdyn")
    torch.manual_seed(0)
    x, y = models.blobs(64)
    trainer = LyapunovTrainer(models.torchdyn_data_controlled(solver="dopri5"), seed=0, progress=False)
    trainer.fit(models.loader(x, y), epochs=2)
    out = trainer.anytime_predict(x, rule="certified", solver="dopri5")
    full = trainer.anytime_predict(x, level=0.0, solver="dopri5")
    assert not bool(out.false_stops(full.logits).any())


def test_refusals() -> None:
    model = _mlp_model(0, dtype=torch.float32)
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="rule must be one of"):
        anytime_predict(model, x, rule="margin")
    with pytest.raises(ValueError, match="level applies to rule='lyapunov' or 'either'"):
        anytime_predict(model, x, rule="certified", level=0.1)
    with pytest.raises(ValueError, match="applies to classification"):
        anytime_predict(model, x, rule="certified", potential=MSEPotential())
    with pytest.raises(ValueError, match="no level to choose"):
        choose_level(model, x, rule="certified")
    # A field without a bounded activation moves its logits at an unbounded rate.
    relu = ODEModel(
        MLPDynamics(3, 2, hidden=(5,), activation="relu"), state_shape=(3,), encoder=nn.Linear(2, 2), readout=None
    )
    with pytest.raises(ValueError, match="bounded activation"):
        anytime_predict(relu, x, rule="certified")
    # A torchdiffeq func(t, y) is arbitrary Python.
    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

    with pytest.raises(ValueError, match="torchdiffeq"):
        anytime_predict(TorchdiffeqModel(models.PlainField()), x, rule="certified")
    # A nonlinear readout.
    nonlinear = ODEModel(
        MLPDynamics(3, 2, hidden=(5,)),
        state_shape=(3,),
        encoder=nn.Linear(2, 2),
        readout=nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2)),
    )
    with pytest.raises(ValueError, match="readout"):
        anytime_predict(nonlinear, x, rule="certified")
    # The trace of a model without a bound still records; only the certified replay is refused.
    trace = anytime_trace(relu, x)
    assert trace.bound is None
    with pytest.raises(ValueError, match="cannot be replayed"):
        trace.apply(rule="certified")


def test_a_velocity_that_is_not_the_fields_output_is_refused_at_run_time() -> None:
    pytest.importorskip("torchdyn")
    model = as_lyapunov_model(models.torchdyn_data_controlled(solver="dopri5"))
    original = model.vector_field
    model.vector_field = lambda eta, context, t: 2.0 * original(eta, context, t)  # type: ignore[method-assign]
    x, _ = models.blobs(8)
    with pytest.raises(ValueError, match="not the output of its field's last layer"):
        anytime_predict(model, x, rule="certified", solver="dopri5")
    trace = anytime_trace(model, x, solver="dopri5")  # records, without the bound
    assert trace.bound is None


def _torchdyn_field_model(field: nn.Module, readout: bool = True):
    from torchdyn.core import NeuralODE

    node = NeuralODE(field, solver="dopri5", return_t_eval=False)
    return as_lyapunov_model(nn.Sequential(node, nn.Linear(3, 4)) if readout else node)


def test_a_reused_activation_is_counted_at_every_position() -> None:
    # One nn.Tanh() used twice: children() lists it once, Sequential.forward runs it twice.
    pytest.importorskip("torchdyn")
    torch.manual_seed(0)
    layers = [nn.Linear(3, 5), nn.Linear(5, 5), nn.Linear(5, 3)]
    act = nn.Tanh()
    shared = _torchdyn_field_model(nn.Sequential(layers[0], act, layers[1], act, layers[2]))
    distinct = _torchdyn_field_model(nn.Sequential(layers[0], nn.Tanh(), layers[1], nn.Tanh(), layers[2]))
    shared.model[1].weight.data.copy_(distinct.model[1].weight.data)
    shared.model[1].bias.data.copy_(distinct.model[1].bias.data)
    torch.testing.assert_close(logit_rate_bound(shared).pairwise, logit_rate_bound(distinct).pairwise)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.sampled_from([0.1, 1.0, 10.0, 1e3]))
def test_the_interval_path_through_layers_after_the_bounded_activation_is_sound(seed: int, scale: float) -> None:
    # Linear -> Tanh -> Linear -> ReLU -> Linear: the box after tanh goes through a linear
    # layer and a ReLU by interval arithmetic before the last layer.
    pytest.importorskip("torchdyn")
    torch.manual_seed(seed % 11)
    field = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double()
    model = _torchdyn_field_model(field)
    model.model[1].double()
    g = torch.Generator().manual_seed(seed)
    eta = scale * torch.randn(64, 3, generator=g, dtype=torch.float64)
    with torch.no_grad():
        rate = field(eta) @ model.model[1].weight.T
    gap_rate = (rate[:, :, None] - rate[:, None, :]).abs()
    assert bool((gap_rate <= logit_rate_bound(model).pairwise + 1e-12).all())


def test_an_odemodel_subclass_hooks_and_unbounded_layers_are_refused() -> None:
    class Scaled(ODEModel):
        pass

    x = torch.randn(4, 2)
    scaled = Scaled(MLPDynamics(3, 2, hidden=(5,)), state_shape=(3,), encoder=nn.Linear(2, 2), readout=None)
    with pytest.raises(ValueError, match="not the subclass Scaled"):
        anytime_predict(scaled, x, rule="certified")
    hooked = _mlp_model(0, dtype=torch.float32)
    torch.nn.utils.spectral_norm(hooked.dynamics.net[2])  # the hook-based form recomputes the weight in a hook
    with pytest.raises(ValueError, match="forward hooks"):
        anytime_predict(hooked, x, rule="certified")
    unbounded = _mlp_model(0, dtype=torch.float32)
    unbounded.dynamics.net[1] = nn.Hardtanh(-math.inf, math.inf)
    with pytest.raises(ValueError, match="bounded activation"):
        anytime_predict(unbounded, x, rule="certified")


def test_a_velocity_altered_after_the_first_evaluation_is_refused() -> None:
    pytest.importorskip("torchdyn")
    model = as_lyapunov_model(models.torchdyn_data_controlled(solver="dopri5"))
    original = model.vector_field

    def later_scaled(eta, context, t):
        out = original(eta, context, t)
        return out if bool((t == 0).all()) else 3.0 * out

    model.vector_field = later_scaled  # type: ignore[method-assign]
    x, _ = models.blobs(8)
    with pytest.raises(ValueError, match="not the output of its field's last layer"):
        anytime_predict(model, x, rule="certified", solver="dopri5")


def test_either_stops_earlier_where_only_the_certificate_fires_and_replays_exactly() -> None:
    pytest.importorskip("torchdyn")
    model, x = _trained_torchdyn(0, lambda: models.torchdyn_data_controlled(solver="rk4"))
    kwargs = {"solver": "rk4", "steps": 20, "kappa": 1.0}
    lyapunov = anytime_predict(model, x, level=1e-4, **kwargs)
    either = anytime_predict(model, x, level=1e-4, rule="either", **kwargs)
    assert int(either.nfe.sum()) < int(lyapunov.nfe.sum())  # the certified stops come first
    trace = anytime_trace(model, x, solver="rk4", steps=20)
    for patience in (1, 2):
        direct = anytime_predict(model, x, level=0.3, patience=patience, rule="either", **kwargs)
        replay = trace.apply(level=0.3, kappa=1.0, patience=patience, rule="either")
        assert torch.equal(direct.stop_time, replay.stop_time) and torch.equal(direct.nfe, replay.nfe)
        assert torch.equal(direct.prediction, replay.prediction)


def test_choose_level_with_either_measures_its_level_zero_baseline() -> None:
    pytest.importorskip("torchdyn")
    model, x = _trained_torchdyn(0, lambda: models.torchdyn_data_controlled(solver="rk4"))
    trace = anytime_trace(model, x[:20], solver="rk4", steps=20)
    with pytest.warns(UserWarning, match="certified stops only"):
        choice = choose_level(None, None, trace=trace, rule="either", confidence=0.8)
    certified = trace.apply(rule="certified")
    assert choice.level == 0.0
    assert choice.mean_nfe == certified.mean_nfe < trace.final.mean_nfe
    assert choice.converged_fraction == certified.converged_fraction > 0
    assert choice.false_stop_rate == 0.0
    with pytest.raises(ValueError, match="applies to classification"):
        choose_level(model, x, rule="either", potential=MSEPotential(), tolerance=0.1)
