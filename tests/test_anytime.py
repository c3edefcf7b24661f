"""anytime_predict (issue 14): per-example adaptive solve with the Lyapunov stopping rule.

The known-answer problem is a linear relaxation ``f(eta) = -a (eta - s e_c)`` with the
identity readout and ``eta(0) = u s e_c``: along the flow the logits are ``z(t) e_c`` with
``z(t) = s (1 - (1 - u) e^(-a t))``, so the cross entropy of the predicted class ``c`` is
``V(t) = log(1 + (m - 1) e^(-z(t)))`` and ``dV/dt = -(1 - p_c) z'(t)`` in closed form.
Each example carries its id and its rate ``a`` in the context, so a hook on the dynamics
module can count, independently of the solver's own counter, which examples every call of
the vector field evaluated.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torchdiffeq
from torch import nn

from lyapunov_plugin import (
    AnytimePrediction,
    CrossEntropyPotential,
    FixedStepSolver,
    MSEPotential,
    ODEModel,
    anytime_predict,
)
from lyapunov_plugin.anytime import anytime_trace, choose_level
from lyapunov_plugin.model import integrate
from tests import models

M, S = 3, 4.0  # classes, target logit


class Relax(nn.Module):
    """``f(eta, x) = -a (eta - s e_c)`` with ``x = [id, a, u, s e_c]``."""

    def forward(self, eta: torch.Tensor, context: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -context[:, 1:2] * (eta - context[:, 3:])


def relax_model() -> ODEModel:
    return ODEModel(Relax(), initial_state=lambda context: context[:, 2:3] * context[:, 3:], readout=None)


def relax_inputs(
    rates: list[float], classes: list[int], starts: list[float] | None = None, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    n = len(rates)
    starts = STARTS[:n] if starts is None else starts
    target = torch.zeros(n, M, dtype=dtype)
    target[torch.arange(n), torch.tensor(classes)] = S
    ids = torch.arange(n, dtype=dtype)[:, None]
    columns = [ids, torch.tensor(rates, dtype=dtype)[:, None], torch.tensor(starts, dtype=dtype)[:, None], target]
    return torch.cat(columns, dim=1)


def exact(a: float, u: float, t: float) -> tuple[float, float]:
    """Closed-form ``V(t)`` and ``dV/dt`` of the relaxation (float64, independent of the solver)."""
    z = S * (1 - (1 - u) * math.exp(-a * t))
    dz = a * S * (1 - u) * math.exp(-a * t)
    v = math.log1p((M - 1) * math.exp(-z))
    q = (M - 1) * math.exp(-z) / (1 + (M - 1) * math.exp(-z))  # 1 - p_c
    return v, -q * dz


def crossing_time(a: float, u: float, level: float) -> float:
    """The time ``V(t) = level`` in closed form: ``z* = -log((e^level - 1) / (m - 1))``."""
    z_star = -math.log(math.expm1(level) / (M - 1))
    return -math.log((1 - z_star / S) / (1 - u)) / a


class RowCounter:
    """Forward hook on the dynamics: which example ids each call evaluated, and at which times."""

    def __init__(self, module: nn.Module) -> None:
        self.ids: list[torch.Tensor] = []
        self.times: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        eta, context, t = args
        self.ids.append(context[:, 0].long().clone())
        self.times.append(t.expand(eta.shape[0]).clone())

    def per_example(self, n: int) -> torch.Tensor:
        return torch.bincount(torch.cat(self.ids), minlength=n)


RATES = [2.0, 3.0, 5.0, 8.0, 12.0, 1.5, 0.5]
CLASSES = [0, 1, 2, 0, 1, 2, 1]
STARTS = [0.2, 0.1, 0.3, 0.05, 0.2, 0.4, 0.2]


@pytest.mark.parametrize("level", [0.1, 0.2, 0.4])
def test_stops_at_first_accepted_state_after_the_closed_form_crossing(level: float) -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    settings = dict(solver="dopri5", rtol=1e-9, atol=1e-9)
    result = anytime_predict(model, x, level=level, kappa=0.0, **settings)
    trace = anytime_trace(model, x, **settings)
    for i, (a, u) in enumerate(zip(RATES, STARTS, strict=True)):
        times = trace.time[i][trace.valid[i]].tolist()
        t_cross = crossing_time(a, u, level)
        after = [t for t in times if t > t_cross and t < 1.0]
        if not after:  # crosses after the last interior state: runs to t_end
            assert not bool(result.converged[i]) and float(result.stop_time[i]) == 1.0
            continue
        stop = float(result.stop_time[i])
        assert bool(result.converged[i])
        assert stop == pytest.approx(after[0], abs=1e-12)
        earlier = [t for t in times if t < stop]
        if t_cross <= 0:  # below the level from the start: stops at t = 0 (one evaluation)
            assert stop == 0.0 and not earlier and int(result.nfe[i]) == 1
        else:
            assert earlier and max(earlier) < t_cross  # the state before was still above the level
        # The stopped state is the flow's: V there is the closed form within the tolerance.
        assert float(result.potential[i]) == pytest.approx(exact(a, u, stop)[0], abs=1e-7)
        assert int(result.prediction[i]) == CLASSES[i]
    assert bool(result.converged.any())
    if level <= 0.2:  # the slowest example (a = 0.5) crosses after t_end
        assert not bool(result.converged.all())


def test_kappa_condition_stops_only_where_eq10_holds_in_closed_form() -> None:
    """With kappa > 0 the condition fails near the end (V tends to a positive limit while
    dV/dt tends to 0): the rule fires at the first state where both conditions hold
    in closed form, and examples for which no state qualifies run to t_end."""
    level, kappa = 0.3, 2.0
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    settings = dict(solver="dopri5", rtol=1e-9, atol=1e-9)
    result = anytime_predict(model, x, level=level, kappa=kappa, **settings)
    trace = anytime_trace(model, x, **settings)
    outcomes = set()
    for i, (a, u) in enumerate(zip(RATES, STARTS, strict=True)):
        times = trace.time[i][trace.valid[i]].tolist()
        values = [exact(a, u, t) for t in times]
        qualifying = [
            t for t, (v, dv) in zip(times, values, strict=True) if t < 1.0 and v < level and dv + kappa * v <= 0
        ]
        expected = qualifying[0] if qualifying else 1.0
        assert float(result.stop_time[i]) == pytest.approx(expected, abs=1e-12)
        assert bool(result.converged[i]) == bool(qualifying)
        outcomes.add(bool(qualifying))
    assert outcomes == {True, False}  # the problem exercises both branches


def test_per_example_nfe_is_exact_and_stopped_examples_cost_nothing_more() -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES, dtype=torch.float32)
    counter = RowCounter(model.dynamics)
    try:
        result = anytime_predict(model, x, level=0.2, kappa=0.0, solver="dopri5")
    finally:
        counter.handle.remove()
    n = len(RATES)
    assert torch.equal(counter.per_example(n), result.nfe)
    assert result.total_nfe == sum(len(ids) for ids in counter.ids)
    assert result.field_calls == len(counter.ids)
    # dopri5: f(eta0), one evaluation for the first step, six per (accepted or rejected) step.
    assert torch.equal(result.nfe, 2 + 6 * (result.steps + result.rejected_steps))
    # No example is evaluated after its stopping time, and the batch only shrinks.
    ids, times = torch.cat(counter.ids), torch.cat(counter.times)
    for i in range(n):
        assert float(times[ids == i].max()) <= float(result.stop_time[i]) + 1e-6
    sizes = [len(c) for c in counter.ids]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < n
    assert result.nfe.min() < result.nfe.max()  # examples stopped at different costs


def test_shrinking_batch_does_not_change_any_example_path() -> None:
    """Each example alone costs and predicts exactly what it does inside the batch."""
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    batch = anytime_predict(model, x, level=0.2, kappa=0.0, solver="dopri5")
    for i in range(len(RATES)):
        alone = anytime_predict(model, x[i : i + 1], level=0.2, kappa=0.0, solver="dopri5")
        assert int(alone.nfe[0]) == int(batch.nfe[i])
        assert float(alone.stop_time[0]) == float(batch.stop_time[i])
        torch.testing.assert_close(alone.logits[0], batch.logits[i], rtol=1e-12, atol=1e-12)


class Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(7, 32), nn.Tanh(), nn.Linear(32, 3))

    def forward(self, eta: torch.Tensor, context: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 3 * self.net(torch.cat([eta, context, t[:, None]], 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_horizon_matches_torchdiffeq_dopri5(seed: int) -> None:
    """With the rule off and torchdiffeq's first-step estimate the result is torchdiffeq's
    dopri5 at the same tolerances: one example at a time the same number of evaluations
    (same step control), and the final state within the tolerance (torchdiffeq interpolates
    past t_end, this solver lands on it)."""
    torch.manual_seed(seed)
    model = ODEModel(Tanh(), state_shape=(3,), encoder=nn.Linear(4, 3))
    x = torch.randn(8, 4)
    result = anytime_predict(model, x, level=0.0, solver="dopri5", first_step="torchdiffeq")
    assert not bool(result.converged.any()) and bool((result.stop_time == 1.0).all())
    for i in range(x.shape[0]):
        solver = partial(torchdiffeq.odeint, method="dopri5", rtol=1e-3, atol=1e-3)
        with torch.no_grad():
            states, nfe = integrate(model, x[i : i + 1], torch.tensor([0.0, 1.0]), solver=solver, return_nfe=True)
        assert int(result.nfe[i]) == nfe
        torch.testing.assert_close(result.logits[i], states[-1, 0], rtol=0, atol=2e-3)
    # A tight independent reference in float64 for the whole batch.
    model = model.double()
    tight = partial(torchdiffeq.odeint, method="dopri5", rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        reference = integrate(model, x.double(), torch.tensor([0.0, 1.0], dtype=torch.float64), solver=tight)[-1]
    precise = anytime_predict(model, x.double(), level=0.0, solver="dopri5", rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(precise.logits, reference, rtol=0, atol=1e-7)


def test_rk4_fixed_steps_match_the_fixed_step_solver_and_count_evaluations() -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    full = anytime_predict(model, x, level=0.0, solver="rk4", steps=10)
    with torch.no_grad():
        reference = integrate(
            model, x, torch.tensor([0.0, 1.0], dtype=torch.float64), solver=FixedStepSolver(method="rk4", steps=10)
        )[-1]
    torch.testing.assert_close(full.logits, reference, rtol=1e-12, atol=1e-12)
    assert bool((full.nfe == 40).all()) and bool((full.steps == 10).all())
    counter = RowCounter(model.dynamics)
    try:
        early = anytime_predict(model, x, level=0.2, kappa=0.0, solver="rk4", steps=10)
    finally:
        counter.handle.remove()
    assert torch.equal(counter.per_example(len(RATES)), early.nfe)
    stopped = early.converged
    assert bool(stopped.any())
    # A stop after n steps costs f(eta0), three stages per step and f at each interior state.
    assert torch.equal(early.nfe[stopped], 1 + 4 * early.steps[stopped])
    torch.testing.assert_close(early.stop_time[stopped], early.steps[stopped].double() / 10)
    for i in range(len(RATES)):
        expected = next((k / 10 for k in range(1, 10) if k / 10 > crossing_time(RATES[i], STARTS[i], 0.2)), 1.0)
        # RK4-10 is accurate to ~1e-4 here; no grid time lies that close to a crossing.
        assert float(early.stop_time[i]) == pytest.approx(expected)
    # "auto" uses the model's own fixed steps (ODEModel's RK4-20).
    auto = anytime_predict(model, x, level=0.0)
    assert auto.solver == "rk4" and bool((auto.nfe == 80).all())


def test_trace_replays_anytime_predict_exactly() -> None:
    torch.manual_seed(0)
    model = ODEModel(Tanh(), state_shape=(3,), encoder=nn.Linear(4, 3))
    x = torch.randn(64, 4)
    trace = anytime_trace(model, x, solver="dopri5")
    for level, kappa, patience in [(0.5, 0.0, 1), (0.3, 1.0, 2), (0.05, 0.0, 1)]:
        direct = anytime_predict(model, x, level=level, kappa=kappa, patience=patience, solver="dopri5")
        replay = trace.apply(level=level, kappa=kappa, patience=patience)
        assert torch.equal(direct.nfe, replay.nfe)
        assert torch.equal(direct.converged, replay.converged)
        torch.testing.assert_close(direct.stop_time, replay.stop_time, rtol=0, atol=0)
        torch.testing.assert_close(direct.logits, replay.logits, rtol=1e-5, atol=1e-6)


def test_patience_requires_consecutive_states() -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    one = anytime_predict(model, x, level=0.3, kappa=0.0, solver="rk4", steps=20)
    two = anytime_predict(model, x, level=0.3, kappa=0.0, solver="rk4", steps=20, patience=2)
    stopped = one.converged & two.converged
    assert bool(stopped.any())
    # V falls monotonically here, so the second qualifying state is the next grid state.
    assert torch.equal(two.steps[stopped], one.steps[stopped] + 1)


def _last_of_the_first_run_of_passes(levels: list[float], passes: dict[float, bool]) -> float:
    chosen = 0.0
    for level in sorted(levels):
        if not passes[level]:
            break
        chosen = level
    return chosen


def test_choose_level_picks_the_last_level_of_the_first_run_of_passes() -> None:
    torch.manual_seed(0)
    model = ODEModel(Tanh(), state_shape=(3,), encoder=nn.Linear(4, 3))
    x_val = torch.randn(200, 4)
    levels = [0.01, 0.05, 0.1, 0.2, 0.4, 0.6]
    choice = choose_level(model, x_val, max_false_stop_rate=0.02, levels=levels, kappa=0.0, solver="dopri5")
    rates = {row[0]: row[1] for row in choice.curve}
    assert choice.level == _last_of_the_first_run_of_passes(levels, {lv: rates[lv] <= 0.02 for lv in levels})
    # The reported validation numbers are those of anytime_predict at the chosen level.
    direct = anytime_predict(model, x_val, level=choice.level, kappa=0.0, solver="dopri5")
    full = anytime_predict(model, x_val, level=0.0, solver="dopri5")
    assert float(direct.false_stops(full.logits).double().mean()) == pytest.approx(choice.false_stop_rate)
    assert direct.mean_nfe == pytest.approx(choice.mean_nfe)
    # Larger levels never cost more evaluations.
    nfes = [row[2] for row in choice.curve]
    assert nfes == sorted(nfes, reverse=True)


def test_torchdyn_model() -> None:
    pytest.importorskip("torchdyn")
    torch.manual_seed(0)
    user_model = models.torchdyn_data_controlled(solver="dopri5")
    x, _ = models.blobs(40)
    user_model.train()
    full = anytime_predict(user_model, x, level=0.0, solver="dopri5")
    assert user_model.training  # the mode is restored
    with torch.no_grad():
        reference = user_model(x)
    reference = reference[1][-1] if isinstance(reference, tuple) else reference[-1]
    torch.testing.assert_close(full.logits, reference, rtol=0, atol=5e-3)
    early = anytime_predict(user_model, x, level=0.6, kappa=0.0, solver="dopri5")
    assert bool((early.nfe <= full.nfe).all())
    assert torch.equal(early.prediction[~early.converged], full.prediction[~early.converged])


def test_torchdiffeq_model() -> None:
    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

    torch.manual_seed(0)
    model = TorchdiffeqModel(models.ConditionedField(), encoder=nn.Linear(2, 2))
    x, _ = models.blobs(40)
    full = anytime_predict(model, x, level=0.0)
    assert full.solver == "dopri5"
    with torch.no_grad():
        reference = model(x)
    torch.testing.assert_close(full.logits, reference, rtol=0, atol=5e-3)
    # A bare torchdiffeq func(t, y) is wrapped by the dispatcher.
    bare = anytime_predict(models.PlainField(), x, level=0.0)
    assert bare.logits.shape == (40, 2) and bare.mean_nfe >= 8


def test_result_attributes() -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    result = anytime_predict(model, x, level=0.2, kappa=0.0, solver="dopri5")
    assert isinstance(result, AnytimePrediction)
    assert result.mean_nfe == pytest.approx(float(result.nfe.double().mean()))
    assert result.max_nfe == int(result.nfe.max())
    assert result.converged_fraction == pytest.approx(float(result.converged.double().mean()))
    value = CrossEntropyPotential().value(result.logits, result.prediction)
    torch.testing.assert_close(result.potential, value)
    with pytest.raises(AttributeError):
        result.t_end = 2.0  # type: ignore[misc]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    model = ODEModel(Tanh(), state_shape=(3,), encoder=nn.Linear(4, 3)).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    cpu = anytime_predict(model, x, level=0.3, kappa=0.0, solver="dopri5")
    gpu = anytime_predict(model.cuda(), x.cuda(), level=0.3, kappa=0.0, solver="dopri5")
    assert gpu.logits.device.type == "cuda"
    assert torch.equal(cpu.nfe, gpu.nfe.cpu())
    torch.testing.assert_close(cpu.logits, gpu.logits.cpu(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"level": -0.1}, ValueError, "level"),
        ({"kappa": -1.0}, ValueError, "kappa"),
        ({"patience": 0}, ValueError, "patience"),
        ({"patience": 1.5}, TypeError, "patience"),
        ({"solver": "euler"}, ValueError, "solver"),
        ({"solver": "dopri5", "steps": 4}, ValueError, "steps"),
        ({"rtol": 0.0}, ValueError, "rtol"),
        ({"t_end": -1.0}, ValueError, "t_end"),
        ({"potential": "ce"}, TypeError, "potential"),
        ({"potential": MSEPotential()}, ValueError, "level is required with potential=MSEPotential"),
        ({"max_steps": 0}, ValueError, "max_steps"),
    ],
)
def test_input_validation(kwargs: dict, error: type, match: str) -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    with pytest.raises(error, match=match):
        anytime_predict(model, x, **kwargs)


def test_input_validation_of_model_x_and_choose_level() -> None:
    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        anytime_predict(model, x.tolist())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not supported"):
        anytime_predict(nn.Linear(2, 2), x)
    with pytest.raises(ValueError, match="steps is required"):
        anytime_predict(TorchdiffeqModel(models.PlainField()), torch.randn(4, 2), solver="rk4")
    with pytest.raises(ValueError, match="max_false_stop_rate"):
        choose_level(model, x, max_false_stop_rate=1.5)
    with pytest.raises(ValueError, match="levels"):
        choose_level(model, x, levels=[])


def _book_first_step(field, y0: torch.Tensor, f0: torch.Tensor, tol: float) -> tuple[float, float]:
    """Hairer-Norsett-Wanner II.4's starting step for one example, in plain Python floats:
    ``(h1, min(100 h0, h1))``, the derivative-based estimate and the capped one; ``field(y, t)``."""
    scale = [tol + abs(v) * tol for v in y0.tolist()]
    rms = lambda values: math.sqrt(sum(v * v for v in values) / len(values))  # noqa: E731
    d0 = rms([v / s for v, s in zip(y0.tolist(), scale, strict=True)])
    d1 = rms([v / s for v, s in zip(f0.tolist(), scale, strict=True)])
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    f1 = field(y0 + h0 * f0, h0)
    d2 = rms([(a - b) / s for a, b, s in zip(f1.tolist(), f0.tolist(), scale, strict=True)]) / h0
    h1 = (0.01 / max(d1, d2)) ** (1 / 5)
    return h1, min(100 * h0, h1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_from_a_zero_state_the_first_step_is_the_books_estimate_without_the_cap(seed: int) -> None:
    """From ``eta(0) = 0`` the default first step is the book's ``h1`` (torchdiffeq's cap
    ``100 h0`` with ``h0 = 1e-6`` would make it 1e-4), the solve stays within tolerance of an
    accurate reference, and it costs fewer evaluations than torchdiffeq's; from a nonzero
    state the default is torchdiffeq's estimate, so the steps are torchdiffeq's."""
    torch.manual_seed(seed)
    model = ODEModel(Tanh(), state_shape=(3,), encoder=nn.Linear(4, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    result = anytime_predict(model, x, level=0.0, solver="dopri5")
    capped = anytime_predict(model, x, level=0.0, solver="dopri5", first_step="torchdiffeq")
    with torch.no_grad():
        context, eta0 = model.encode(x)
        assert float(eta0.abs().max()) == 0.0
        for i in range(x.shape[0]):

            def field(eta: torch.Tensor, t: float, i: int = i) -> torch.Tensor:
                time = torch.full((1,), t, dtype=torch.float64)
                return model.vector_field(eta[None], context[i : i + 1], time)[0]

            f0 = field(eta0[i], 0.0)
            h1, h_capped = _book_first_step(field, eta0[i], f0, 1e-3)
            assert h_capped == pytest.approx(1e-4) and h1 > 10 * h_capped
            # The calls of this example alone: f0 at t = 0, the estimate's trial at t = h0 = 1e-6,
            # then the first step's second stage at t = h / 5.
            times: list[float] = []

            def record(module: nn.Module, args: tuple, out: torch.Tensor, times: list[float] = times) -> None:
                times.append(float(args[2].max()))

            handle = model.dynamics.register_forward_hook(record)
            try:
                anytime_predict(model, x[i : i + 1], level=0.0, solver="dopri5")
            finally:
                handle.remove()
            assert times[:2] == [0.0, pytest.approx(1e-6)]
            assert times[2] == pytest.approx(h1 / 5, rel=1e-9)
    assert bool((result.nfe < capped.nfe).all())
    tight = partial(torchdiffeq.odeint, method="dopri5", rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        reference = integrate(model, x, torch.tensor([0.0, 1.0], dtype=torch.float64), solver=tight)[-1]
    torch.testing.assert_close(result.logits, reference, rtol=0, atol=2e-3)
    # Nonzero initial states (the relaxation starts at u s e_c, u > 0): the cap stays.
    relax, inputs = relax_model(), relax_inputs(RATES, CLASSES)
    default = anytime_predict(relax, inputs, level=0.0, solver="dopri5")
    torchdiffeq_start = anytime_predict(relax, inputs, level=0.0, solver="dopri5", first_step="torchdiffeq")
    assert torch.equal(default.nfe, torchdiffeq_start.nfe)
    torch.testing.assert_close(default.logits, torchdiffeq_start.logits, rtol=0, atol=0)


def test_first_step_skips_the_estimate() -> None:
    model, x = relax_model(), relax_inputs(RATES, CLASSES)
    result = anytime_predict(model, x, level=0.0, solver="dopri5", first_step=0.05)
    assert torch.equal(result.nfe, 1 + 6 * (result.steps + result.rejected_steps))
    solver = partial(torchdiffeq.odeint, method="dopri5", rtol=1e-3, atol=1e-3, options={"first_step": 0.05})
    for i in range(len(RATES)):
        with torch.no_grad():
            ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
            _, nfe = integrate(model, x[i : i + 1], ts, solver=solver, return_nfe=True)
        assert int(result.nfe[i]) == nfe
    with pytest.raises(ValueError, match="first_step"):
        anytime_predict(model, x, solver="rk4", steps=4, first_step=0.1)
    with pytest.raises(ValueError, match="first_step must be None, a positive float or 'torchdiffeq'"):
        anytime_predict(model, x, solver="dopri5", first_step="auto")


def test_max_steps_raises_solver_error() -> None:
    from lyapunov_plugin import SolverError

    model, x = relax_model(), relax_inputs([400.0], [0], [0.2])
    with pytest.raises(SolverError, match="max_steps"):
        anytime_predict(model, x, level=0.0, solver="dopri5", max_steps=3, rtol=1e-9, atol=1e-9)


def test_benchmark_quick_mode(tmp_path) -> None:
    """``python -m benchmarks.anytime --quick`` end to end: files written, numbers consistent."""
    import json

    from benchmarks import anytime as bench

    out = bench.main(problems=("iris",), patterns=("paper",), seeds=(0,), epochs=2, out_dir=tmp_path, stem="quick")
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"quick.{suffix}").stat().st_size > 0
    row = json.loads((tmp_path / "quick.json").read_text())["rows"][0]
    for method in ("lyanet", "standard"):
        result = row[method]
        assert 0.0 <= result["acc_anytime"] <= 1.0 and 0.0 <= result["false_stop_rate"] <= 1.0
        assert 1.0 <= result["mean_nfe_anytime"] <= result["mean_nfe_full"]
        assert result["val_false_stop_rate"] <= bench.MAX_FALSE_STOP_RATE
        assert 0.0 <= result["acc_early"] <= 1.0
        # The level is chosen with the Clopper-Pearson bound: 30 validation examples cannot
        # certify 0.5% (that needs >= 322 without a false stop), so the rule is off.
        assert result["level"] == 0.0 and result["val_upper_bound"] is None
        assert result["mean_nfe_anytime"] == result["mean_nfe_full"]
        point = result["selectors"]["point estimate"]
        assert point["level"] >= result["level"] and point["val_false_stop_rate"] <= bench.MAX_FALSE_STOP_RATE
        assert point["mean_nfe_anytime"] <= result["mean_nfe_full"]
        # The certified rule never stops falsely; "either" never costs more than the main rule.
        for key in ("certified", "certified_rk4", "certified_rk4_local"):
            assert result[key]["false_stop_rate"] == 0.0
            assert result[key]["mean_nfe"] <= result[key]["mean_nfe_full"]
        assert result["either"]["mean_nfe"] <= result["mean_nfe_anytime"]
        # The local bound adds stops to the global one on the same RK4 solve, never removes any.
        assert result["certified_rk4_local"]["mean_nfe"] <= result["certified_rk4"]["mean_nfe"]
        assert result["certified_rk4_local"]["wall_ratio"] > 0
    cell = out["summary"][0]
    assert cell["nfe_ratio"][0] == row["lyanet"]["mean_nfe_anytime"] / row["standard"]["nfe_batched_dopri5"]
    assert "| iris | paper |" in out["markdown"]
    assert "early termination" in out["markdown"] and "| point estimate |" in out["markdown"]
    assert "certified rule: worst single run false stops 0.00%" in out["markdown"]
    assert "`bound='local'` (the paper's model" in out["markdown"]
    assert ("met" in out["markdown"]) and ("missed" in out["markdown"])


def test_the_trainer_reaches_anytime_predict_with_its_potential():
    from lyapunov_plugin import LyapunovTrainer

    from .models import blobs, loader, torchdyn_data_controlled

    torch.manual_seed(0)
    trainer = LyapunovTrainer(torchdyn_data_controlled(), seed=0, progress=False)
    x, y = blobs(64)
    trainer.fit(loader(x, y), epochs=3)
    direct = anytime_predict(trainer.model, x, level=0.2)
    through = trainer.anytime_predict(x.double(), level=0.2)  # float64 input is cast to the model
    torch.testing.assert_close(through.logits, direct.logits)
    assert torch.equal(through.nfe, direct.nfe)
