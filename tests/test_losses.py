"""Lyapunov losses: Eq. (12) point-wise, Algorithm 1 Monte Carlo, Eq. (16)-(17) and the
continuous path loss, checked against independent computations in float64."""

import math

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    MarginPotential,
    MSEPotential,
    ODEModel,
    UniformTimeSampler,
    discrete_path_lyapunov_loss,
    lyapunov_loss,
    monte_carlo_lyapunov_loss,
    path_lyapunov_loss,
)
from lyapunov_plugin.blocks import MLPDynamics

from .problems import ce_reference, classification_batch, reference_v_and_vdot

KAPPAS = st.floats(0.01, 20.0)


@given(classification_batch(), KAPPAS, st.booleans())
def test_pointwise_loss_is_non_negative(batch, kappa, detach_v):
    eta, velocity, target = batch
    for pot in (CrossEntropyPotential(), MarginPotential()):
        loss = lyapunov_loss(eta, velocity, target, potential=pot, kappa=kappa, detach_v=detach_v)
        assert loss.shape == (eta.shape[0],)
        assert loss.dtype == eta.dtype
        assert bool((loss >= 0).all())


@given(classification_batch(dtype=torch.float64), KAPPAS)
def test_pointwise_loss_is_zero_exactly_where_condition_holds(batch, kappa):
    eta, velocity, target = batch
    loss = lyapunov_loss(eta, velocity, target, potential=CrossEntropyPotential(), kappa=kappa)
    v, v_dot = reference_v_and_vdot(lambda e: ce_reference(e, target), eta, velocity)
    margin = v_dot + kappa * v
    clear = margin.abs() > 1e-9  # away from the boundary of Eq. (10)
    holds = margin <= 0
    assert bool((loss[clear & holds] == 0).all())
    assert bool((loss[clear & ~holds] > 0).all())
    torch.testing.assert_close(loss, torch.clamp(margin, min=0), rtol=1e-10, atol=1e-12)


@given(classification_batch(dtype=torch.float64), KAPPAS)
def test_gradient_descent_dynamics_with_large_gain_have_zero_loss(batch, kappa):
    eta, _, target = batch
    # f = -c grad V: dV/dt = -c |grad V|^2, so c >= kappa V / |grad V|^2 satisfies Eq. (10).
    eta_req = eta.clone().requires_grad_(True)
    v = ce_reference(eta_req, target)
    (grad,) = torch.autograd.grad(v.sum(), eta_req)
    sq = grad.pow(2).sum(-1)
    needed = (kappa * v.detach() / sq.clamp_min(1e-300)).max()
    c = 2.0 * float(needed) + 1.0
    loss = lyapunov_loss(eta, -c * grad, target, potential=CrossEntropyPotential(), kappa=kappa)
    assert bool((loss == 0).all())
    # ... and with too small a gain the condition fails wherever V > 0.
    small = lyapunov_loss(eta, -1e-6 * grad, target, potential=CrossEntropyPotential(), kappa=kappa)
    assert bool((small[v.detach() > 1e-3] > 0).all())


@given(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(0, 10_000), KAPPAS)
def test_known_answer_linear_system_with_quadratic_potential(batch, dim, out_dim, seed, kappa):
    """d eta/dt = A eta, V = mean((L eta)^2) = eta^T P eta with P = L^T L / m:
    dV/dt = 2 eta^T P A eta in closed form."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    L = nn.Linear(dim, out_dim, bias=False).double()
    with torch.no_grad():
        L.weight.copy_(torch.randn(out_dim, dim, generator=g, dtype=torch.float64))
    eta = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    velocity = eta @ A.T
    P = L.weight.T @ L.weight / out_dim
    v_exact = torch.einsum("bi,ij,bj->b", eta, P, eta)
    v_dot_exact = 2 * torch.einsum("bi,ij,jk,bk->b", eta, P, A, eta)
    zeros = torch.zeros(batch, out_dim, dtype=torch.float64)
    v, v_dot = MSEPotential().evaluate(eta, velocity, zeros, readout=L)
    torch.testing.assert_close(v, v_exact, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v_dot, v_dot_exact, rtol=1e-10, atol=1e-10)
    loss = lyapunov_loss(eta, velocity, zeros, potential=MSEPotential(), kappa=kappa, readout=L)
    torch.testing.assert_close(loss, torch.clamp(v_dot_exact + kappa * v_exact, min=0), rtol=1e-10, atol=1e-10)


def test_detach_v_changes_gradient_not_value():
    torch.manual_seed(0)
    readout = nn.Linear(3, 3).double()
    eta = torch.randn(8, 3, dtype=torch.float64)
    velocity = torch.randn(8, 3, dtype=torch.float64)
    target = torch.randint(0, 3, (8,))
    pot, kappa = CrossEntropyPotential(), 2.0
    results = []
    for detach in (False, True):
        readout.zero_grad()
        loss = lyapunov_loss(eta, velocity, target, potential=pot, kappa=kappa, readout=readout, detach_v=detach)
        loss.sum().backward()
        results.append((loss.detach().clone(), readout.weight.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    # The two gradients differ by exactly kappa * d/dtheta sum_{active} V.
    active = results[0][0] > 0
    readout.zero_grad()
    v = pot.value(readout(eta), target)
    (kappa * v[active].sum()).backward()
    torch.testing.assert_close(results[0][1] - results[1][1], readout.weight.grad)
    assert readout.weight.grad.abs().max() > 0


def _linear_model(dtype=torch.float64):
    """2-D state, identity readout, f = A eta + B x + c t (time-dependent, x-conditioned)."""

    class Dyn(nn.Module):
        def __init__(self):
            super().__init__()
            self.A = nn.Parameter(torch.tensor([[-1.0, 0.5], [0.2, -0.8]], dtype=dtype))
            self.B = nn.Parameter(torch.tensor([[1.5, -0.5], [-1.0, 2.0]], dtype=dtype))
            self.c = nn.Parameter(torch.tensor([0.3, -0.2], dtype=dtype))

        def forward(self, eta, x, t):
            return eta @ self.A.T + x @ self.B.T + t[:, None] * self.c

    return ODEModel(Dyn(), state_shape=(2,))


def test_monte_carlo_estimate_is_unbiased_against_brute_force_average():
    model = _linear_model()
    x = torch.tensor([[0.5, -1.0], [1.0, 1.0], [-0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    s, kappa = 3.0, 2.0
    pot = CrossEntropyPotential()
    # Brute force: midpoint rule on a 120 x 120 grid of the square times 24 time nodes.
    n, nt = 120, 24
    grid = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 * s - s
    tt = (torch.arange(nt, dtype=torch.float64) + 0.5) / nt
    e1, e2, t3 = torch.meshgrid(grid, grid, tt, indexing="ij")
    pts, ts = torch.stack([e1.flatten(), e2.flatten()], -1), t3.flatten()
    brute = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            xi = x[i].expand(pts.shape[0], 2)
            vel = model.dynamics(pts, xi, ts)
            yi = y[i].expand(pts.shape[0])
            brute.append(lyapunov_loss(pts, vel, yi, potential=pot, kappa=kappa).mean())
    brute = torch.stack(brute).mean()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        out = monte_carlo_lyapunov_loss(
            model,
            x,
            y,
            potential=pot,
            kappa=kappa,
            state_sampler=HypercubeSampler(half_width=s),
            time_sampler=UniformTimeSampler(),
            num_samples=40_000,
            generator=gen,
        )
    stderr = out.pointwise.std() / math.sqrt(out.pointwise.numel())
    assert abs(float(out.loss - brute)) < 4 * float(stderr) + 1e-3 * float(brute)
    assert 0 < float(out.violation_fraction) < 1


def test_monte_carlo_runs_encoder_once_and_broadcasts():
    calls = []

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            calls.append(x.shape[0])
            return self.lin(x)

    class Dyn(nn.Module):
        def forward(self, eta, ctx, t):
            return ctx - eta

    model = ODEModel(Dyn(), encoder=Enc(), state_shape=(3,))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    out = monte_carlo_lyapunov_loss(
        model,
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=1.0,
        state_sampler=HypercubeSampler(half_width=2.0),
        time_sampler=UniformTimeSampler(),
        num_samples=7,
    )
    assert calls == [5]
    assert out.pointwise.shape == (35,)
    out.loss.backward()
    assert model.encoder.lin.weight.grad.abs().sum() > 0


def test_monte_carlo_pairs_each_sample_with_its_own_example():
    """Sample j of example b must be evaluated with example b's context and label."""

    class Dyn(nn.Module):
        def forward(self, eta, ctx, t):
            return ctx.expand_as(eta) * 0 + ctx  # velocity = context

    model = ODEModel(Dyn(), state_shape=(2,))
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    # Each example's context points towards its own label, so V decreases everywhere.
    out = monte_carlo_lyapunov_loss(
        model,
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=1e-3,
        state_sampler=HypercubeSampler(half_width=0.1),
        time_sampler=UniformTimeSampler(),
        num_samples=50,
        generator=torch.Generator().manual_seed(0),
    )
    assert float(out.violation_fraction) == 0.0
    assert float(out.mean_v_dot) < 0


@given(st.integers(2, 6), st.integers(1, 4), st.floats(0.05, 0.95), st.integers(0, 10_000), st.booleans())
def test_discrete_path_loss_matches_definition(steps, batch, kappa, seed, detach_v):
    g = torch.Generator().manual_seed(seed)
    traj = torch.randn(steps, batch, 3, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (batch,), generator=g)
    out = discrete_path_lyapunov_loss(traj, y, potential=CrossEntropyPotential(), kappa=kappa, detach_v=detach_v)
    total = 0.0
    for b in range(batch):
        for j in range(1, steps):
            v_j = float(ce_reference(traj[j, b : b + 1], y[b : b + 1]))
            v_prev = float(ce_reference(traj[j - 1, b : b + 1], y[b : b + 1]))
            total += max(0.0, v_j + (kappa - 1.0) * v_prev)
    assert math.isclose(float(out.loss), total / batch, rel_tol=1e-10, abs_tol=1e-12)
    assert out.pointwise.shape == (steps - 1, batch)


def test_discrete_path_loss_zero_for_geometric_decay():
    # V_j = (1 - kappa)^j V_0 exactly on the boundary; slightly faster decay gives 0 loss.
    kappa = 0.5
    y = torch.tensor([0])
    v0 = 2.0
    vs = [v0 * (1 - kappa - 0.05) ** j for j in range(5)]
    # Logits [a, 0] with CE = log(1 + exp(-a)) = v  =>  a = -log(expm1(v)).
    traj = torch.tensor([[[-math.log(math.expm1(v)), 0.0]] for v in vs], dtype=torch.float64)
    out = discrete_path_lyapunov_loss(traj, y, potential=CrossEntropyPotential(), kappa=kappa)
    assert float(out.loss) == 0.0
    grown = discrete_path_lyapunov_loss(traj.flip(0), y, potential=CrossEntropyPotential(), kappa=kappa)
    assert float(grown.loss) > 0


def test_path_loss_equals_pointwise_loss_at_trajectory_states():
    model = _linear_model()
    x = torch.tensor([[0.5, -1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1])
    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    out = path_lyapunov_loss(model, x, y, ts, potential=CrossEntropyPotential(), kappa=1.5)
    traj = model.trajectory(x, ts)
    manual = []
    for j in range(ts.numel()):
        vel = model.dynamics(traj[j], x, ts[j].expand(2))
        manual.append(lyapunov_loss(traj[j], vel, y, potential=CrossEntropyPotential(), kappa=1.5))
    torch.testing.assert_close(out.loss, torch.stack(manual).mean())


class TestValidation:
    def setup_method(self):
        self.model = _linear_model()
        self.x = torch.randn(3, 2, dtype=torch.float64)
        self.y = torch.tensor([0, 1, 0])
        self.kw = dict(
            potential=CrossEntropyPotential(),
            kappa=1.0,
            state_sampler=HypercubeSampler(half_width=1.0),
            time_sampler=UniformTimeSampler(),
            num_samples=4,
        )

    @pytest.mark.parametrize("kappa", [0.0, -1.0])
    def test_kappa_must_be_positive(self, kappa):
        with pytest.raises(ValueError, match=f"kappa must be > 0, got {float(kappa)}"):
            lyapunov_loss(
                torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), potential=CrossEntropyPotential(), kappa=kappa
            )

    def test_discrete_kappa_in_unit_interval(self):
        with pytest.raises(ValueError, match=r"kappa must lie in the open interval \(0, 1\), got 1.5"):
            discrete_path_lyapunov_loss(
                torch.zeros(3, 1, 2), torch.tensor([0]), potential=CrossEntropyPotential(), kappa=1.5
            )

    def test_potential_type(self):
        with pytest.raises(TypeError, match="potential must be a lyapunov_plugin.Potential, got function"):
            lyapunov_loss(
                torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), potential=lambda o, t: o.sum(), kappa=1.0
            )

    def test_mismatched_batch(self):
        with pytest.raises(
            ValueError, match=r"target must have batch size 3 \(the batch size of x\), got shape \(2,\)"
        ):
            monte_carlo_lyapunov_loss(self.model, self.x, self.y[:2], **self.kw)

    def test_nan_input(self):
        x = self.x.clone()
        x[0, 0] = float("nan")
        with pytest.raises(ValueError, match="x must be finite, got 1 NaN/Inf entry"):
            monte_carlo_lyapunov_loss(self.model, x, self.y, **self.kw)

    def test_num_samples(self):
        kw = dict(self.kw, num_samples=0)
        with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
            monte_carlo_lyapunov_loss(self.model, self.x, self.y, **kw)

    def test_labels_out_of_range(self):
        with pytest.raises(ValueError, match=r"target must lie in \[0, 1\] for 2 classes"):
            monte_carlo_lyapunov_loss(self.model, self.x, torch.tensor([0, 1, 2]), **self.kw)

    def test_empty_batch(self):
        with pytest.raises(ValueError, match="x must have a non-empty batch dimension"):
            monte_carlo_lyapunov_loss(self.model, self.x[:0], self.y[:0], **self.kw)

    def test_trajectory_too_short(self):
        with pytest.raises(ValueError, match="trajectory needs at least 2 time points"):
            discrete_path_lyapunov_loss(
                torch.zeros(1, 2, 3), torch.tensor([0, 1]), potential=CrossEntropyPotential(), kappa=0.5
            )


def test_float32_and_float64_preserved_through_monte_carlo():
    for dtype in (torch.float32, torch.float64):
        model = _linear_model(dtype)
        x = torch.randn(3, 2, dtype=dtype)
        out = monte_carlo_lyapunov_loss(
            model,
            x,
            torch.tensor([0, 1, 1]),
            potential=CrossEntropyPotential(),
            kappa=1.0,
            state_sampler=HypercubeSampler(half_width=1.0),
            time_sampler=UniformTimeSampler(),
            num_samples=3,
        )
        assert out.loss.dtype == dtype and out.v.dtype == dtype


def test_fixed_step_solver_orders_on_linear_ode():
    A = torch.tensor([[-0.5, 1.0], [-1.0, -0.5]], dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    exact = y0 @ torch.linalg.matrix_exp(A).T
    errors = {}
    for method in ("euler", "midpoint", "rk4"):
        errs = []
        for steps in (10, 20):
            sol = FixedStepSolver(method=method, steps=steps)(lambda t, y: y @ A.T, y0, ts)
            errs.append(float((sol[-1] - exact).abs().max()))
        errors[method] = math.log2(errs[0] / errs[1])
    assert 0.8 < errors["euler"] < 1.3
    assert 1.8 < errors["midpoint"] < 2.3
    assert 3.7 < errors["rk4"] < 4.3


def test_fixed_step_solver_step_count_on_float32_grids():
    calls = []

    def field(t, y):
        calls.append(float(t))
        return -y

    y0 = torch.ones(1, 1)
    FixedStepSolver(method="euler", steps=10)(field, y0, torch.linspace(0, 1, 11))  # float32 grid
    assert len(calls) == 10
    calls.clear()
    FixedStepSolver(method="euler", steps=10)(field, y0, torch.tensor([0.0, 0.25, 1.0]))
    assert len(calls) == 3 + 8  # 2.5 -> 3 steps, then 7.5 -> 8 steps


def _python_rk4(field, y0: list[float], grid: list[float], steps: int) -> tuple[list[list[float]], list[float]]:
    """Classical RK4 in plain Python floats, each output interval getting its share of
    ``steps``: the independent reference of ``FixedStepSolver``. Returns the states at the
    grid and every stage time in call order."""
    span, y, states, calls = grid[-1] - grid[0], list(y0), [list(y0)], []

    def f(t: float, v: list[float]) -> list[float]:
        calls.append(t)
        return field(t, v)

    def axpy(v: list[float], a: float, k: list[float]) -> list[float]:
        return [vi + a * ki for vi, ki in zip(v, k, strict=True)]

    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        n = max(1, math.ceil(steps * (t1 - t0) / span - 1e-4))
        h = (t1 - t0) / n
        for k in range(n):
            t = t0 + k * h
            k1 = f(t, y)
            k2 = f(t + h / 2, axpy(y, h / 2, k1))
            k3 = f(t + h / 2, axpy(y, h / 2, k2))
            k4 = f(t + h, axpy(y, h, k3))
            y = [yi + h / 6 * (a + 2 * b + 2 * c + d) for yi, a, b, c, d in zip(y, k1, k2, k3, k4, strict=True)]
        states.append(y)
    return states, calls


def test_fixed_step_rk4_equals_a_plain_python_rk4_in_float64():
    """A time-dependent nonlinear field on an uneven grid: states and stage times equal an
    independent float RK4 to 1e-13 (the solver's step arithmetic runs on Python floats)."""

    def field(t: float, v: list[float]) -> list[float]:
        return [math.sin(v[1]) - t * v[0], v[0] * v[1] - math.cos(3 * t)]

    grid, y0, steps = [0.0, 0.3, 0.35, 1.0], [0.7, -0.2], 9
    expected, expected_calls = _python_rk4(field, y0, grid, steps)
    calls: list[float] = []

    def torch_field(t: Tensor, y: Tensor) -> Tensor:
        calls.append(float(t))
        return torch.stack([torch.sin(y[:, 1]) - t * y[:, 0], y[:, 0] * y[:, 1] - torch.cos(3 * t)], dim=1)

    states = FixedStepSolver(method="rk4", steps=steps)(
        torch_field, torch.tensor([y0], dtype=torch.float64), torch.tensor(grid, dtype=torch.float64)
    )
    torch.testing.assert_close(states[:, 0], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-13)
    assert calls == pytest.approx(expected_calls, abs=1e-15)


def test_fixed_step_solver_keeps_the_gradient_of_a_grid_that_requires_it():
    """dy/dt = -y from 0 to T: y(T) = y0 exp(-T) up to the RK4 error, so d y(T) / dT matches
    -y(T) (tensor step arithmetic is kept for such a grid)."""
    t_end = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    ts = torch.stack([torch.zeros((), dtype=torch.float64), t_end])
    y0 = torch.ones(1, 1, dtype=torch.float64)
    final = FixedStepSolver(method="rk4", steps=20)(lambda t, y: -y, y0, ts)[-1, 0, 0]
    (grad,) = torch.autograd.grad(final, t_end)
    assert math.isclose(float(grad), -math.exp(-0.8), rel_tol=1e-6)


def test_float64_discrete_path_loss_equals_eq_16_17_with_the_continuous_rate():
    """Eq. (16)-(17) in float64 with the per-step rate ``1 - exp(-kappa dt)`` (the discrete
    form of Eq. 10 over a step ``dt``), against a plain-Python computation to 1e-10: no float32
    computation may leak into a float64 run (states, grid, rate)."""
    torch.manual_seed(0)
    model = ODEModel(MLPDynamics(3, 3, (8,)), state_shape=(3,), encoder=nn.Identity()).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    kappa_c, steps, t_end = 2.3, 7, 1.0
    dt = t_end / steps
    ts = torch.linspace(0.0, t_end, steps + 1, dtype=torch.float64)
    context, eta0 = model.encode(x)
    trajectory = FixedStepSolver(method="rk4", steps=steps)(
        lambda t, eta: model.vector_field(eta, context, t.expand(eta.shape[0])), eta0, ts
    )
    rate = -math.expm1(-kappa_c * dt)
    out = discrete_path_lyapunov_loss(trajectory, y, potential=CrossEntropyPotential(), kappa=rate)
    assert out.loss.dtype == torch.float64 and out.v.dtype == torch.float64

    def cross_entropy(logits: list[float], label: int) -> float:
        top = max(logits)
        return top + math.log(sum(math.exp(z - top) for z in logits)) - logits[label]

    rows = trajectory.detach().tolist()
    total = 0.0
    for b, label in enumerate(y.tolist()):
        values = [cross_entropy(rows[j][b], label) for j in range(steps + 1)]
        total += sum(max(0.0, values[j] - math.exp(-kappa_c * dt) * values[j - 1]) for j in range(1, steps + 1))
    expected = total / x.shape[0]
    assert expected > 0  # the untrained model violates the condition somewhere: the check is not 0 == 0
    assert math.isclose(float(out.loss.detach()), expected, rel_tol=1e-10, abs_tol=1e-12)
