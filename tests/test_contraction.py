"""The opt-in levers of lyapunov_plugin.contraction (docs/certify.md).

The quadratic form, the input sensitivity and the certified margins are checked in float64
against independent computations (full Jacobians by autograd, the closed-form minimum of an
affine model over a box); a model trained with the certified-margin lever is attacked and
no certified example may break.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lyapunov_plugin import Classifier, FixedStepSolver, LyapunovTrainer, MonteCarloObjective, ODEModel, certify
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.certify import margin_lower_bounds
from lyapunov_plugin.contraction import CertifiedMarginObjective, ContractionObjective, contraction_terms

from .models import blobs, loader
from .test_certify import attack_margins, linear_model, small_node


def tanh_model(seed: int) -> ODEModel:
    torch.manual_seed(seed)
    field = MLPDynamics(3, 4, (8,))
    return ODEModel(
        field, state_shape=(3,), encoder=nn.Linear(5, 4), solver=FixedStepSolver(method="rk4", steps=3)
    ).double()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), rate=st.floats(0.0, 3.0))
def test_quadratic_form_and_sensitivity_match_full_jacobians(seed, rate):
    model = tanh_model(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g)
    eta = torch.randn(4, 3, dtype=torch.float64, generator=g)
    t = torch.rand(4, dtype=torch.float64, generator=g)
    violation, q, sens = (
        a.detach() for a in contraction_terms(model, x, eta, t, rate=rate, generator=torch.Generator().manual_seed(7))
    )
    # The same draws, in the same order: v Gaussian, then u signs.
    g2 = torch.Generator().manual_seed(7)
    v = torch.randn((4, 3), generator=g2, dtype=torch.float64)
    u = torch.randint(0, 2, (4, 3), generator=g2).to(torch.float64) * 2 - 1
    for i in range(4):

        def f_eta(e, i=i):
            context, _ = model.encode(x[i : i + 1])
            return model.vector_field(e[None], context, t[i : i + 1])[0]

        def f_x(z, i=i):
            context, _ = model.encode(z[None])
            return model.vector_field(eta[i : i + 1], context, t[i : i + 1])[0]

        j_eta = torch.autograd.functional.jacobian(f_eta, eta[i])
        j_x = torch.autograd.functional.jacobian(f_x, x[i])
        expected_q = float(v[i] @ j_eta @ v[i] / (v[i] @ v[i]))
        assert float(q[i]) == pytest.approx(expected_q, abs=1e-10)
        assert float(violation[i]) == pytest.approx(max(expected_q + rate, 0.0), abs=1e-10)
        assert float(sens[i]) == pytest.approx(float((u[i] @ j_x).abs().sum()) / 3, abs=1e-10)


def test_contraction_of_a_linear_field_is_its_symmetric_part():
    """For f = A eta + ..., v^T J v = v^T sym(A) v: a field A = -2 I contracts at rate 2
    (no violation at rate 2 - tiny, violation 1 at rate 3)."""
    model = linear_model(0, "rk4", 2)
    with torch.no_grad():
        model.dynamics.net[0].weight[:, :3] = -2.0 * torch.eye(3, dtype=torch.float64)
    x = torch.randn(6, 5, dtype=torch.float64)
    eta = torch.randn(6, 3, dtype=torch.float64)
    t = torch.zeros(6, dtype=torch.float64)
    violation, q, _ = contraction_terms(model, x, eta, t, rate=1.999, with_input=False)
    torch.testing.assert_close(q, torch.full_like(q, -2.0), rtol=0.0, atol=1e-12)
    assert float(violation.detach().abs().max()) == 0.0
    violation, _, sens = contraction_terms(model, x, eta, t, rate=3.0, with_input=False)
    torch.testing.assert_close(violation, torch.ones_like(violation), rtol=0.0, atol=1e-12)
    assert float(sens.abs().max()) == 0.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.01, 0.5))
def test_certified_margins_are_the_closed_form_on_an_affine_model(seed, eps):
    """``margin_lower_bounds`` per class equals the exact minimum of ``logit_y - logit_j`` over
    the box, and its minimum over ``j`` is :func:`certify`'s bound."""
    model = linear_model(seed, "rk4", 3)
    x = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(5) % 3
    lower = margin_lower_bounds(model, x, y, eps=eps, solver=model.solver)
    clf = Classifier(model)
    jac = torch.autograd.functional.jacobian(lambda z: clf(z[None])[0], x[0]).detach()
    with torch.no_grad():
        logits = clf(x)
    for i in range(5):
        for j in range(3):
            if j == int(y[i]):
                assert math.isinf(float(lower[i, j]))
                continue
            a = jac[y[i]] - jac[j]
            expected = float(logits[i, y[i]] - logits[i, j] - eps * a.abs().sum())
            assert float(lower[i, j]) == pytest.approx(expected, abs=1e-9)
    cert = certify(model, x, y, eps=eps)
    torch.testing.assert_close(lower.amin(1).detach(), cert.margin_lower, rtol=0.0, atol=1e-10)


def test_certified_loss_is_differentiable_and_matches_its_formula():
    model = small_node(0).double()
    x, y = blobs(12, seed=2, classes=4)
    x = x.double()
    objective = CertifiedMarginObjective(eps=0.2, weight=1.0, solver=model.solver, domain=None, max_examples=6)
    loss = objective.certified_loss(model, x, y)
    lower = margin_lower_bounds(model, x[:6], y[:6], eps=0.2, solver=model.solver).detach()
    worst = torch.where(torch.isinf(lower), torch.zeros_like(lower), -lower)
    expected = torch.log(torch.exp(worst).sum(1)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(gr is not None and bool(torch.isfinite(gr).all()) for gr in grads)
    assert sum(float(gr.abs().sum()) for gr in grads) > 0.0


@pytest.fixture(scope="module")
def certified_trained():
    model = small_node(0)
    objective = CertifiedMarginObjective(eps=0.3, weight=1.0, solver=model.solver, domain=None, max_examples=16)
    LyapunovTrainer(model, objective=objective, seed=0, progress=False).fit(
        loader(*blobs(96, seed=0, classes=4)), epochs=6
    )
    x, y = blobs(48, seed=1, classes=4)
    return model, x, y


@pytest.mark.parametrize("eps", [0.3, 0.8])
def test_certified_lever_model_is_never_broken(certified_trained, eps):
    model, x, y = certified_trained
    cert = certify(model, x, y, eps=eps)
    found = attack_margins(model, x, y, eps, model.solver)
    assert int(cert.certified.sum()) >= 5, "vacuous unless something is certified"
    assert not bool((cert.certified & (found <= 0)).any())
    assert bool((cert.margin_lower <= found.double() + 1e-4).all())


def test_contraction_lever_model_is_never_broken():
    model = small_node(1)
    objective = ContractionObjective(rate=0.5, weight=1.0, input_weight=0.1)
    LyapunovTrainer(model, objective=objective, seed=0, progress=False).fit(
        loader(*blobs(96, seed=0, classes=4)), epochs=6
    )
    x, y = blobs(48, seed=1, classes=4)
    cert = certify(model, x, y, eps=0.3)
    found = attack_margins(model, x, y, 0.3, model.solver, samples=64)
    assert int(cert.certified.sum()) >= 5
    assert not bool((cert.certified & (found <= 0)).any())


def test_objectives_wrap_the_base_loss():
    model = small_node(2)
    x, y = blobs(16, seed=3, classes=4)
    base = MonteCarloObjective()
    g = torch.Generator().manual_seed(0)
    ref = base(model, x, y, generator=torch.Generator().manual_seed(0))
    off = ContractionObjective(base=base, weight=0.0, input_weight=0.0)(model, x, y, generator=g)
    assert float(off.loss) == pytest.approx(float(ref.loss), rel=1e-6)
    on = ContractionObjective(base=base, rate=100.0, weight=1.0)(
        model, x, y, generator=torch.Generator().manual_seed(0)
    )
    assert float(on.loss) > float(ref.loss) + 50.0  # rate 100 is violated by ~100 at every state
    assert ContractionObjective().uses_solver is False
    assert CertifiedMarginObjective().uses_solver is True


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda: ContractionObjective(base="mc"), TypeError, "base must be"),
        (lambda: ContractionObjective(base=ContractionObjective()), ValueError, "base must not"),
        (lambda: ContractionObjective(rate=-1.0), ValueError, "rate"),
        (lambda: ContractionObjective(weight=-0.1), ValueError, "weight"),
        (lambda: ContractionObjective(input_weight=float("nan")), ValueError, "input_weight"),
        (lambda: ContractionObjective(rollout_points=1), ValueError, "rollout_points"),
        (lambda: ContractionObjective(rollout_solver=3), TypeError, "rollout_solver"),
        (lambda: CertifiedMarginObjective(eps=0.0), ValueError, "eps"),
        (lambda: CertifiedMarginObjective(weight=-1.0), ValueError, "weight"),
        (lambda: CertifiedMarginObjective(solver="rk4"), TypeError, "solver must be"),
        (lambda: CertifiedMarginObjective(domain=(1.0, 0.0)), ValueError, "domain"),
        (lambda: CertifiedMarginObjective(domain=0.5), TypeError, "domain"),
        (lambda: CertifiedMarginObjective(max_examples=0), ValueError, "max_examples"),
        (lambda: CertifiedMarginObjective(base=None), TypeError, "base must be"),
    ],
)
def test_rejects_bad_arguments(factory, error, match):
    with pytest.raises(error, match=match):
        factory()
