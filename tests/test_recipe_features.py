"""Library features behind the default recipe and the real-data levers: covering region,
counterexample search, blocks, Theorem-3 certificate, Lipschitz bounds."""

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from lyapunov_plugin import (
    CounterexampleSearch,
    CrossEntropyPotential,
    HypercubeSampler,
    LyapunovTrainer,
    ODEModel,
    SamplingContext,
    UniformTimeSampler,
    monte_carlo_lyapunov_loss,
    spectral_lipschitz_bound,
    theorem3_radius,
)
from lyapunov_plugin.blocks import LipschitzMLP, MLPDynamics, SimplexDynamics, Standardize, simplex_corners
from lyapunov_plugin.diagnostics import empirical_lipschitz, theorem3_certificate
from lyapunov_plugin.trainer import DEFAULT_KAPPA, DEFAULT_LR


def _model(seed=0, state=3, context=4):
    torch.manual_seed(seed)
    return ODEModel(MLPDynamics(state, context, (16,)), state_shape=(state,), encoder=nn.Linear(2, context))


def test_covering_cube_contains_every_rollout_state():
    traj = torch.zeros(4, 2, 3)
    traj[2, 1, 0] = 40.0
    traj[3, 0, 2] = -25.0
    ctx = SamplingContext(eta0=torch.zeros(2, 3), trajectory=traj)
    sampler = HypercubeSampler(half_width=1.0, cover=2.0)
    assert sampler.requires_trajectory
    out = sampler.sample(ctx, 4000, generator=torch.Generator().manual_seed(0))
    assert float(out.abs().max()) <= 80.0 and float(out.abs().max()) > 70.0  # region grew to 2 x 40
    small = SamplingContext(eta0=torch.zeros(2, 3), trajectory=torch.full((2, 2, 3), 0.1))
    assert float(sampler.sample(small, 1000).abs().max()) <= 1.0  # never below the base half-width
    with pytest.raises(ValueError, match="a sampler with cover set needs SamplingContext.trajectory"):
        sampler.sample(SamplingContext(eta0=torch.zeros(2, 3)), 3)
    with pytest.raises(ValueError, match="cover must be >= 1"):
        HypercubeSampler(half_width=1.0, cover=0.5)


def test_trainer_defaults_are_the_documented_recipe():
    from lyapunov_plugin import MonteCarloObjective, RolloutSampler

    trainer = LyapunovTrainer(_model(), progress=False)
    assert trainer.kappa_schedule.final == DEFAULT_KAPPA == 10.0
    assert trainer.optimizer.param_groups[0]["lr"] == DEFAULT_LR == 1e-2
    # data-controlled dynamics and an identity readout: Monte Carlo along rollouts
    assert trainer.mode == "monte_carlo"
    assert trainer.objective == MonteCarloObjective()
    assert isinstance(trainer.state_sampler, RolloutSampler)


def test_counterexample_search_moves_states_towards_violation_and_spares_parameters():
    model = _model()
    x, y = torch.randn(6, 2), torch.randint(0, 3, (6,))
    search = CounterexampleSearch(steps=4, step_size=0.3, fraction=1.0)
    context, eta0 = model.encode(x)
    eta = (
        HypercubeSampler(half_width=2.0)
        .sample(SamplingContext(eta0=eta0), 5, generator=torch.Generator().manual_seed(0))
        .reshape(30, 3)
    )
    t = torch.rand(30)
    ctx, target = context.repeat_interleave(5, 0), y.repeat_interleave(5)
    pot = CrossEntropyPotential()

    def margin(states):
        v, v_dot = pot.evaluate(states, model.vector_field(states, ctx, t), target)
        return (v_dot + 2.0 * v).detach()

    refined = search.refine(model, eta, ctx, t, target, potential=pot, kappa=2.0, samples_per_example=5)
    assert float(margin(refined).mean()) > float(margin(eta).mean())
    assert (refined - eta).abs().max() <= 4 * 0.3 + 1e-6
    assert all(p.grad is None for p in model.parameters())
    half = CounterexampleSearch(steps=2, step_size=0.3, fraction=0.4).refine(
        model, eta, ctx, t, target, potential=pot, kappa=2.0, samples_per_example=5
    )
    moved = (half != eta).any(-1).reshape(6, 5)
    assert moved[:, 2:].sum() == 0  # only the first round(0.4 * 5) = 2 samples per example move
    out = monte_carlo_lyapunov_loss(
        model,
        x,
        y,
        potential=pot,
        kappa=2.0,
        state_sampler=HypercubeSampler(half_width=2.0),
        time_sampler=UniformTimeSampler(),
        num_samples=5,
        counterexamples=search,
    )
    out.loss.backward()
    assert model.dynamics.net[0].weight.grad is not None
    with pytest.raises(ValueError, match=r"fraction must lie in \(0, 1\], got 1.5"):
        CounterexampleSearch(fraction=1.5)


def test_simplex_dynamics_stay_in_the_hypercube_and_decrease_cross_entropy_when_pointing_right():
    torch.manual_seed(0)
    dyn = SimplexDynamics(4, 3, half_width=2.0, gain=5.0)
    model = ODEModel(dyn, state_shape=(4,))
    x = torch.randn(16, 3)
    states = model.trajectory(x, torch.linspace(0, 1, 11))
    assert float(states.detach().abs().max()) <= 2.0 + 1e-5
    corners = simplex_corners(4, 2.0)
    assert torch.equal(corners.argmax(-1), torch.arange(4))
    # weights fully on the label: f = gain (c_y - eta), so dV/dt <= 0 inside the cube
    eta = (torch.rand(32, 4) * 2 - 1) * 2.0
    y = torch.randint(0, 4, (32,))
    velocity = 5.0 * (corners[y] - eta)
    _, v_dot = CrossEntropyPotential().evaluate(eta, velocity, y)
    assert bool((v_dot <= 1e-6).all())


@given(st.integers(2, 6), st.integers(2, 6), st.floats(0.5, 3.0), st.integers(0, 100))
def test_lipschitz_mlp_bound_holds_empirically(inp, out, scale, seed):
    torch.manual_seed(seed)
    mlp = LipschitzMLP([inp, 8, out], lipschitz=scale)
    for _ in range(3):  # let the power iteration settle
        mlp(torch.randn(4, inp))
    mlp.eval()
    bound = mlp.lipschitz_bound()
    x = torch.randn(64, inp, dtype=torch.float32)
    assert empirical_lipschitz(mlp, x) <= bound * (1 + 1e-4)
    assert bound <= scale * 1.5  # spectral normalisation keeps the bound near the scale


def test_spectral_bound_matches_hand_computation_and_refuses_unknown_layers():
    lin1, lin2 = nn.Linear(3, 4), nn.Linear(4, 2)
    net = nn.Sequential(lin1, nn.Tanh(), lin2)
    expected = float(
        torch.linalg.matrix_norm(lin1.weight.double(), 2) * torch.linalg.matrix_norm(lin2.weight.double(), 2)
    )
    assert math.isclose(spectral_lipschitz_bound(net), expected, rel_tol=1e-9)
    std = Standardize(torch.zeros(1), torch.tensor([0.25]))
    assert math.isclose(
        spectral_lipschitz_bound(nn.Sequential(std, lin1)),
        4 * expected / float(torch.linalg.matrix_norm(lin2.weight.double(), 2)),
        rel_tol=1e-6,
    )
    with pytest.raises(TypeError, match="spectral_lipschitz_bound supports .* got Conv1d"):
        spectral_lipschitz_bound(nn.Conv1d(1, 1, 3))


def test_mlp_dynamics_context_bound_holds_empirically():
    torch.manual_seed(1)
    dyn = MLPDynamics(3, 5, (16,))
    eta, t = torch.randn(32, 3), torch.rand(32)
    bound = dyn.context_lipschitz_bound()
    ctx = torch.randn(32, 5)
    assert empirical_lipschitz(lambda c: dyn(eta, c, t), ctx) <= bound * (1 + 1e-5)


@given(st.floats(0.0, 0.69), st.floats(0.1, 100.0), st.floats(0.1, 20.0))
def test_theorem3_radius_solves_eq_15(delta, lipschitz, kappa):
    eps = float(theorem3_radius(delta, lipschitz, kappa))
    # At the radius, Eq. (15) holds with equality.
    assert math.isclose(delta + lipschitz * eps / kappa * (1 - math.exp(-kappa)), math.log(2), rel_tol=1e-9)
    assert float(theorem3_radius(0.7, lipschitz, kappa)) == 0.0


def test_theorem3_certificate_zero_where_condition_fails_or_misclassified():
    model = _model()
    x, y = torch.randn(10, 2), torch.randint(0, 3, (10,))
    cert = theorem3_certificate(
        model,
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=1.0,
        lipschitz=2.0,
        state_sampler=HypercubeSampler(half_width=2.0),
        num_samples=16,
    )
    assert cert.radius.shape == (10,)
    assert bool((cert.radius[~(cert.correct & cert.condition_held)] == 0).all())
    assert 0.0 <= cert.violation_rate <= 1.0
    summary = cert.summary()
    assert set(summary) >= {"radius_median", "condition_fraction", "violation_rate", "radius_if_held_median"}
    # With eta(0) = 0 and 3 classes, delta = exp(-kappa) log 3 for every example.
    torch.testing.assert_close(cert.delta, torch.full((10,), math.exp(-1.0) * math.log(3), dtype=torch.float64))
