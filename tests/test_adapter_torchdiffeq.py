"""Integration tests against real torchdiffeq integration (paper Eq. 1-3 through the adapter)."""

import pytest
import torch
import torch.nn as nn

torchdiffeq = pytest.importorskip("torchdiffeq")

from lyapunov_plugin import (  # noqa: E402
    CrossEntropyPotential,
    HypercubeSampler,
    LyapunovTrainer,
    MonteCarloObjective,
    Recipe,
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
    trainer = LyapunovTrainer(
        model, Recipe(objective=MonteCarloObjective(num_samples=16), kappa=1.0), progress=False, seed=0
    )
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


# -- boundary checks ------------------------------------------------------------------------------


def test_state_shape_must_be_a_sequence():
    with pytest.raises(TypeError, match=r"state_shape must be a non-empty sequence of positive ints \(did you mean"):
        TorchdiffeqModel(ConditionedField(), state_shape=2)


def test_float64_inputs_reach_a_float32_model_cast_to_its_dtype():
    torch.manual_seed(0)
    model = TorchdiffeqModel(ConditionedField(), encoder=nn.Linear(2, 2), state_shape=(2,), method="rk4")
    x = torch.randn(3, 2)
    out = model(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x))


def test_time_or_context_of_another_batch_is_blamed_on_t_or_context():
    model = TorchdiffeqModel(ConditionedField(), state_shape=(2,))
    eta = torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\).*got shape \(3,\)"):
        model.vector_field(eta, torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match=r"context must have one row per state of eta \(4\), got shape \(5, 2\)"):
        model.vector_field(eta, torch.randn(5, 2), torch.rand(4))


# -- torchdiffeq's ODE-block model shape (odenet_mnist) -------------------------------------------


def test_odenet_block_shape_is_read_with_its_own_solver_settings():
    from lyapunov_plugin import as_lyapunov_model

    from .models import odenet, tiny_images

    torch.manual_seed(0)
    net = odenet(tol=1e-4)
    adapter = as_lyapunov_model(net)
    assert isinstance(adapter, TorchdiffeqModel)
    assert (adapter.method, adapter.rtol, adapter.atol, adapter.adjoint, adapter.t_end) == (
        "dopri5",
        1e-4,
        1e-4,
        False,
        1.0,
    )
    assert adapter.func is net[1].odefunc and not adapter.conditioned_on_input
    assert {id(p) for p in adapter.parameters()} == {id(p) for p in net.parameters()}  # training it trains net
    x, _ = tiny_images(4)
    with torch.no_grad():
        torch.testing.assert_close(adapter(x), net(x))  # the user's own forward, through odeint
        context, eta0 = adapter.encode(x)
        torch.testing.assert_close(eta0, net[0](x))
    # The trace restored torchdiffeq's solvers, in the package and in the block's module.
    from . import models

    assert torchdiffeq.odeint is models.odeint and models.odeint.__module__.startswith("torchdiffeq")


def test_adjoint_block_gives_the_adjoint_gradients_of_the_users_model():
    from lyapunov_plugin import as_lyapunov_model

    from .models import odenet, tiny_images

    torch.manual_seed(0)
    net = odenet(tol=1e-5, adjoint=True).double()
    adapter = as_lyapunov_model(net)
    assert adapter.adjoint and adapter.rtol == 1e-5
    x, _ = tiny_images(3)
    x = x.double()
    grads = []
    for run in (net, adapter):
        net.zero_grad()
        run(x).pow(2).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert grads[1][6].abs().sum() > 0  # net[1].odefunc.norm1.weight gets an adjoint gradient


def test_odenet_block_trains_with_the_default_recipe():
    from .models import odenet, tiny_images

    torch.manual_seed(0)
    x, y = tiny_images(48, seed=1)
    net = odenet()
    before = [p.detach().clone() for p in net.parameters()]
    trainer = LyapunovTrainer(net, progress=False, seed=0)
    trainer.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16), epochs=3)
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


class _PostProcessingBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.odefunc = PlainField()

    def forward(self, x):
        return 2 * torchdiffeq.odeint(self.odefunc, x, torch.tensor([0.0, 1.0]), rtol=1e-4, atol=1e-5)[1]


class _ScalingBlock(_PostProcessingBlock):
    def forward(self, x):
        return torchdiffeq.odeint(self.odefunc, 0.5 * x, torch.tensor([0.0, 1.0]))[-1]


class _LastOfThreeBlock(_PostProcessingBlock):
    def forward(self, x):
        return torchdiffeq.odeint(self.odefunc, x, torch.tensor([0.0, 0.5, 2.0]), method="rk4")[-1]


def test_a_block_that_cannot_be_read_names_the_one_line_conversion():
    model = nn.Sequential(nn.Linear(2, 2), _PostProcessingBlock(), nn.Linear(2, 2))
    with pytest.raises(TypeError, match="post-processes the solution") as err:
        LyapunovTrainer(model, progress=False)
    assert (
        "TorchdiffeqModel(block.odefunc, encoder=model[:1], readout=model[2:], method='dopri5', rtol=0.0001, "
        "atol=1e-05)" in str(err.value)
    )
    with pytest.raises(TypeError, match="does not integrate its input x unchanged"):
        LyapunovTrainer(nn.Sequential(_ScalingBlock(), nn.Linear(2, 2)), progress=False)


def test_a_bare_block_reading_a_later_time_sets_the_horizon():
    from lyapunov_plugin import as_lyapunov_model

    adapter = as_lyapunov_model(_LastOfThreeBlock())
    assert isinstance(adapter, TorchdiffeqModel) and adapter.method == "rk4" and adapter.t_end == 2.0
    assert (adapter.rtol, adapter.atol) == (1e-7, 1e-9)  # torchdiffeq's own defaults, not TorchdiffeqModel's
