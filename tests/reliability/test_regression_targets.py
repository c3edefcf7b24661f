"""Diagnostics with regression targets (issue 13 item 3): every diagnostic handles targets of
any shape the potential accepts. Here :class:`MSEPotential` with ``(B, 1)`` float targets,
checked in float64 against an independent computation (autograd for ``dV/deta``), and error
rates only for class labels.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    MSEPotential,
    ODEModel,
    UniformTimeSampler,
    monte_carlo_lyapunov_loss,
)
from lyapunov_plugin import diagnostics as dg
from lyapunov_plugin.blocks import MLPDynamics

B, S, KAPPA = 6, 2, 0.7
TS = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)


def _regressor(dtype: torch.dtype = torch.float64) -> ODEModel:
    torch.manual_seed(0)
    model = ODEModel(
        MLPDynamics(S, S, (8,)),
        state_shape=(S,),
        encoder=nn.Identity(),
        readout=nn.Linear(S, 1),
        solver=FixedStepSolver(method="rk4", steps=8),
    )
    return model.to(dtype)


def _data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, S, generator=g, dtype=dtype), torch.randn(B, 1, generator=g, dtype=dtype)


def _reference(model: ODEModel, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``V`` (T, B) and ``dV/dt = grad_eta V . f`` (T, B) along the model's trajectories,
    by reverse-mode autograd on ``V(eta) = mean((psi(eta) - y)^2)``."""
    states = model.trajectory(x, TS).detach()
    context, _ = model.encode(x)
    values, rates = [], []
    for j, t in enumerate(TS):
        eta = states[j].clone().requires_grad_(True)
        v = (model.readout(eta) - y).pow(2).mean(-1)
        (grad,) = torch.autograd.grad(v.sum(), eta)
        f = model.vector_field(eta.detach(), context, t.expand(B))
        values.append(v.detach())
        rates.append((grad * f).sum(-1).detach())
    return torch.stack(values), torch.stack(rates)


def test_loss_error_curve_reports_the_mse_along_trajectories_and_no_error_rate():
    model, (x, y) = _regressor(), _data()
    curve = dg.loss_error_curve(model, (x, y), TS, potential=MSEPotential())
    v, _ = _reference(model, x, y)
    torch.testing.assert_close(torch.tensor(curve.loss, dtype=torch.float64), v.mean(1), rtol=1e-10, atol=1e-12)
    assert curve.num_points == B  # "only correct" does not apply to regression: every example counts
    assert all(math.isnan(e) for e in curve.error)


def test_trajectory_violation_rate_with_regression_targets_matches_autograd():
    model, (x, y) = _regressor(), _data()
    rate = dg.trajectory_violation_rate(model, (x, y), potential=MSEPotential(), kappa=KAPPA, ts=TS)
    v, v_dot = _reference(model, x, y)
    expected = float((v_dot + KAPPA * v > 0).double().mean())
    assert rate == expected
    assert 0.0 < expected < 1.0  # the check is not trivially all or nothing on this model


def test_decay_statistics_with_regression_targets_matches_the_definition():
    model, (x, y) = _regressor(), _data()
    stats = dg.decay_statistics(model, (x, y), potential=MSEPotential(), kappa=KAPPA, ts=TS, tolerance=0.0)
    v, _ = _reference(model, x, y)
    rate = (v[0].clamp_min(1e-12).log() - v[-1].clamp_min(1e-12).log()) / float(TS[-1] - TS[0])
    assert stats.num_points == B
    assert stats.monotone_fraction == float((v[1:] <= v[:-1]).all(0).double().mean())
    assert math.isclose(stats.median_rate, float(rate.median()), rel_tol=1e-10)
    assert stats.rate_at_least_kappa == float((rate >= KAPPA).double().mean())


def test_lyapunov_condition_rate_with_regression_targets_is_the_monte_carlo_rate():
    model, (x, y) = _regressor(), _data()
    sampler = HypercubeSampler(half_width=2.0)
    kwargs = dict(potential=MSEPotential(), kappa=KAPPA, state_sampler=sampler, time_sampler=UniformTimeSampler())
    rate = dg.lyapunov_condition_rate(
        model, (x, y), num_samples=16, generator=torch.Generator().manual_seed(5), **kwargs
    )
    out = monte_carlo_lyapunov_loss(model, x, y, num_samples=16, generator=torch.Generator().manual_seed(5), **kwargs)
    assert rate == float((out.pointwise <= 0).double().mean())
    assert out.pointwise.shape == (B * 16,)


def test_numpy_style_regression_data_is_cast_to_a_float32_model():
    """float64 features and (B, 1) float64 targets give the float32 data's numbers."""
    model = _regressor(torch.float32)
    x, y = _data()
    for diagnostic in (
        lambda a, b: dg.loss_error_curve(model, (a, b), TS, potential=MSEPotential()).loss,
        lambda a, b: dg.trajectory_violation_rate(model, (a, b), potential=MSEPotential(), kappa=KAPPA, ts=TS),
        lambda a, b: dg.decay_statistics(model, (a, b), potential=MSEPotential(), kappa=KAPPA, ts=TS).median_rate,
    ):
        assert diagnostic(x, y) == diagnostic(x.float(), y.float())


def test_class_labels_still_get_error_rates():
    torch.manual_seed(0)
    model = ODEModel(MLPDynamics(S, S, (8,)), state_shape=(S,), encoder=nn.Identity()).double()
    x, _ = _data()
    y = torch.arange(B) % S
    curve = dg.loss_error_curve(model, (x, y), TS, potential=CrossEntropyPotential(), only_correct=False)
    states = model.trajectory(x, TS)
    expected_error = (states.argmax(-1) != y).double().mean(1)
    torch.testing.assert_close(torch.tensor(curve.error, dtype=torch.float64), expected_error)
    assert not any(math.isnan(e) for e in curve.error)
