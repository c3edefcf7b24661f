"""Objectives (Algorithms 1-2 as objects), the rollout sampler and the default recipe."""

import dataclasses
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    LyapunovTrainer,
    MonteCarloObjective,
    ODEModel,
    PathIntegralObjective,
    Recipe,
    RolloutSampler,
    SamplingContext,
    SupervisedObjective,
    UniformTimeSampler,
    default_objective,
    default_recipe,
)
from lyapunov_plugin.objectives import readout_is_trainable

from .models import blobs, loader


class Dynamics(nn.Module):
    def __init__(self, state=3, context=2, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state + context + 1, hidden), nn.Tanh(), nn.Linear(hidden, state))

    def forward(self, eta, context, t):
        return self.net(torch.cat([eta, context, t[:, None].to(eta.dtype)], dim=1))


def paper_model(seed=0, dtype=torch.float32, readout=None, state=3):
    torch.manual_seed(seed)
    return ODEModel(
        Dynamics(state=state),
        state_shape=(state,),
        encoder=nn.Linear(2, 2),
        readout=readout,
        solver=FixedStepSolver(method="rk4", steps=4),
    ).to(dtype)


def params(model):
    return [p.detach().clone() for p in model.parameters()]


# ------------------------------------------------------------------ RolloutSampler
@given(steps=st.integers(2, 6), batch=st.integers(1, 4), samples=st.integers(1, 9), seed=st.integers(0, 10**6))
@settings(max_examples=30, deadline=None)
def test_rollout_sampler_without_noise_lies_on_the_rollout_at_its_own_time(steps, batch, samples, seed):
    g = torch.Generator().manual_seed(seed)
    ts = torch.sort(torch.rand(steps, generator=g, dtype=torch.float64)).values
    ts[0], ts[-1] = 0.0, 1.0
    traj = torch.randn(steps, batch, 2, generator=g, dtype=torch.float64)
    context = SamplingContext(eta0=traj[0], trajectory=traj, trajectory_times=ts)
    states, times = RolloutSampler(noise_scales=(0.0,)).sample_with_times(context, samples, generator=g)
    assert states.shape == (batch, samples, 2) and times.shape == (batch, samples)
    assert states.dtype == times.dtype == torch.float64
    # independent check: piecewise-linear interpolation of each example's rollout at its time
    for b in range(batch):
        for j in range(samples):
            t = float(times[b, j])
            assert 0.0 <= t <= 1.0
            k = min(int(torch.searchsorted(ts, torch.tensor(t, dtype=ts.dtype), right=True)) - 1, steps - 2)
            w = (t - float(ts[k])) / float(ts[k + 1] - ts[k])
            expected = (1 - w) * traj[k, b] + w * traj[k + 1, b]
            torch.testing.assert_close(states[b, j], expected)


def test_rollout_sampler_noise_is_relative_to_the_rollouts_spread():
    g = torch.Generator().manual_seed(0)
    traj = torch.randn(5, 64, 3, generator=g)
    ts = torch.linspace(0, 1, 5)
    sampler = RolloutSampler(noise_scales=(0.3,))
    small = sampler.sample(
        SamplingContext(eta0=traj[0], trajectory=traj, trajectory_times=ts),
        50,
        generator=torch.Generator().manual_seed(1),
    )
    big = sampler.sample(
        SamplingContext(eta0=100 * traj[0], trajectory=100 * traj, trajectory_times=ts),
        50,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(big, 100 * small, rtol=1e-4, atol=1e-3)  # scale-free: same draws, scaled
    on_path = RolloutSampler(noise_scales=(0.0,)).sample(
        SamplingContext(eta0=traj[0], trajectory=traj, trajectory_times=ts),
        50,
        generator=torch.Generator().manual_seed(1),
    )
    offset = (small - on_path).flatten(0, 1)
    ratio = offset.std(0) / traj.reshape(-1, 3).std(0)
    assert torch.all((ratio > 0.2) & (ratio < 0.4))


def test_rollout_sampler_validates_its_settings_and_its_context():
    with pytest.raises(ValueError, match="noise_scales must be a non-empty tuple"):
        RolloutSampler(noise_scales=())
    with pytest.raises(ValueError, match=r"noise_scales\[1\] must be >= 0"):
        RolloutSampler(noise_scales=(0.1, -1.0))
    with pytest.raises(ValueError, match="RolloutSampler needs SamplingContext.trajectory"):
        RolloutSampler().sample(SamplingContext(eta0=torch.zeros(2, 3)), 4)
    with pytest.raises(ValueError, match=r"trajectory_times must have shape \(T,\) = \(4,\)"):
        SamplingContext(eta0=torch.zeros(2, 3), trajectory=torch.zeros(4, 2, 3), trajectory_times=torch.zeros(3))
    assert RolloutSampler().provides_times and RolloutSampler().requires_trajectory


# -------------------------------------------------------------------- objectives
def test_objectives_are_frozen_keyword_only_and_validated():
    with pytest.raises(TypeError):
        MonteCarloObjective(CrossEntropyPotential())  # keyword-only
    obj = MonteCarloObjective()
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.num_samples = 3
    with pytest.raises(ValueError, match="time_sampler does not apply: RolloutSampler pairs each state"):
        MonteCarloObjective(time_sampler=UniformTimeSampler())
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        MonteCarloObjective(num_samples=0)
    with pytest.raises(ValueError, match="rollout_points must be >= 2, got 1"):
        MonteCarloObjective(rollout_points=1)
    with pytest.raises(ValueError, match="form must be one of"):
        PathIntegralObjective(form="trapezoid")
    with pytest.raises(ValueError, match="solver must be None, 'model' or a callable"):
        PathIntegralObjective(solver="dopri5")
    with pytest.raises(TypeError, match="potential must be a lyapunov_plugin.Potential"):
        SupervisedObjective(potential=F.cross_entropy)
    with pytest.raises(ValueError, match="kappa must be > 0"):
        PathIntegralObjective()(paper_model(), torch.randn(4, 2), torch.zeros(4, dtype=torch.long), kappa=0.0)


def test_monte_carlo_objective_is_pure_and_reproducible():
    model = paper_model()
    model.train()
    x, y = torch.randn(6, 2), torch.randint(0, 3, (6,))
    before = params(model)
    obj = MonteCarloObjective(num_samples=5)
    a = obj(model, x, y, kappa=2.0, generator=torch.Generator().manual_seed(3))
    b = obj(model, x, y, kappa=2.0, generator=torch.Generator().manual_seed(3))
    assert model.training  # the eval-mode rollout restored the mode
    assert all(torch.equal(p, q) for p, q in zip(before, params(model), strict=False))
    torch.testing.assert_close(a.loss, b.loss)
    assert a.pointwise.shape == (30,)
    a.loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # encoder reached through the context


def test_path_integral_continuous_matches_an_independent_computation_in_float64():
    torch.manual_seed(0)
    model = paper_model(dtype=torch.float64, readout=nn.Linear(3, 3).double())
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    kappa, steps = 3.0, 4
    out = PathIntegralObjective(steps=steps)(model, x, y, kappa=kappa)
    # by hand: RK4 with `steps` steps from eta(0) = 0, Eq. (12) with reverse-mode dV/deta at each state
    context = model.encoder(x)
    f = model.dynamics
    eta, h, states = torch.zeros(4, 3, dtype=torch.float64), 1.0 / steps, []
    for k in range(steps + 1):
        states.append((k * h, eta))
        if k == steps:
            break
        t = torch.full((4,), k * h, dtype=torch.float64)
        k1 = f(eta, context, t)
        k2 = f(eta + h / 2 * k1, context, t + h / 2)
        k3 = f(eta + h / 2 * k2, context, t + h / 2)
        k4 = f(eta + h * k3, context, t + h)
        eta = eta + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    losses = []
    for t, s in states:
        s_leaf = s.detach().requires_grad_(True)
        v = F.cross_entropy(model.readout_module(s_leaf), y, reduction="none")
        (grad,) = torch.autograd.grad(v.sum(), s_leaf)
        v_dot = (grad * f(s, context, torch.full((4,), t, dtype=torch.float64))).sum(-1)
        losses.append(torch.relu(v_dot + kappa * v))
    torch.testing.assert_close(out.loss.detach(), torch.cat(losses).mean().detach())
    out.loss.backward()
    assert model.readout_module.weight.grad is not None and model.encoder.weight.grad is not None


def test_path_integral_discrete_uses_the_continuous_rate_per_step():
    model = paper_model(dtype=torch.float64)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randint(0, 3, (5,))
    kappa, steps = 2.0, 4
    out = PathIntegralObjective(steps=steps, form="discrete")(model, x, y, kappa=kappa)
    traj = model.trajectory(x, torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    v = torch.stack([F.cross_entropy(s, y, reduction="none") for s in traj])
    rate = 1 - math.exp(-kappa / steps)
    expected = torch.relu(v[1:] - (1 - rate) * v[:-1]).sum(0).mean()
    torch.testing.assert_close(out.loss, expected)


def test_path_integral_with_the_models_own_solver_and_supervised_baseline():
    model = paper_model(dtype=torch.float64)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randint(0, 3, (5,))
    own = PathIntegralObjective(steps=4, solver="model")(model, x, y)
    cheap = PathIntegralObjective(steps=4)(model, x, y)  # the model's own solver is RK4-4 too
    torch.testing.assert_close(own.loss, cheap.loss)
    sup = SupervisedObjective()(model, x, y)
    torch.testing.assert_close(sup.loss, F.cross_entropy(model(x), y))
    assert torch.equal(sup.v_dot, torch.zeros(5, dtype=torch.float64))


# ------------------------------------------------------------------ default recipe
class NoReadoutModule(nn.Module):
    """A hand-written protocol model without ``readout_module``: the readout is probed."""

    def __init__(self, trainable):
        super().__init__()
        self.inner = paper_model(readout=nn.Linear(3, 3) if trainable else None)

    def encode(self, x):
        return self.inner.encode(x)

    def vector_field(self, eta, context, t):
        return self.inner.vector_field(eta, context, t)

    def readout(self, eta):
        return self.inner.readout(eta)

    def trajectory(self, x, ts):
        return self.inner.trajectory(x, ts)


def test_default_objective_follows_the_model_structure():
    assert default_objective(paper_model()) == MonteCarloObjective()
    assert default_objective(paper_model(readout=nn.Linear(3, 3))) == PathIntegralObjective()
    frozen = nn.Linear(3, 3).requires_grad_(False)
    assert default_objective(paper_model(readout=frozen)) == MonteCarloObjective()
    unconditioned = ODEModel(lambda eta, c, t: -eta, initial_state=lambda c: c, conditioned_on_input=False)
    assert default_objective(unconditioned) == PathIntegralObjective()
    x = torch.randn(3, 2)
    assert not readout_is_trainable(NoReadoutModule(False), x)
    assert readout_is_trainable(NoReadoutModule(True), x)
    assert default_objective(NoReadoutModule(True), x) == PathIntegralObjective()
    with pytest.raises(ValueError, match="has no readout_module: pass example inputs x"):
        default_objective(NoReadoutModule(True))


def test_models_with_coarse_fixed_step_inference_train_on_their_own_steps():
    """A model whose own solver takes fewer fixed steps than the default rollout (4) is
    trained with the discrete path loss along those steps: the map inference computes."""
    coarse = ODEModel(
        Dynamics(state=3),
        state_shape=(3,),
        encoder=nn.Linear(2, 2),
        readout=nn.Linear(3, 3),
        solver=FixedStepSolver(method="rk4", steps=2),
    )
    assert coarse.fixed_steps == 2
    assert default_objective(coarse) == PathIntegralObjective(form="discrete", solver="model", steps=2)
    assert default_objective(paper_model(readout=nn.Linear(3, 3))) == PathIntegralObjective()  # 4 steps: as fine
    pytest.importorskip("torchdyn")
    pytest.importorskip("torchdiffeq")
    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel
    from lyapunov_plugin.adapters.torchdyn import TorchdynModel

    from .models import ConditionedField, torchdyn_plain

    assert TorchdynModel(torchdyn_plain(solver="rk4")).fixed_steps == 1
    assert TorchdynModel(torchdyn_plain(solver="dopri5")).fixed_steps is None
    assert default_objective(torchdyn_plain(solver="rk4")) == PathIntegralObjective(
        form="discrete", solver="model", steps=1
    )
    field = ConditionedField()
    assert TorchdiffeqModel(field, method="rk4", options={"step_size": 0.5}).fixed_steps == 2
    assert TorchdiffeqModel(field, method="euler").fixed_steps == 1
    assert TorchdiffeqModel(field, method="dopri5").fixed_steps is None


def test_a_one_step_rk4_torchdyn_model_trains_as_well_as_the_standard_way():
    """The path loss on a finer grid than inference learned a flow the one-step model does not
    compute (digits, conv torchdyn rk4 model: 21.3% against 8.2% for standard training on one
    seed, docs/defaults.md); on its own step it matches standard training."""
    pytest.importorskip("torchdyn")
    from .models import torchdyn_plain

    x, y = blobs(128, seed=1)
    errors = {}
    for objective in (None, SupervisedObjective()):
        torch.manual_seed(0)
        trainer = LyapunovTrainer(torchdyn_plain(solver="rk4"), objective=objective, progress=False, seed=0)
        trainer.fit(loader(x, y), epochs=8)
        errors[trainer.mode] = trainer.evaluate((x, y))["error"]
    assert errors["path_integral"] <= errors["standard"] + 0.01


def test_default_objective_samples_states_only_from_a_fixed_initial_state():
    pytest.importorskip("torchdyn")
    from torchdyn.core import NeuralODE
    from torchdyn.nn import DataControl

    from lyapunov_plugin.objectives import initial_state_is_trainable

    def node():
        field = nn.Sequential(DataControl(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
        return NeuralODE(field, solver="dopri5", return_t_eval=False)

    assert default_objective(node()) == MonteCarloObjective()  # eta(0) = x, identity readout
    encoded = nn.Sequential(nn.Linear(2, 3), node())  # the README's pattern: eta(0) = Linear(x)
    assert initial_state_is_trainable(encoded) and default_objective(encoded) == PathIntegralObjective()
    frozen = nn.Sequential(nn.Linear(2, 3).requires_grad_(False), node())
    assert default_objective(frozen) == MonteCarloObjective()
    # probed when the model does not say
    probe = NoReadoutModule(False)
    probe.inner.initial_state = nn.Linear(2, 3)  # eta(0) = Linear(context)
    assert initial_state_is_trainable(probe, torch.randn(2, 2))
    with pytest.raises(ValueError, match="has no initial_state_trainable attribute: pass example inputs x"):
        initial_state_is_trainable(NoReadoutModule(False))


def test_trainer_resolves_a_probed_default_on_the_first_batch():
    trainer = LyapunovTrainer(NoReadoutModule(False), progress=False, seed=0)
    assert trainer.mode is None
    x, y = blobs(64, seed=1, classes=2)
    trainer.fit(loader(x, y), epochs=1)
    assert trainer.mode == "monte_carlo" and trainer.history[-1]["mode"] == "monte_carlo"


def test_trainer_default_equals_the_public_default_objective_step_for_step():
    x, y = blobs(64, seed=1, classes=3)
    trainer = LyapunovTrainer(paper_model(), progress=False, seed=5)
    manual_model = paper_model()
    objective = default_objective(manual_model, x)
    optimizer = torch.optim.Adam(manual_model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(5)
    batches = [(x[:32], y[:32]), (x[32:], y[32:])]
    trainer.fit(batches, epochs=1)
    for xb, yb in batches:
        optimizer.zero_grad()
        objective(manual_model, xb, yb, kappa=10.0, generator=generator).loss.backward()
        optimizer.step()
    for a, b in zip(params(trainer.model), params(manual_model), strict=False):
        torch.testing.assert_close(a, b)


def _legacy(keywords):
    """The deprecation warning of the keyword form, naming ``keywords``."""
    return pytest.warns(FutureWarning, match=re.escape(f"keyword(s) {sorted(keywords)} are deprecated"))


def test_trainer_keyword_settings_build_the_matching_objective_or_refuse():
    """The deprecated keyword form still builds the objective it names (with a FutureWarning)."""
    model = paper_model()
    sampler = HypercubeSampler(half_width=2.0)
    with _legacy(["num_samples", "state_sampler", "time_sampler"]):
        t = LyapunovTrainer(
            model, progress=False, state_sampler=sampler, time_sampler=UniformTimeSampler(), num_samples=4
        )
    assert t.objective == MonteCarloObjective(state_sampler=sampler, time_sampler=UniformTimeSampler(), num_samples=4)
    with _legacy(["path_loss", "path_steps"]):
        t = LyapunovTrainer(model, progress=False, path_steps=6, path_loss="discrete")
    assert t.objective == PathIntegralObjective(steps=6, form="discrete")
    with _legacy(["mode"]):
        t = LyapunovTrainer(model, progress=False, mode="standard")
    assert t.objective == SupervisedObjective()
    focal = CrossEntropyPotential(gamma=0.1)
    with _legacy(["potential"]):
        t = LyapunovTrainer(model, progress=False, potential=focal)
    assert t.objective == MonteCarloObjective(potential=focal)
    with (
        _legacy(["mode", "num_samples"]),
        pytest.raises(ValueError, match=r"settings \['num_samples'\] do not apply to mode='standard'"),
    ):
        LyapunovTrainer(model, mode="standard", num_samples=3)
    with (
        _legacy(["mode", "path_steps"]),
        pytest.raises(ValueError, match=r"settings \['path_steps'\] do not apply to mode='monte_carlo'"),
    ):
        LyapunovTrainer(model, mode="monte_carlo", path_steps=3)
    with _legacy(["num_samples", "path_steps"]), pytest.raises(ValueError, match="do not belong to one objective"):
        LyapunovTrainer(model, num_samples=3, path_steps=3)
    with _legacy(["num_samples"]), pytest.raises(ValueError, match="pass either objective or the keyword settings"):
        LyapunovTrainer(model, PathIntegralObjective(), num_samples=3)


def test_trainer_recipe_objective_and_potential_build_the_matching_objective_or_refuse():
    model = paper_model()
    sampler = HypercubeSampler(half_width=2.0)
    mc = MonteCarloObjective(state_sampler=sampler, time_sampler=UniformTimeSampler(), num_samples=4)
    assert LyapunovTrainer(model, mc, progress=False).objective == mc  # an Objective in the recipe's place
    assert LyapunovTrainer(model, objective=mc, progress=False).objective == mc
    path = PathIntegralObjective(steps=6, form="discrete")
    assert LyapunovTrainer(model, Recipe(objective=path), progress=False).objective == path
    focal = CrossEntropyPotential(gamma=0.1)
    # A potential alone adjusts the default objective (Monte Carlo for the paper's model).
    assert LyapunovTrainer(model, Recipe(potential=focal), progress=False).objective == MonteCarloObjective(
        potential=focal
    )
    assert LyapunovTrainer(model, default_recipe(model, potential=focal), progress=False).objective == (
        MonteCarloObjective(potential=focal)
    )
    with pytest.raises(ValueError, match="potential applies only to the default objective"):
        Recipe(objective=path, potential=focal)
    with pytest.raises(TypeError, match="recipe must be a lyapunov_plugin Recipe, an Objective or None, got str"):
        LyapunovTrainer(model, "path")
    with pytest.raises(TypeError, match="objective must be a lyapunov_plugin Objective, got str"):
        LyapunovTrainer(model, objective="path")
    with pytest.raises(ValueError, match="t_end belongs to the model: the model's horizon is 1.0, got t_end=0.5"):
        LyapunovTrainer(model, t_end=0.5)


def test_every_epoch_prints_a_summary_line_with_fixed_reference_numbers(capsys):
    x, y = blobs(96, seed=1, classes=3)
    trainer = LyapunovTrainer(paper_model(), seed=0)
    trainer.fit(loader(x, y), epochs=2)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  [monte_carlo]  loss ")
    assert "ref error" in lines[1] and "ref Eq.10 violated" in lines[1]
    record = trainer.history[-1]
    assert 0.0 <= record["ref_error"] <= 1.0 and 0.0 <= record["ref_violation"] <= 1.0 and record["ref_v_end"] >= 0
    assert trainer.reference.x.shape[0] == 32  # the first batch, kept for every epoch


def test_monte_carlo_step_encodes_once_and_rolls_out_from_that_pass():
    """The rollout and the loss share one encoder pass per step (a ResNet trunk is the
    costly part of image models): one call, batch-norm running statistics updated once,
    the encoder still gets gradient, and the rollout starts at that pass's ``eta(0)``."""
    from lyapunov_plugin.blocks import MLPDynamics

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    calls = []
    encoder.register_forward_hook(lambda module, args, out: calls.append(out.detach().clone()))
    model = ODEModel(MLPDynamics(3, 3, (8,)), state_shape=(3,), encoder=encoder, initial_state=lambda c: c)
    model.train()
    objective = MonteCarloObjective()
    seen = []
    original = objective.rollout

    def spy(m, x, *, encoded=None):
        trajectory, ts = original(m, x, encoded=encoded)
        seen.append(trajectory[0].clone())
        return trajectory, ts

    object.__setattr__(objective, "rollout", spy)
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    tracked = int(encoder[1].num_batches_tracked)
    out = objective(model, x, y, kappa=1.0, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert len(calls) == 1 and int(encoder[1].num_batches_tracked) == tracked + 1
    assert encoder[0].weight.grad is not None and float(encoder[0].weight.grad.abs().sum()) > 0
    torch.testing.assert_close(seen[0], calls[0])


def test_monte_carlo_compute_accepts_a_tensor_kappa_past_the_public_checks():
    """``Objective.compute`` is annotated with a float; a 0-d tensor (even one that requires
    grad, e.g. a learned rate) still gives the same loss as the float."""
    model = paper_model(dtype=torch.float64)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randint(0, 3, (5,))
    objective = MonteCarloObjective()
    as_float = objective.compute(model, x, y, kappa=2.0, generator=torch.Generator().manual_seed(0))
    rate = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    as_tensor = objective.compute(model, x, y, kappa=rate, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(as_tensor.loss, as_float.loss)
