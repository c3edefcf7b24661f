"""Integration tests against real torchdyn models (paper Eq. 1-3 through the adapter)."""

import pytest
import torch
import torch.nn as nn

pytest.importorskip("torchdyn")
from torchdyn.core import NeuralODE  # noqa: E402
from torchdyn.nn import DataControl  # noqa: E402

from lyapunov_plugin import (  # noqa: E402
    CrossEntropyPotential,
    HypercubeSampler,
    LyapunovTrainer,
    MonteCarloObjective,
    PathIntegralObjective,
    Recipe,
    SupervisedObjective,
    UniformTimeSampler,
    lyapunov_loss,
    monte_carlo_lyapunov_loss,
)
from lyapunov_plugin.adapters.torchdyn import TorchdynModel  # noqa: E402

from .models import assert_training_improves, blobs, loader, torchdyn_data_controlled, torchdyn_plain  # noqa: E402


def _field_by_hand(field, eta, context, t):
    """The DataControl -> DepthCat -> MLP field evaluated with plain tensor ops."""
    z = torch.cat([eta, context, t[:, None]], dim=1)
    return field[4](torch.tanh(field[2](z)))


def test_data_controlled_pattern_is_recognised_and_split():
    model = torchdyn_data_controlled()
    adapter = TorchdynModel(model)
    assert adapter.conditioned_on_input
    x = torch.randn(5, 2)
    context, eta0 = adapter.encode(x)
    torch.testing.assert_close(eta0, model[0](x))
    torch.testing.assert_close(context, model[0](x))
    assert adapter.readout(eta0) is eta0  # nothing after the NeuralODE: identity readout


def test_plain_pattern_without_data_control_is_not_conditioned():
    model = torchdyn_plain()
    adapter = TorchdynModel(model)
    assert not adapter.conditioned_on_input
    x = torch.randn(3, 2)
    context, eta0 = adapter.encode(x)
    assert context is None
    assert eta0.shape == (3, 4) and torch.equal(eta0[:, :2], torch.zeros(3, 2))  # Augmenter: zeros first
    assert adapter.readout(eta0).shape == (3, 2)
    trainer = LyapunovTrainer(model, progress=False)
    assert trainer.mode == "path_integral"


def test_vector_field_at_sampled_states_sees_each_examples_data_and_time():
    model = torchdyn_data_controlled()
    field = model[1].vf.vf.vf  # NeuralODE -> DEFunc -> DEFuncBase -> the user's nn.Sequential
    adapter = TorchdynModel(model)
    eta = torch.randn(6, 2)
    context = torch.randn(6, 2)
    t = torch.rand(6)
    out = adapter.vector_field(eta, context, t)
    torch.testing.assert_close(out, _field_by_hand(field, eta, context, t))
    # torchdyn's own control attribute is restored afterwards.
    controls = [m for m in model.modules() if isinstance(m, DataControl)]
    assert all(m._control is None for m in controls)


def test_monte_carlo_loss_through_adapter_equals_loss_by_hand():
    torch.manual_seed(0)
    model = torchdyn_data_controlled()
    field = model[1].vf.vf.vf
    adapter = TorchdynModel(model)
    x, y = blobs(8)
    kw = dict(potential=CrossEntropyPotential(), kappa=1.5, num_samples=5)
    sampler, times = HypercubeSampler(half_width=2.0), UniformTimeSampler()
    out = monte_carlo_lyapunov_loss(
        adapter, x, y, state_sampler=sampler, time_sampler=times, generator=torch.Generator().manual_seed(3), **kw
    )
    # By hand: same draws, the model's own layers, no adapter.
    from lyapunov_plugin import SamplingContext

    g = torch.Generator().manual_seed(3)
    h = model[0](x)
    states = sampler.sample(SamplingContext(eta0=h), 5, generator=g)
    ts = times.sample((8, 5), like=h, generator=g)
    eta = states.reshape(40, 2)
    ctx = h.repeat_interleave(5, dim=0)
    velocity = _field_by_hand(field, eta, ctx, ts.reshape(40))
    manual = lyapunov_loss(eta, velocity, y.repeat_interleave(5), potential=kw["potential"], kappa=1.5).mean()
    torch.testing.assert_close(out.loss, manual)
    # ... and its gradient reaches the encoder through the context.
    out.loss.backward()
    assert model[0].weight.grad.abs().sum() > 0


def test_trajectory_uses_torchdyn_solver_and_counts_nfe():
    model = torchdyn_data_controlled(solver="dopri5")
    adapter = TorchdynModel(model)
    x = torch.randn(4, 2)
    ts = torch.linspace(0, 1, 3)
    states = adapter.trajectory(x, ts)
    expected = model[1](model[0](x), ts)
    torch.testing.assert_close(states, expected)
    assert states.shape == (3, 4, 2)
    solution = adapter.solution(x, ts)  # the statistics come back with the states
    torch.testing.assert_close(solution.states, states)
    assert solution.nfe > 6 and not hasattr(adapter, "last_nfe")  # adaptive: several stages


def test_per_sample_times_match_scalar_time_evaluations():
    model = torchdyn_data_controlled()
    adapter = TorchdynModel(model)
    eta, ctx = torch.randn(5, 2), torch.randn(5, 2)
    t = torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0])
    batched = adapter.vector_field(eta, ctx, t)
    one_by_one = torch.cat([adapter.vector_field(eta[i : i + 1], ctx[i : i + 1], t[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, one_by_one)


def test_user_field_with_scalar_only_time_falls_back_to_grouped_evaluation():
    class ScalarTimeField(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, t, x, args=None):
            return self.lin(x) * float(t)  # float() fails on a tensor of several times

    field = ScalarTimeField()
    model = NeuralODE(field, solver="rk4", return_t_eval=False)
    adapter = TorchdynModel(model)
    eta = torch.randn(4, 2)
    t = torch.tensor([0.1, 0.5, 0.1, 0.9])
    with pytest.warns(RuntimeWarning, match="does not accept a tensor of per-sample times"):
        out = adapter.vector_field(eta, None, t)
    expected = field.lin(eta) * t[:, None]
    torch.testing.assert_close(out, expected)


def test_wrong_output_shape_is_reported_precisely():
    field = nn.Sequential(DataControl(), nn.Linear(4, 3))  # state is 2-D, field returns 3
    model = nn.Sequential(nn.Linear(2, 2), NeuralODE(field, solver="rk4", return_t_eval=False))
    adapter = TorchdynModel(model)
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\) for states of shape \(2, 2\)"):
        adapter.check(torch.randn(5, 2))


def test_several_neural_odes_are_rejected():
    f = nn.Linear(2, 2)
    model = nn.Sequential(NeuralODE(f, return_t_eval=False), NeuralODE(nn.Linear(2, 2), return_t_eval=False))
    with pytest.raises(ValueError, match=r"2 NeuralODE layers \(at positions \[0, 1\]\)"):
        LyapunovTrainer(model, progress=False)


def test_training_lowers_lyapunov_loss_and_test_error():
    torch.manual_seed(0)
    x, y = blobs(128, seed=1)
    xt, yt = blobs(128, seed=2)
    model = torchdyn_data_controlled()
    trainer = LyapunovTrainer(
        model, Recipe(objective=MonteCarloObjective(num_samples=16), kappa=1.0), progress=False, seed=0
    )
    before = trainer.evaluate(loader(xt, yt))["error"]
    first = trainer.loss(x, y).loss.item()
    trainer.fit(loader(x, y), epochs=8)
    after = trainer.evaluate(loader(xt, yt))["error"]
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"] < first * 1.5
    assert after < 0.1 and after <= before


def test_path_integral_training_of_plain_model_lowers_error():
    torch.manual_seed(0)
    x, y = blobs(128, seed=1)
    xt, yt = blobs(128, seed=2)
    trainer = LyapunovTrainer(torchdyn_plain(), objective=PathIntegralObjective(steps=4), progress=False, seed=0)
    assert_training_improves(trainer, (x, y), (xt, yt))


def test_standard_mode_with_adjoint_sensitivity_trains():
    torch.manual_seed(0)
    x, y = blobs(96, seed=1)
    model = torchdyn_data_controlled(solver="rk4", sensitivity="adjoint")
    trainer = LyapunovTrainer(model, objective=SupervisedObjective(), progress=False)
    trainer.fit(loader(x, y), epochs=4)
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]


def test_a_time_vector_of_the_wrong_length_is_blamed_on_t():
    adapter = TorchdynModel(torchdyn_data_controlled())
    eta, ctx = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\).*got shape \(3,\)"):
        adapter.vector_field(eta, ctx, torch.tensor([0.1, 0.5, 0.9]))
    with pytest.raises(ValueError, match=r"context must have one row per state of eta \(4\), got shape \(2, 2\)"):
        adapter.vector_field(eta, ctx[:2], torch.rand(4))


def test_float64_inputs_reach_a_float32_model_cast_to_its_dtype():
    torch.manual_seed(0)
    adapter = TorchdynModel(torchdyn_plain())
    x = torch.randn(3, 2)
    out = adapter(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, adapter(x))
