"""Integration tests against real torchdiffeq integration (paper Eq. 1-3 through the adapter)."""

import pytest
import torch
import torch.nn as nn

torchdiffeq = pytest.importorskip("torchdiffeq")

from lyapunov_plugin import (  # noqa: E402
    CrossEntropyPotential,
    HypercubeSampler,
    LyapunovTrainer,
    SamplingContext,
    UniformTimeSampler,
    lyapunov_loss,
    monte_carlo_lyapunov_loss,
)
from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel  # noqa: E402

from .models import ConditionedField, PlainField, assert_training_improves, blobs  # noqa: E402


def test_signature_decides_conditioning():
    assert TorchdiffeqModel(ConditionedField(), state_shape=(2,)).conditioned_on_input
    assert not TorchdiffeqModel(PlainField()).conditioned_on_input
    with pytest.raises(ValueError, match="state_shape .* needs a conditioned func"):
        TorchdiffeqModel(PlainField(), state_shape=(2,))
    with pytest.raises(ValueError, match="method must be one of .*'dopri5'.*got 'dopri6'"):
        TorchdiffeqModel(PlainField(), method="dopri6")


def test_trajectory_matches_direct_odeint_with_the_users_settings():
    func = ConditionedField()
    enc = nn.Linear(2, 2)
    model = TorchdiffeqModel(func, encoder=enc, state_shape=(2,), method="dopri5", rtol=1e-6, atol=1e-6)
    x = torch.randn(4, 2)
    ts = torch.linspace(0, 1, 4)
    states = model.trajectory(x, ts)
    ctx = enc(x)
    direct = torchdiffeq.odeint(
        lambda t, y: func(t, y, ctx), torch.zeros(4, 2), ts, rtol=1e-6, atol=1e-6, method="dopri5"
    )
    torch.testing.assert_close(states, direct, rtol=1e-5, atol=1e-6)
    assert model.solution(x, ts).nfe > 10


def test_adjoint_gradients_match_backprop_including_the_encoder():
    torch.manual_seed(0)
    func, enc = ConditionedField().double(), nn.Linear(2, 2).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        model = TorchdiffeqModel(
            func, encoder=enc, state_shape=(2,), method="rk4", options={"step_size": 0.05}, adjoint=adjoint
        )
        model.zero_grad()
        model.trajectory(x, ts)[-1].pow(2).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(grads[0], grads[1], strict=False):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    assert grads[1][-1].abs().sum() > 0  # the encoder (registered last) gets an adjoint gradient


def test_monte_carlo_loss_through_adapter_equals_loss_by_hand():
    func, enc = ConditionedField(), nn.Linear(2, 2)
    model = TorchdiffeqModel(func, encoder=enc, state_shape=(2,))
    x, y = blobs(6)
    sampler, times = HypercubeSampler(half_width=3.0), UniformTimeSampler()
    out = monte_carlo_lyapunov_loss(
        model,
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=2.0,
        state_sampler=sampler,
        time_sampler=times,
        num_samples=4,
        generator=torch.Generator().manual_seed(5),
    )
    g = torch.Generator().manual_seed(5)
    eta0 = torch.zeros(6, 2)
    eta = sampler.sample(SamplingContext(eta0=eta0), 4, generator=g).reshape(24, 2)
    t = times.sample((6, 4), like=eta0, generator=g).reshape(24)
    ctx = enc(x).repeat_interleave(4, dim=0)
    velocity = func.net(torch.cat([eta, ctx, t[:, None]], dim=1))
    manual = lyapunov_loss(eta, velocity, y.repeat_interleave(4), potential=CrossEntropyPotential(), kappa=2.0)
    torch.testing.assert_close(out.loss, manual.mean())


def test_bare_vector_field_is_dispatched_automatically():
    trainer = LyapunovTrainer(PlainField(), progress=False)
    assert isinstance(trainer.model, TorchdiffeqModel)
    assert trainer.mode == "path_integral"


def test_training_lowers_lyapunov_loss_and_test_error():
    torch.manual_seed(0)
    x, y = blobs(128, seed=1)
    xt, yt = blobs(128, seed=2)
    model = TorchdiffeqModel(
        ConditionedField(), encoder=nn.Linear(2, 2), state_shape=(2,), method="rk4", options={"step_size": 0.1}
    )
    trainer = LyapunovTrainer(model, kappa=1.0, lr=1e-2, progress=False, seed=0, num_samples=16)
    assert_training_improves(trainer, (x, y), (xt, yt))


def test_adjoint_forward_solve_takes_the_same_steps_as_plain_odeint():
    torch.manual_seed(0)
    func, enc = ConditionedField(), nn.Linear(2, 2)
    x = torch.randn(8, 2)
    ts = torch.tensor([0.0, 1.0])
    plain = TorchdiffeqModel(func, encoder=enc, state_shape=(2,), method="dopri5")
    adjoint = TorchdiffeqModel(func, encoder=enc, state_shape=(2,), method="dopri5", adjoint=True)
    a, b = plain.trajectory(x, ts), adjoint.trajectory(x, ts)
    assert plain.solution(x, ts).nfe == adjoint.solution(x, ts).nfe
    torch.testing.assert_close(a, b)
