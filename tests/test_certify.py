"""certify: a sound certificate of the discretised model (docs/certify.md).

A certificate is a proof, so it is tested like one: exact on a linear field (the
reachable set is affine in the input and known in closed form), never contradicted by
sampling the ball or by PGD through the same fixed-step solver on trained models,
monotone in eps, and strict about what it accepts.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from lyapunov_plugin import (
    Certificate,
    Classifier,
    FixedStepSolver,
    LyapunovTrainer,
    ODEModel,
    SupervisedObjective,
    certify,
)
from lyapunov_plugin.blocks import LipschitzMLP, MLPDynamics, SimplexDynamics, Standardize
from lyapunov_plugin.bounds import relax

from .models import blobs, loader, torchdyn_data_controlled


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``logit_y - max_{j != y} logit_j`` per row."""
    true = logits.gather(1, y[:, None])[:, 0]
    other = logits.scatter(1, y[:, None], -math.inf).amax(1)
    return true - other


def linear_model(seed: int, method: str, steps: int, *, d: int = 5, m: int = 4, n: int = 3, classes: int = 3):
    """``eta(0) = 0``, ``f(eta, x) = A eta + B (E x + e) + b``, linear readout: affine in x."""
    torch.manual_seed(seed)
    field = MLPDynamics(n, m, (), time_dependent=False)
    model = ODEModel(
        field,
        state_shape=(n,),
        encoder=nn.Linear(d, m),
        readout=nn.Linear(n, classes),
        solver=FixedStepSolver(method=method, steps=steps),
    )
    return model.double()


def closed_form_lower(model, x, y, eps, norm):
    """The exact minimum of each margin over the ball for an affine model: the logits are
    ``M x + v`` with ``M`` from autograd; ``min (a.x + c)`` over ``||x - x0|| <= eps`` is
    ``a.x0 + c - eps ||a||_*`` (dual norm)."""
    clf = Classifier(model)
    jac = torch.autograd.functional.jacobian(lambda z: clf(z[None])[0], x[0])
    with torch.no_grad():
        offset = clf(x) - x @ jac.T
    out = torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    for i in range(x.shape[0]):
        for j in range(jac.shape[0]):
            if j == int(y[i]):
                continue
            a = jac[int(y[i])] - jac[j]
            dual = a.abs().sum() if norm == "linf" else a.norm()
            value = a @ x[i] + offset[i, y[i]] - offset[i, j] - eps * dual
            out[i] = torch.minimum(out[i], value.detach())
    return out


@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["euler", "midpoint", "rk4"]),
    steps=st.integers(1, 6),
    eps=st.floats(0.0, 0.5),
    norm=st.sampled_from(["linf", "l2"]),
)
def test_exact_on_a_linear_field(seed, method, steps, eps, norm):
    model = linear_model(seed, method, steps)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = torch.arange(6) % 3
    cert = certify(model, x, y, eps=eps, norm=norm)
    expected = closed_form_lower(model, x, y, eps, norm)
    torch.testing.assert_close(cert.margin_lower, expected, rtol=0.0, atol=1e-10)
    assert torch.equal(cert.certified, expected > 0)
    assert (cert.method, cert.steps, cert.norm, cert.eps) == (method, steps, norm, eps)


def test_linear_field_domain_is_the_clipped_box():
    """With ``domain`` the ball is intersected with the box: still exact (a box again)."""
    model = linear_model(3, "rk4", 4)
    x = torch.rand(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 0.0  # on the boundary: only the upper half of the ball is in the domain
    y = torch.arange(8) % 3
    eps = 0.2
    cert = certify(model, x, y, eps=eps, domain=(0.0, 1.0))
    lo, hi = (x - eps).clamp_min(0.0), (x + eps).clamp_max(1.0)
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    clf = Classifier(model)
    jac = torch.autograd.functional.jacobian(lambda z: clf(z[None])[0], x[0]).detach()
    with torch.no_grad():
        at_center = clf(center)
    expected = torch.full((8,), math.inf, dtype=torch.float64)
    for j in range(3):
        a = jac[y] - jac[j]
        value = at_center.gather(1, y[:, None])[:, 0] - at_center[:, j] - (a.abs() * radius).sum(1)
        expected = torch.where(y == j, expected, torch.minimum(expected, value))
    torch.testing.assert_close(cert.margin_lower, expected, rtol=0.0, atol=1e-10)
    wide = certify(model, x, y, eps=eps)
    assert bool((cert.margin_lower >= wide.margin_lower - 1e-12).all())
    assert bool((cert.margin_lower > wide.margin_lower + 1e-6).any())


# -- activations -----------------------------------------------------------------------------


@given(
    kind=st.sampled_from(["tanh", "sigmoid", "relu", "softplus"]),
    lower=st.floats(-30.0, 30.0),
    width=st.one_of(st.just(0.0), st.floats(1e-12, 1e-6), st.floats(1e-6, 40.0)),
)
def test_relaxation_encloses_the_activation(kind, lower, width):
    lo = torch.tensor([lower], dtype=torch.float64)
    hi = lo + width
    slope, intercept, error = relax(kind, lo, hi)
    z = torch.cat([lo, hi, lo + width * torch.rand(2000, dtype=torch.float64)])
    fn = {"tanh": torch.tanh, "sigmoid": torch.sigmoid, "relu": torch.relu, "softplus": nn.functional.softplus}[kind]
    residual = (fn(z) - slope * z - intercept).abs()
    assert bool((residual <= error).all()), float((residual - error).max())
    # not vacuous: the error is at most the activation's range over the interval
    assert float(error) <= float(fn(hi) - fn(lo)) / 2 + float(slope) * width / 2 + 1e-8


# -- trained models: no attack may break a certified example ----------------------------------


def attack_margins(model, x, y, eps, solver, *, steps=40, restarts=2, samples=256, seed=0):
    """The smallest margin found over the linf ball: all corners of a 2-D ball, random
    corners and uniform points, and margin-loss PGD through the same fixed-step solver."""
    g = torch.Generator().manual_seed(seed)
    clf = Classifier(model, solver=solver)
    worst = torch.full((x.shape[0],), math.inf, dtype=x.dtype)
    with torch.no_grad():
        d = x[0].numel()
        corners = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=x.dtype)] * d).reshape(-1, *x.shape[1:])
        signs = torch.randint(0, 2, (samples, *x.shape[1:]), generator=g).to(x.dtype) * 2 - 1
        uniform = torch.rand((samples, *x.shape[1:]), generator=g, dtype=x.dtype) * 2 - 1
        for delta in torch.cat([corners, signs, uniform]):
            worst = torch.minimum(worst, margins(clf(x + eps * delta), y))
    for r in range(restarts):
        delta = torch.zeros_like(x) if r == 0 else (torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1) * eps
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = margins(clf(x + delta), y).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (delta - 2.5 * eps / steps * grad.sign()).clamp(-eps, eps)
                worst = torch.minimum(worst, margins(clf(x + delta), y))
    return worst


def small_node(seed: int) -> ODEModel:
    torch.manual_seed(seed)
    x_train, _ = blobs(96, seed=seed, classes=4)
    encoder = nn.Sequential(Standardize.fit(x_train), nn.Linear(2, 6))
    field = MLPDynamics(4, 6, (16,))
    return ODEModel(field, state_shape=(4,), encoder=encoder, solver=FixedStepSolver(method="rk4", steps=5))


@pytest.fixture(scope="module", params=["lyanet", "standard"])
def trained(request):
    model = small_node(0)
    objective = SupervisedObjective() if request.param == "standard" else None
    trainer = (
        LyapunovTrainer(model, objective=objective, seed=0, progress=False)
        if objective is not None
        else LyapunovTrainer(model, seed=0, progress=False)
    )
    trainer.fit(loader(*blobs(96, seed=0, classes=4)), epochs=6)
    x, y = blobs(48, seed=1, classes=4)
    return model, x, y


@pytest.mark.parametrize("eps", [0.3, 0.8])
def test_no_certified_example_is_broken(trained, eps):
    model, x, y = trained
    solver = model.solver
    cert = certify(model, x, y, eps=eps)
    found = attack_margins(model, x, y, eps, solver)
    assert int(cert.certified.sum()) >= 5, "the test is vacuous unless something is certified"
    assert not bool((cert.certified & (found <= 0)).any())
    # the bound is a lower bound of every margin found, with float32-model slack
    assert bool((cert.margin_lower <= found + 1e-4).all()), float((cert.margin_lower - found).max())
    robust_accuracy = float((found > 0).double().mean())
    assert cert.certified_accuracy <= robust_accuracy
    if eps == 0.8:  # the attack is not vacuous either: it breaks correctly classified points
        assert robust_accuracy < cert.clean_accuracy
    with torch.no_grad():
        clean = margins(Classifier(model, solver=solver)(x), y)
    torch.testing.assert_close(cert.margin, clean.double(), rtol=0.0, atol=1e-4)


def test_bounds_are_monotone_in_eps(trained):
    model, x, y = trained
    lowers = [certify(model, x, y, eps=eps).margin_lower for eps in (0.0, 0.05, 0.2, 0.5, 1.0)]
    for a, b in zip(lowers[:-1], lowers[1:], strict=True):
        assert bool((b <= a + 1e-12).all())
    zero = certify(model, x, y, eps=0.0)
    assert torch.equal(zero.certified, zero.margin > 0)
    assert lowers[-1].mean() < lowers[0].mean()


def test_l2_is_sound_and_tighter_than_the_linf_box(trained):
    """The l2 ball lies in the linf ball of the same radius: its bound must be at least as
    high, and sampled points of the l2 ball never beat it."""
    model, x, y = trained
    eps = 0.6
    l2 = certify(model, x, y, eps=eps, norm="l2")
    box = certify(model, x, y, eps=eps, norm="linf")
    assert bool((l2.margin_lower >= box.margin_lower - 1e-9).all())
    g = torch.Generator().manual_seed(0)
    clf = Classifier(model)
    with torch.no_grad():
        for _ in range(256):
            u = torch.randn(x.shape, generator=g)
            u = u / u.norm(dim=1, keepdim=True) * eps
            assert bool((l2.margin_lower <= margins(clf(x + u), y).double() + 1e-4).all())


# -- other layers and model kinds: sampled points stay within the bounds -------------------------


def _sampled_soundness(model, x, y, eps, solver, norm="linf"):
    cert = certify(model, x, y, eps=eps, solver=solver, norm=norm)
    g = torch.Generator().manual_seed(0)
    clf = Classifier(model, solver=solver)
    with torch.no_grad():
        for _ in range(64):
            delta = torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1
            if norm == "l2":
                delta = delta / delta.flatten(1).norm(dim=1).reshape(-1, *[1] * (x.ndim - 1))
            assert bool((cert.margin_lower <= margins(clf(x + eps * delta), y).double() + 1e-4).all())
    return cert


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_conv_relu_softplus_sigmoid_model(norm):
    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 6), nn.Sigmoid(), nn.Identity()
    )
    field = MLPDynamics(3, 6, (8,), activation="softplus")
    readout = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model = ODEModel(field, state_shape=(3,), encoder=encoder, readout=readout, solver=FixedStepSolver(steps=3))
    x = torch.rand(10, 1, 4, 4)
    y = torch.arange(10) % 3
    cert = _sampled_soundness(model, x, y, 0.05, None, norm)
    assert (cert.norm, cert.method, cert.steps) == (norm, "rk4", 3)


def test_spectrally_normalised_encoder_is_certified_through_its_parametrised_weights():
    """compare_digits' Lipschitz encoder: LipschitzMLP over torch's parametrised (spectral-norm)
    nn.Linear, whose class is a generated subclass of nn.Linear."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Flatten(), LipschitzMLP([16, 8, 6], lipschitz=1.5))
    assert any(parametrize.is_parametrized(m) for m in encoder.modules())
    model = ODEModel(MLPDynamics(3, 6, (8,)), state_shape=(3,), encoder=encoder, solver=FixedStepSolver(steps=3))
    model.eval()
    x = torch.rand(10, 1, 4, 4)
    y = torch.arange(10) % 3
    cert = _sampled_soundness(model, x, y, 0.05, None)
    assert cert.margin_lower.shape == (10,)


def test_torchdyn_data_control_and_depth_cat():
    pytest.importorskip("torchdyn")
    torch.manual_seed(0)
    model = torchdyn_data_controlled(hidden=8, classes=2)
    x, _ = blobs(24, classes=2)
    solver = FixedStepSolver(method="midpoint", steps=4)
    with torch.no_grad():
        y = Classifier(model, solver=solver)(x).argmax(1)  # untrained: certify its own predictions
    cert = _sampled_soundness(model, x, y, 0.05, solver)
    assert int(cert.certified.sum()) > 0
    # The trainer's view of the same model (what trainer.model is) certifies the same way.
    from lyapunov_plugin.adapters.torchdyn import TorchdynModel

    through = certify(TorchdynModel(model), x, y, eps=0.05, solver=solver)
    assert torch.equal(through.certified, cert.certified)
    torch.testing.assert_close(through.margin_lower, cert.margin_lower)


def test_a_reused_activation_is_propagated_at_every_position():
    # One nn.Tanh() at two positions: named_children() lists it once, Sequential.forward runs it
    # twice; the certificate must follow forward (found by review).
    pytest.importorskip("torchdyn")
    from torchdyn.core import NeuralODE

    torch.manual_seed(0)
    first, middle, last = nn.Linear(2, 6), nn.Linear(6, 6), nn.Linear(6, 2)
    act = nn.Tanh()
    shared = NeuralODE(nn.Sequential(first, act, middle, act, last), solver="rk4", return_t_eval=False)
    distinct = NeuralODE(nn.Sequential(first, nn.Tanh(), middle, nn.Tanh(), last), solver="rk4", return_t_eval=False)
    x, _ = blobs(16, classes=2)
    solver = FixedStepSolver(method="rk4", steps=4)
    with torch.no_grad():
        y = Classifier(distinct, solver=solver)(x).argmax(1)
    a = certify(shared, x, y, eps=0.05, solver=solver)
    b = certify(distinct, x, y, eps=0.05, solver=solver)
    torch.testing.assert_close(a.margin_lower, b.margin_lower)


def test_float32_bounds_agree_with_float64(trained):
    model, x, y = trained
    low64 = certify(model, x, y, eps=0.3).margin_lower
    low32 = certify(model, x, y, eps=0.3, dtype=torch.float32).margin_lower
    assert low32.dtype == torch.float32
    torch.testing.assert_close(low32.double(), low64, rtol=0.0, atol=1e-3)


def test_result_and_modes(trained):
    model, x, y = trained
    model.train()
    cert = certify(model, x, y, eps=0.3)
    assert model.training  # restored
    assert isinstance(cert, Certificate)
    assert cert.certified.dtype == torch.bool and cert.certified.shape == (x.shape[0],)
    assert cert.certified_accuracy == pytest.approx(float(cert.certified.double().mean()))
    assert cert.clean_accuracy >= cert.certified_accuracy
    assert "rk4 solver with 5 steps" in cert.describe()


# -- input validation -----------------------------------------------------------------------------


def test_refuses_an_adaptive_solver():
    model = linear_model(0, "rk4", 2)
    model.solver = lambda func, y0, ts: torch.stack([y0, y0])  # stands in for dopri5
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="fixed-step solver"):
        certify(model, x, y, eps=0.1)
    with pytest.raises(TypeError, match="FixedStepSolver"):
        certify(model, x, y, eps=0.1, solver=model.solver)
    cert = certify(model, x, y, eps=0.1, solver=FixedStepSolver(method="euler", steps=3))
    assert (cert.method, cert.steps) == ("euler", 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, "eps"),
        ({"eps": "0.1"}, TypeError, "eps"),
        ({"eps": 0.1, "norm": "l1"}, ValueError, "norm"),
        ({"eps": 0.1, "norm": "l2", "domain": (0.0, 1.0)}, ValueError, "domain"),
        ({"eps": 0.1, "domain": (1.0, 0.0)}, ValueError, "domain"),
        ({"eps": 0.1, "domain": (0.5, 1.0)}, ValueError, "x must lie in domain"),
        ({"eps": 0.1, "dtype": torch.int64}, ValueError, "dtype"),
        ({"eps": 0.1, "batch_size": 0}, ValueError, "batch_size"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, match):
    model = linear_model(0, "rk4", 2)
    x, y = torch.rand(4, 5, dtype=torch.float64), torch.zeros(4, dtype=torch.long)
    with pytest.raises(error, match=match):
        certify(model, x, y, **kwargs)


def test_rejects_bad_labels():
    model = linear_model(0, "rk4", 2)
    x = torch.rand(4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="y must"):
        certify(model, x, torch.zeros(3, dtype=torch.long), eps=0.1)
    with pytest.raises(ValueError, match="y must"):
        certify(model, x, torch.zeros(4), eps=0.1)
    with pytest.raises(ValueError, match=r"y must hold class indices in \[0, 3\)"):
        certify(model, x, torch.full((4,), 3), eps=0.1)


def test_names_the_unsupported_layer():
    model = ODEModel(MLPDynamics(3, 4, (8,)), state_shape=(3,), encoder=nn.Sequential(nn.Linear(5, 4), nn.GELU()))
    x, y = torch.rand(4, 5), torch.zeros(4, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="GELU"):
        certify(model, x, y, eps=0.1)
    field = MLPDynamics(3, 4, (8,), activation="elu")
    with pytest.raises(NotImplementedError, match="ELU"):
        certify(ODEModel(field, state_shape=(3,), encoder=nn.Linear(5, 4)), x, y, eps=0.1)
    simplex = SimplexDynamics(3, 4, half_width=1.0, gain=2.0)
    with pytest.raises(NotImplementedError, match="SimplexDynamics"):
        certify(ODEModel(simplex, state_shape=(3,), encoder=nn.Linear(5, 4)), x, y, eps=0.1)


def test_refuses_a_model_it_cannot_reproduce():
    """A layer whose forward is not what its type says (a subclass) is refused by name;
    the interpreted model is also checked against the model's own output."""

    class Shifted(nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1.0

    model = ODEModel(MLPDynamics(3, 4, (8,)), state_shape=(3,), encoder=Shifted(5, 4))
    x, y = torch.rand(4, 5), torch.zeros(4, dtype=torch.long)
    with pytest.raises(NotImplementedError, match="Shifted"):
        certify(model, x, y, eps=0.1)
    with pytest.raises(TypeError, match="not supported"):
        certify(nn.Sequential(nn.Linear(2, 2)), x, y, eps=0.1)

    class Doubled(ODEModel):
        def _field(self, eta, context, t):
            return 2.0 * super()._field(eta, context, t)

    odd = Doubled(MLPDynamics(3, 4, (8,)), state_shape=(3,), encoder=nn.Linear(5, 4))
    with pytest.raises(NotImplementedError, match="does not reproduce its output"):
        certify(odd, x, y, eps=0.1)


def test_benchmark_quick_smoke(tmp_path):
    """``python -m benchmarks.certify --quick`` end to end on one method: the soundness
    line must read 0 broken."""
    from benchmarks.certify import main

    payload = main(quick=True, seeds=[0], methods=["standard"], out_dir=tmp_path, name="smoke")
    summary = payload["summary"]["standard"]
    assert summary["certified_broken"] == 0 and summary["certified_points"] > 0
    assert (tmp_path / "smoke.json").exists() and "soundness" in (tmp_path / "smoke.md").read_text()


def test_benchmark_merge_reproduces_the_summary(tmp_path):
    """``--merge`` (one process per seed, combined afterwards) gives the summary of the runs it reads."""
    from benchmarks.certify import main

    first = main(quick=True, seeds=[0], methods=["standard"], out_dir=tmp_path, name="one")
    merged = main(quick=True, methods=["standard"], out_dir=tmp_path, name="merged", merge=[tmp_path / "one.json"])
    assert merged["summary"] == first["summary"]
    assert merged["setting"]["seeds"] == [0]


def test_benchmark_recipe_variants_run_and_stay_sound(tmp_path):
    """The two default-recipe variants of ``benchmarks.certify`` (label-smoothed potential,
    three times the rate) train and certify at the quick budget, with nothing broken."""
    from benchmarks.certify import main

    payload = main(quick=True, seeds=[0], methods=["lyanet_smoothing", "lyanet_kappa30"], out_dir=tmp_path, name="v")
    for method in ("lyanet_smoothing", "lyanet_kappa30"):
        assert payload["summary"][method]["certified_broken"] == 0
