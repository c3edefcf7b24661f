"""The certified stop's bound local to the state (lyapunov_plugin.local_bound, ``bound="local"``)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lyapunov_plugin import ODEModel, anytime_predict
from lyapunov_plugin.anytime import anytime_trace
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.local_bound import doubling_intervals, gap_lower_bound, local_rate_bound
from lyapunov_plugin.speed import logit_rate_bound
from tests import models


def _model(seed: int, *, hidden=(5,), readout: bool = True, time: bool = True, scale: float = 1.0) -> ODEModel:
    torch.manual_seed(seed)
    dynamics = MLPDynamics(3, 2, hidden=hidden, time_dependent=time)
    with torch.no_grad():
        for layer in dynamics.net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(scale)
    model = ODEModel(dynamics, state_shape=(3,), encoder=nn.Linear(2, 2), readout=nn.Linear(3, 4) if readout else None)
    return model.double()


def _rk4(model: ODEModel, eta: torch.Tensor, context: torch.Tensor, t: torch.Tensor, h: float, steps: int):
    """Plain RK4, written here independently of the library's solver."""
    f = model.vector_field
    for _ in range(steps):
        k1 = f(eta, context, t)
        k2 = f(eta + h / 2 * k1, context, t + h / 2)
        k3 = f(eta + h / 2 * k2, context, t + h / 2)
        k4 = f(eta + h * k3, context, t + h)
        eta, t = eta + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
    return eta


def test_doubling_intervals_cover_the_steps_left() -> None:
    assert doubling_intervals(0) == []
    assert doubling_intervals(1) == [1]
    assert doubling_intervals(20) == [1, 2, 4, 8, 5]
    for steps in range(1, 70):
        parts = doubling_intervals(steps)
        assert sum(parts) == steps and all(p >= 1 for p in parts)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    hidden=st.sampled_from([(5,), (4, 3)]),
    readout=st.booleans(),
    time=st.booleans(),
    scale=st.sampled_from([0.3, 1.0, 3.0]),
    steps_left=st.integers(1, 20),
)
def test_lower_bound_holds_for_the_rk4_solve_it_bounds(seed, hidden, readout, time, scale, steps_left) -> None:
    # The bound's claim, checked against an independent RK4 in float64 from random states,
    # contexts and times: the gap after the remaining steps is never below it.
    model = _model(seed % 11, hidden=hidden, readout=readout, time=time, scale=scale)
    g = torch.Generator().manual_seed(seed)
    eta = 2 * torch.randn(48, 3, generator=g, dtype=torch.float64)
    context = torch.randn(48, 2, generator=g, dtype=torch.float64)
    t = torch.rand(48, generator=g, dtype=torch.float64) * 0.5
    h = 0.5 / steps_left
    bound = logit_rate_bound(model)
    local = local_rate_bound(model, bound)
    assert local is not None
    with torch.no_grad():
        logits = model.readout(eta)
        lower = gap_lower_bound(local, bound, eta, context, t, logits, steps_left=steps_left, step=h)
        final = model.readout(_rk4(model, eta, context, t, h, steps_left))
    c = logits.argmax(-1)
    gap_end = final.gather(1, c[:, None]) - final
    assert bool((gap_end >= lower - 1e-9).all())
    # Never weaker than the global bound (its floor), and at least as tight as nothing.
    gap_now = logits.gather(1, c[:, None]) - logits
    global_lower = gap_now - steps_left * h * bound.pairwise[c]
    assert bool((lower >= global_lower - 1e-9).all())


def test_lower_bound_is_tighter_than_the_global_one_where_the_field_is_smooth() -> None:
    model = _model(0, scale=0.3)
    bound = logit_rate_bound(model)
    local = local_rate_bound(model, bound)
    assert local is not None
    eta, context = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
    t = torch.zeros(64, dtype=torch.float64)
    with torch.no_grad():
        logits = model.readout(eta)
        lower = gap_lower_bound(local, bound, eta, context, t, logits, steps_left=20, step=0.05)
    c = logits.argmax(-1)
    global_lower = (logits.gather(1, c[:, None]) - logits) - bound.pairwise[c]
    others = torch.ones_like(lower, dtype=torch.bool).scatter_(1, c[:, None], False)
    assert bool((lower[others] > global_lower[others] + 1e-3).all())


def test_a_constant_field_is_proven_where_its_current_rate_decides() -> None:
    # x = +1: f = (2, 0, -1) from eta = 0; the tie at t = 0 goes to class 0, whose gaps grow
    # at 2 and 3: proven at t = 0 (1 evaluation). x = -1: f = (-2, 0, 1): class 0 is losing
    # at t = 0; after one step class 2 leads and gains: proven at t = 0.05 (1 + 4 evaluations).
    # The global bound waits for t = 0.55 on both (tests/test_anytime_certified.py).
    model = models.saturated_paper_model()
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    out = anytime_predict(model, x, rule="certified", solver="rk4", steps=20, bound="local")
    torch.testing.assert_close(out.stop_time, torch.tensor([0.0, 0.05], dtype=torch.float64))
    assert out.nfe.tolist() == [1, 5] and out.converged.all()
    full = anytime_predict(model, x, level=0.0, solver="rk4", steps=20)
    assert torch.equal(out.prediction, full.prediction) and out.prediction.tolist() == [0, 2]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_false_stop_and_no_later_stop_than_the_global_bound(seed: int, dtype) -> None:
    model = _model(seed, hidden=(8,), scale=1.0).to(dtype)
    with torch.no_grad():
        model.dynamics.net[-1].weight.mul_(20.0)  # fast, far-moving logits: stops would be wrong if unsound
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    full = anytime_predict(model, x, level=0.0, solver="rk4", steps=20)
    glob = anytime_predict(model, x, rule="certified", solver="rk4", steps=20)
    local = anytime_predict(model, x, rule="certified", solver="rk4", steps=20, bound="local")
    assert not bool(local.false_stops(full.logits).any())
    assert bool((local.nfe <= glob.nfe).all()) and int(local.nfe.sum()) < int(glob.nfe.sum())
    either = anytime_predict(model, x, rule="either", level=0.05, solver="rk4", steps=20, bound="local")
    assert bool((either.nfe <= local.nfe).all())
    trace = anytime_trace(model, x, solver="rk4", steps=20, bound="local")
    for rule, direct in (("certified", local), ("either", either)):
        replay = trace.apply(rule=rule, bound="local", **({"level": 0.05} if rule == "either" else {}))
        assert torch.equal(replay.nfe, direct.nfe) and torch.equal(replay.prediction, direct.prediction)
    assert torch.equal(trace.apply(rule="certified").nfe, glob.nfe)


def test_the_default_paper_model_gets_the_local_bound_through_auto() -> None:
    # ODEModel's default solver is RK4-20, so solver="auto" is RK4 and bound="local" applies.
    torch.manual_seed(0)
    model = ODEModel(MLPDynamics(3, 4, hidden=(16,)), state_shape=(3,), encoder=nn.Linear(2, 4))
    x = torch.randn(32, 2)
    out = anytime_predict(model, x, rule="certified", bound="local")
    assert out.solver == "rk4"


def test_bound_is_validated_and_refused_where_it_does_not_apply() -> None:
    model = _model(0)
    x = torch.randn(8, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="bound must be one of"):
        anytime_predict(model, x, rule="certified", bound="tight")
    with pytest.raises(ValueError, match="rule='certified' or 'either'"):
        anytime_predict(model, x, bound="local")
    with pytest.raises(ValueError, match="RK4"):
        anytime_predict(model, x, rule="certified", solver="dopri5", bound="local")
    relu = ODEModel(MLPDynamics(3, 2, hidden=(4,), activation="relu"), state_shape=(3,), encoder=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="bounded"):  # no global bound, hence no local one
        anytime_predict(relu, x.float(), rule="certified", bound="local")
    gelu = ODEModel(MLPDynamics(3, 2, hidden=(4, 4), activation="tanh"), state_shape=(3,), encoder=nn.Linear(2, 2))
    gelu.dynamics.net[1] = nn.GELU()  # a non-monotone layer before the last tanh
    with pytest.raises(ValueError, match="monotone"):
        anytime_predict(gelu, x.float(), rule="certified", bound="local")
    trace = anytime_trace(model, x, solver="rk4", steps=10)
    with pytest.raises(ValueError, match="record it with anytime_trace"):
        trace.apply(rule="certified", bound="local")
    with pytest.raises(ValueError, match="rule='certified' or 'either'"):
        trace.apply(bound="local")


def test_torchdyn_models_keep_the_global_bound() -> None:
    pytest.importorskip("torchdyn")
    model = models.torchdyn_data_controlled(solver="rk4")
    x, _ = models.blobs(16, seed=0)
    with pytest.raises(ValueError, match="ODEModel"):
        anytime_predict(model, x, rule="certified", solver="rk4", steps=10, bound="local")
    anytime_predict(model, x, rule="certified", solver="rk4", steps=10)  # the global bound still runs


@pytest.mark.parametrize(
    "layer", [nn.Tanh(), nn.Sigmoid(), nn.Softsign(), nn.Hardtanh(-2.0, 2.0), nn.Hardtanh(-1.0, 2.0), nn.ReLU()]
)
def test_activation_deviation_is_the_two_sided_maximum(layer) -> None:
    # Symmetric activations take one evaluation (the side towards 0); checked against both
    # sides, zeros included (where either side is the larger).
    from lyapunov_plugin.local_bound import activation_deviation

    g = torch.Generator().manual_seed(0)
    v = 4 * torch.randn(4096, generator=g, dtype=torch.float64)
    v[:64] = 0.0
    d = 3 * torch.rand(4096, generator=g, dtype=torch.float64)
    out = layer(v)
    two_sided = torch.maximum(layer(v + d) - out, out - layer(v - d))
    torch.testing.assert_close(activation_deviation(layer, v, out, d), two_sided, rtol=0, atol=1e-12)


def test_the_readouts_own_rounding_is_allowed_for() -> None:
    # A float32 state of ~1e4 that cancels in the logits (|z| ~ 0.15, sum |W eta| ~ 6e3) and
    # two nearly equal readout rows: the true gap z0 - z1 is 1e-4 > 0 everywhere, but the
    # readout's rounding flips the computed class. Both bounds stopped on the rounded logits
    # before the slack counted the readout's dot product (review finding: 403 of 1000 false).
    dynamics = MLPDynamics(2, 1, hidden=(1,), time_dependent=False)
    with torch.no_grad():
        dynamics.net[0].weight.zero_()
        dynamics.net[0].weight[0, 2] = 50.0
        dynamics.net[0].bias.zero_()
        dynamics.net[2].weight.copy_(torch.tensor([[3.7], [3.7]]))
        dynamics.net[2].bias.zero_()
        initial = nn.Linear(1, 2)
        initial.weight.copy_(torch.tensor([[1e4], [1e4]]))
        initial.bias.copy_(torch.tensor([0.0, 0.5]))
        readout = nn.Linear(2, 2)
        readout.weight.copy_(torch.tensor([[0.3, -0.3], [0.3 + 1e-6, -0.3 - 1e-6]]))
        readout.bias.copy_(torch.tensor([1e-4, 0.0]))
    model = ODEModel(dynamics, state_shape=(2,), encoder=nn.Identity(), initial_state=initial, readout=readout)
    x = 1.0 + torch.linspace(0, 1e-3, 500).unsqueeze(1)
    full = anytime_predict(model, x, level=0.0, solver="rk4", steps=20)
    for bound in ("global", "local"):
        out = anytime_predict(model, x, rule="certified", solver="rk4", steps=20, bound=bound)
        assert not bool(out.false_stops(full.logits).any())


def test_softplus_is_not_treated_as_monotone() -> None:
    # PyTorch's softplus switches to the identity above threshold / beta, with a downward
    # jump there (log 2 -> 0 at threshold 0; 0.2 at beta = 1e-8): interval endpoints no
    # longer bound it, and a stop behind a large weight could be false (review finding).
    from lyapunov_plugin.speed import _is_monotone

    assert not _is_monotone(nn.Softplus()) and not _is_monotone(nn.Softplus(threshold=0.0))
    assert _is_monotone(nn.Tanh()) and _is_monotone(nn.ReLU())
    dynamics = MLPDynamics(3, 1, hidden=(4, 4), time_dependent=False)
    dynamics.net[1] = nn.Softplus()
    model = ODEModel(dynamics, state_shape=(3,), encoder=nn.Identity())
    with pytest.raises(ValueError, match="monotone"):
        anytime_predict(model, torch.zeros(2, 1), rule="certified", solver="rk4", steps=10, bound="local")


@pytest.mark.parametrize("where", ["dynamics", "net", "global"])
def test_a_forward_hook_anywhere_on_the_field_refuses_the_local_bound(where: str) -> None:
    # A pre-hook on MLPDynamics or on its nn.Sequential (or a global module hook) rewrites the
    # field's input without touching a layer; the local bound, computed from the layers, was
    # then wrong (review finding: a stop at t = 0 on the wrong class).
    model = models.saturated_paper_model()
    flip = lambda module, args: tuple(-a if i == 1 else a for i, a in enumerate(args))  # noqa: E731
    x = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
    if where == "global":
        handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)
    else:
        target = model.dynamics if where == "dynamics" else model.dynamics.net
        handle = target.register_forward_pre_hook(flip if where == "dynamics" else (lambda module, args: None))
    try:
        with pytest.raises(ValueError, match="hooks"):
            anytime_predict(model, x, rule="certified", solver="rk4", steps=20, bound="local")
    finally:
        handle.remove()
    anytime_predict(model, x, rule="certified", solver="rk4", steps=20, bound="local")  # hooks gone: accepted
