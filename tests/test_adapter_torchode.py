"""Integration tests against real torchode solves (paper Eq. 1-3 through the adapter)."""

import pytest
import torch
import torch.nn as nn

to = pytest.importorskip("torchode")

from lyapunov_plugin import (  # noqa: E402
    CrossEntropyPotential,
    HypercubeSampler,
    LyapunovTrainer,
    SamplingContext,
    SolverError,
    UniformTimeSampler,
    as_lyapunov_model,
    lyapunov_loss,
    monte_carlo_lyapunov_loss,
)
from lyapunov_plugin.adapters.torchode import TorchodeModel  # noqa: E402
from lyapunov_plugin.model import is_lyapunov_model  # noqa: E402

from .models import TorchodeConditionedField, TorchodePlainField, assert_training_improves, blobs  # noqa: E402


def test_protocol_and_conditioning_from_the_term():
    plain = TorchodeModel(TorchodePlainField())
    conditioned = TorchodeModel(TorchodeConditionedField(), encoder=nn.Linear(2, 2), state_shape=(2,))
    assert is_lyapunov_model(plain) and not plain.conditioned_on_input
    assert conditioned.conditioned_on_input and not conditioned.initial_state_trainable
    assert TorchodeModel(to.ODETerm(TorchodeConditionedField(), with_args=True), state_shape=(2,)).conditioned_on_input
    assert plain.fixed_steps is None and TorchodeModel(TorchodePlainField(), step_size=0.25).fixed_steps == 4


def test_trajectory_equals_a_direct_torchode_solve_with_the_users_solver():
    torch.manual_seed(0)
    field, enc = TorchodeConditionedField(), nn.Linear(2, 2)
    term = to.ODETerm(field, with_args=True)
    solver = to.AutoDiffAdjoint(to.Tsit5(term=term), to.PIDController(1e-6, 1e-5, 0.2, 0.5, 0.0, term=term))
    model = TorchodeModel(solver, encoder=enc, state_shape=(2,))
    x = torch.randn(5, 2)
    ts = torch.linspace(0, 1, 4)
    solution = model.solution(x, ts)
    ctx = enc(x)
    problem = to.InitialValueProblem(y0=torch.zeros(5, 2), t_eval=ts.expand(5, -1))
    direct = solver.solve(problem, args=ctx)
    torch.testing.assert_close(solution.states, direct.ys.transpose(0, 1), rtol=0, atol=0)
    assert solution.states.shape == (4, 5, 2)
    assert torch.equal(solution.nfe_per_example, direct.stats["n_f_evals"]) and solution.nfe > 10
    assert torch.equal(solution.steps_per_example, direct.stats["n_steps"])


def test_per_example_statistics_differ_where_torchode_steps_examples_on_their_own():
    decay = torch.tensor([[1.0], [50.0]])
    model = TorchodeModel(lambda t, y: -decay * y, atol=1e-6, rtol=1e-6)
    solution = model.solution(torch.ones(2, 1), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(solution.states[-1], torch.exp(-decay), rtol=1e-4, atol=1e-6)
    steps = solution.steps_per_example.tolist()
    assert steps[1] > 3 * steps[0]  # the stiff example takes many more steps


def test_fixed_step_euler_states_and_gradients_equal_a_hand_written_loop():
    torch.manual_seed(0)
    field = TorchodePlainField().double()
    enc = nn.Linear(2, 2).double()
    model = TorchodeModel(field, encoder=enc, method="euler", step_size=0.25)
    x = torch.randn(3, 2, dtype=torch.float64)
    final = model.trajectory(x, torch.tensor([0.0, 1.0], dtype=torch.float64))[-1]
    (grad_model,) = torch.autograd.grad(final.pow(2).sum(), field.net[0].weight)
    y = enc(x)
    for k in range(4):  # Euler by hand, independent of torchode
        y = y + 0.25 * field(torch.full((3,), 0.25 * k, dtype=torch.float64), y)
    (grad_hand,) = torch.autograd.grad(y.pow(2).sum(), field.net[0].weight)
    torch.testing.assert_close(final, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_model, grad_hand, rtol=1e-10, atol=1e-12)


def test_vector_field_takes_per_sample_times_in_one_call():
    field = TorchodeConditionedField()
    model = TorchodeModel(field, state_shape=(2,))
    eta, ctx, t = torch.randn(5, 2), torch.randn(5, 2), torch.rand(5)
    by_hand = field.net(torch.cat([eta, ctx, t[:, None]], dim=1))
    torch.testing.assert_close(model.vector_field(eta, ctx, t), by_hand)
    one_by_one = torch.cat([model.vector_field(eta[i : i + 1], ctx[i : i + 1], t[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(model.vector_field(eta, ctx, t), one_by_one)


def test_monte_carlo_loss_through_adapter_equals_loss_by_hand():
    field, enc = TorchodeConditionedField(), nn.Linear(2, 2)
    model = TorchodeModel(field, encoder=enc, state_shape=(2,))
    x, y = blobs(6)
    sampler, times = HypercubeSampler(half_width=3.0), UniformTimeSampler()
    kw = dict(potential=CrossEntropyPotential(), kappa=2.0)
    out = monte_carlo_lyapunov_loss(
        model,
        x,
        y,
        state_sampler=sampler,
        time_sampler=times,
        num_samples=4,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )
    g = torch.Generator().manual_seed(5)
    eta0 = torch.zeros(6, 2)
    eta = sampler.sample(SamplingContext(eta0=eta0), 4, generator=g).reshape(24, 2)
    t = times.sample((6, 4), like=eta0, generator=g).reshape(24)
    velocity = field.net(torch.cat([eta, enc(x).repeat_interleave(4, dim=0), t[:, None]], dim=1))
    manual = lyapunov_loss(eta, velocity, y.repeat_interleave(4), **kw)
    torch.testing.assert_close(out.loss, manual.mean())


def test_trains_with_the_default_recipe():
    torch.manual_seed(0)
    x, y = blobs(128, seed=1)
    xt, yt = blobs(128, seed=2)
    model = TorchodeModel(TorchodeConditionedField(), encoder=nn.Linear(2, 2), state_shape=(2,), method="tsit5")
    assert_training_improves(LyapunovTrainer(model, progress=False, seed=0), (x, y), (xt, yt))


def test_a_torchode_solver_or_term_is_dispatched_automatically():
    term = to.ODETerm(TorchodePlainField())
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1e-6, rtol=1e-3, term=term))
    for model in (term, solver):
        adapter = as_lyapunov_model(model)
        assert isinstance(adapter, TorchodeModel) and adapter.term is term
    assert LyapunovTrainer(solver, progress=False).mode == "path_integral"  # the field does not see x


def test_clear_errors():
    field = TorchodePlainField()
    with pytest.raises(ValueError, match="method must be one of .*'dopri5'.*got 'rk45'"):
        TorchodeModel(field, method="rk45")
    with pytest.raises(TypeError, match=r"state_shape must be a non-empty sequence.*did you mean \(2,\)"):
        TorchodeModel(TorchodeConditionedField(), state_shape=2)
    with pytest.raises(ValueError, match="state_shape .* needs a conditioned field"):
        TorchodeModel(field, state_shape=(2,))
    term = to.ODETerm(field)
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=1e-6, rtol=1e-3, term=term))
    with pytest.raises(ValueError, match=r"\['atol'\] belong to the torchode solver"):
        TorchodeModel(solver, atol=1e-3)
    with pytest.raises(TypeError, match="func must be a torchode AutoDiffAdjoint, an ODETerm or a callable"):
        TorchodeModel(3)
    with pytest.raises(ValueError, match=r"states of shape \(batch, features\); eta\(0\) has shape \(2, 1, 2\)"):
        TorchodeModel(field).trajectory(torch.randn(2, 1, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        TorchodeModel(field).vector_field(torch.randn(3, 2), None, torch.rand(2))
    with pytest.raises(SolverError, match="torchode could not solve 2 of 2 examples"):
        TorchodeModel(lambda t, y: y * float("inf")).trajectory(torch.ones(2, 2), torch.tensor([0.0, 1.0]))


def test_float64_inputs_reach_a_float32_model_cast_to_its_dtype():
    model = TorchodeModel(TorchodePlainField(), encoder=nn.Linear(2, 2), readout=nn.Linear(2, 2))
    x = torch.randn(4, 2)
    out = model(x.double())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(x))
