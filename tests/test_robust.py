"""robust_objective / InputPerturbedObjective: Eq. (10) at perturbed inputs (Theorem 3's view)."""

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    LyapunovTrainer,
    MonteCarloObjective,
    ODEModel,
    PathIntegralObjective,
    Recipe,
    StateSampler,
    SupervisedObjective,
    default_objective,
    robust_objective,
)
from lyapunov_plugin.robust import ROBUST_EPS, ROBUST_STEPS, InputPerturbedObjective

from .models import blobs, loader

KAPPA = 2.0


class Dynamics(nn.Module):
    def __init__(self, state=3, context=2, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state + context + 1, hidden), nn.Tanh(), nn.Linear(hidden, state))

    def forward(self, eta, context, t):
        return self.net(torch.cat([eta, context, t[:, None].to(eta.dtype)], dim=1))


def paper_model(seed=0, dtype=torch.float32, state=3, encoder=None):
    """Data-controlled field, eta(0) = 0, identity readout: default_objective is Monte Carlo."""
    torch.manual_seed(seed)
    return ODEModel(
        Dynamics(state=state),
        state_shape=(state,),
        encoder=encoder if encoder is not None else nn.Linear(2, 2),
        solver=FixedStepSolver(method="rk4", steps=4),
    ).to(dtype)


@dataclasses.dataclass(frozen=True)
class FixedStates(StateSampler):
    """Deterministic ``mu_H``: the same states and times for every example (no draws)."""

    states: torch.Tensor
    times: torch.Tensor
    requires_trajectory: bool = False
    provides_times: bool = True

    def sample(self, context, num_samples, *, generator=None):
        return self.sample_with_times(context, num_samples, generator=generator)[0]

    def sample_with_times(self, context, num_samples, *, generator=None):
        batch = context.eta0.shape[0]
        s = self.states.to(context.eta0)[None].expand(batch, *self.states.shape)
        t = self.times.to(context.eta0)[None].expand(batch, *self.times.shape)
        return s.clone(), t.clone()


def fixed_base(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    states = 2.0 * torch.randn(4, 3, generator=g, dtype=dtype)
    times = torch.rand(4, generator=g, dtype=dtype)
    return MonteCarloObjective(state_sampler=FixedStates(states, times), num_samples=4), states, times


def hand_loss(model, x, y, states, times):
    """Eq. (12) by hand: relu((softmax(eta) - e_y) . f(eta, encoder(x), t) + kappa CE(eta, y)), averaged."""
    context = model.encoder(x)
    batch, samples = x.shape[0], states.shape[0]
    eta = states[None].expand(batch, samples, 3).reshape(-1, 3)
    t = times[None].expand(batch, samples).reshape(-1)
    ctx = context[:, None].expand(batch, samples, context.shape[1]).reshape(-1, context.shape[1])
    yy = y[:, None].expand(batch, samples).reshape(-1)
    f = model.dynamics(eta, ctx, t)
    v = F.cross_entropy(eta, yy, reduction="none")
    v_dot = ((eta.softmax(-1) - F.one_hot(yy, 3).to(eta.dtype)) * f).sum(-1)
    return torch.relu(v_dot + KAPPA * v).mean()


def batch(dtype=torch.float64, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g, dtype=dtype), torch.arange(n) % 3


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"eps": 0.0}, ValueError, "eps must be > 0"),
        ({"eps": -0.1}, ValueError, "eps must be > 0"),
        ({"eps": "0.1"}, TypeError, "eps must be a real number"),
        ({"eps": float("inf")}, ValueError, "eps must be finite"),
        ({"steps": -1}, ValueError, "steps must be >= 0"),
        ({"steps": 1.0}, TypeError, "steps must be an int"),
        ({"steps": True}, TypeError, "steps must be an int"),
        ({"step_size": 0.0}, ValueError, "step_size must be > 0"),
        ({"random_start": 1}, TypeError, "random_start must be a bool"),
        ({"random_start": False, "steps": 0}, ValueError, "steps must be >= 1 when random_start=False"),
        ({"input_range": (1.0, 0.0)}, ValueError, "input_range must have low < high"),
        ({"input_range": (0.0,)}, TypeError, "input_range must be a"),
        ({"input_range": 1.0}, TypeError, "input_range must be a"),
        ({"input_range": (0.0, "1")}, TypeError, r"input_range\[1\] must be a real number"),
        ({"clean_weight": -0.5}, ValueError, "clean_weight must be >= 0"),
        ({"clean_weight": 1.5}, ValueError, r"clean_weight must be in \[0, 1\]"),
        ({"base": "mc"}, TypeError, "base must be a lyapunov_plugin Objective, got str"),
        ({"base": SupervisedObjective()}, ValueError, "base must evaluate the Lyapunov condition"),
        ({"base": InputPerturbedObjective()}, ValueError, "must not itself be an InputPerturbedObjective"),
    ],
)
def test_settings_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        InputPerturbedObjective(**kwargs)


def test_settings_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        InputPerturbedObjective(MonteCarloObjective())  # type: ignore[misc]
    objective = InputPerturbedObjective(eps=1)
    assert objective.eps == 1.0 and isinstance(objective.eps, float)
    assert objective.alpha == pytest.approx(2.5 * 1.0 / ROBUST_STEPS)
    assert InputPerturbedObjective(eps=0.2, steps=4).alpha == pytest.approx(0.125)
    assert InputPerturbedObjective(step_size=0.03).alpha == 0.03
    with pytest.raises(dataclasses.FrozenInstanceError):
        objective.eps = 0.2  # type: ignore[misc]


def test_uses_solver_follows_the_base():
    assert InputPerturbedObjective().uses_solver is False
    assert InputPerturbedObjective(base=PathIntegralObjective()).uses_solver is True


# ------------------------------------------------------------------ robust_objective
def test_robust_objective_is_the_documented_objective():
    model = paper_model()
    objective = robust_objective(model)
    assert isinstance(objective, InputPerturbedObjective)
    assert objective == InputPerturbedObjective(base=default_objective(model), eps=ROBUST_EPS, steps=ROBUST_STEPS)
    assert isinstance(objective.base, MonteCarloObjective)
    assert (objective.eps, objective.steps, objective.input_range, objective.clean_weight) == (0.1, 2, (0.0, 1.0), 0.0)
    # A trainable readout: default_objective is path-integral training; robust_objective wraps it.
    torch.manual_seed(0)
    with_readout = ODEModel(Dynamics(), state_shape=(3,), encoder=nn.Linear(2, 2), readout=nn.Linear(3, 3))
    wrapped = robust_objective(with_readout)
    assert wrapped.base == default_objective(with_readout)
    assert isinstance(wrapped.base, PathIntegralObjective)


# ------------------------------------------------------------------ the numbers
def test_loss_equals_hand_computation_on_a_fixed_perturbation():
    """steps=0: delta is the uniform draw on the generator; the loss is Eq. (12) at x + delta."""
    model = paper_model(dtype=torch.float64)
    base, states, times = fixed_base()
    eps = 0.3
    objective = InputPerturbedObjective(base=base, eps=eps, steps=0)
    x, y = batch()
    out = objective(model, x, y, kappa=KAPPA, generator=torch.Generator().manual_seed(3))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_adv = (x + (2 * u - 1) * eps).clamp(0.0, 1.0)
    with torch.no_grad():
        expected = hand_loss(model, x_adv, y, states, times)
        clean = hand_loss(model, x, y, states, times)
    assert out.loss.dtype == torch.float64
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-12, atol=1e-12)
    assert abs(float(expected - clean)) > 1e-6  # the perturbation changes the loss: the check has teeth


def test_search_step_is_a_sign_gradient_step_on_the_lyapunov_loss():
    model = paper_model(dtype=torch.float64)
    base, states, times = fixed_base()
    eps, alpha = 0.2, 0.15
    objective = InputPerturbedObjective(base=base, eps=eps, steps=2, step_size=alpha, random_start=False)
    x, y = batch()
    x_adv = objective.perturb(model, x, y, kappa=KAPPA)
    expected = x.clone()
    for _ in range(2):
        probe = expected.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(hand_loss(model, probe, y, states, times), probe)
        expected = torch.minimum(torch.maximum(expected + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-15)
    assert float((x_adv - x).abs().max()) > 0.1
    with torch.no_grad():
        assert hand_loss(model, x_adv, y, states, times) > hand_loss(model, x, y, states, times)
    out = objective(model, x, y, kappa=KAPPA)
    with torch.no_grad():
        torch.testing.assert_close(out.loss.detach(), hand_loss(model, expected, y, states, times))


def test_clean_weight_mixes_the_two_losses():
    model = paper_model(dtype=torch.float64)
    base, states, times = fixed_base()
    objective = InputPerturbedObjective(base=base, eps=0.3, steps=0, clean_weight=0.25)
    x, y = batch()
    out = objective(model, x, y, kappa=KAPPA, generator=torch.Generator().manual_seed(5))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x_adv = (x + (2 * u - 1) * 0.3).clamp(0.0, 1.0)
    with torch.no_grad():
        expected = 0.25 * hand_loss(model, x, y, states, times) + 0.75 * hand_loss(model, x_adv, y, states, times)
    torch.testing.assert_close(out.loss.detach(), expected, rtol=1e-12, atol=1e-12)
    assert out.pointwise.shape == (2 * x.shape[0] * 4,)


@settings(max_examples=15, deadline=None)
@given(eps=st.floats(0.01, 0.6), steps=st.integers(0, 3), seed=st.integers(0, 10**6), bounded=st.booleans())
def test_perturbation_stays_in_the_ball_and_the_input_range(eps, steps, seed, bounded):
    model = paper_model()
    objective = InputPerturbedObjective(eps=eps, steps=steps, input_range=(0.0, 1.0) if bounded else None)
    x, y = batch(dtype=torch.float32, seed=seed % 100)
    x_adv = objective.perturb(model, x, y, kappa=KAPPA, generator=torch.Generator().manual_seed(seed))
    assert not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    if bounded:
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) > 0.0


# ------------------------------------------------------------------ purity
@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_and_no_parameter_mutation(training):
    model = paper_model(encoder=nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 2)))
    model.train(training)
    before = [p.detach().clone() for p in model.parameters()]
    objective = InputPerturbedObjective(steps=2)
    x, y = batch(dtype=torch.float32)
    seen = []
    handle = model.encoder.register_forward_hook(lambda m, i, o: seen.append(m.training))
    out = objective(model, x, y, generator=torch.Generator().manual_seed(0))
    handle.remove()
    # The two search steps ran in eval mode; the final evaluation in the caller's mode.
    assert seen[:2] == [False, False] and seen[-1] is training
    assert all(m.training is training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
    assert out.loss.requires_grad


def test_training_lowers_the_robust_loss():
    x, y = blobs(n=96, seed=0)
    x = (x + 4.0) / 8.0  # into [0, 1], the default input_range
    model = paper_model(state=2)
    objective = robust_objective(model)
    assert isinstance(objective, InputPerturbedObjective)

    def loss():
        return float(objective(model, x, y, kappa=5.0, generator=torch.Generator().manual_seed(0)).loss.detach())

    start = loss()
    trainer = LyapunovTrainer(model, Recipe(objective=objective, kappa=5.0), seed=0, progress=False)
    trainer.fit(loader(x, y), epochs=20)
    end = loss()
    assert end < 0.85 * start, (start, end)  # 3.69 -> 2.88 when written
    assert trainer.evaluate([(x, y)])["error"] < 0.1


def test_works_with_a_potential_from_the_recipe_style_base():
    """A truncated cross entropy in the base (a non-saturating candidate of docs/robust.md)."""
    model = paper_model()
    objective = InputPerturbedObjective(base=MonteCarloObjective(potential=CrossEntropyPotential(gamma=0.05)))
    x, y = batch(dtype=torch.float32)
    out = objective(model, x, y, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.pointwise.shape == (x.shape[0] * 16,)
