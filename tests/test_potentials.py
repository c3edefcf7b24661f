"""Potentials (Eq. 11): values, closed-form versus autodiff derivatives, readouts."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lyapunov_plugin import CrossEntropyPotential, MarginPotential, MSEPotential, Potential, lyapunov_loss
from lyapunov_plugin.potentials import readout_jvp

from .problems import DTYPES, ce_reference, classification_batch, reference_v_and_vdot


class FocalPotential(Potential):
    """A user-defined potential that only implements ``value``."""

    def value(self, output, target):
        log_p = output.log_softmax(-1).gather(-1, target[:, None])[:, 0]
        return -((1 - log_p.exp()) ** 2) * log_p


@given(classification_batch(), st.floats(0.0, 3.0))
def test_truncated_ce_equals_max_zero_ce_minus_gamma(batch, gamma):
    eta, velocity, target = batch
    v, _ = CrossEntropyPotential(gamma=gamma).evaluate(eta, velocity, target)
    expected = torch.clamp(ce_reference(eta, target) - gamma, min=0.0)
    torch.testing.assert_close(v, expected)
    assert v.dtype == eta.dtype


@given(classification_batch(dtype=torch.float64), st.floats(0.0, 2.0))
def test_ce_closed_form_matches_forward_autodiff(batch, gamma):
    eta, velocity, target = batch
    pot = CrossEntropyPotential(gamma=gamma)
    closed = pot.value_and_derivative(eta, target, velocity)
    auto = Potential.value_and_derivative(pot, eta, target, velocity)
    torch.testing.assert_close(closed[0], auto[0], rtol=1e-12, atol=1e-12)
    # At the truncation kink the two one-sided derivatives differ; compare off the kink.
    off_kink = (ce_reference(eta, target) - gamma).abs() > 1e-9
    torch.testing.assert_close(closed[1][off_kink], auto[1][off_kink], rtol=1e-10, atol=1e-12)


@given(classification_batch(dtype=torch.float64))
def test_ce_derivative_matches_reverse_mode_reference(batch):
    eta, velocity, target = batch
    v, v_dot = CrossEntropyPotential().evaluate(eta, velocity, target)
    ref_v, ref_dot = reference_v_and_vdot(lambda e: ce_reference(e, target), eta, velocity)
    torch.testing.assert_close(v, ref_v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(v_dot, ref_dot, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("readout_kind", ["linear", "mlp"])
@given(data=st.data())
def test_readout_composition_matches_reverse_mode(readout_kind, data):
    torch.manual_seed(data.draw(st.integers(0, 10_000)))
    batch, dim, classes = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5)), data.draw(st.integers(2, 5))
    if readout_kind == "linear":
        readout = nn.Linear(dim, classes).double()
    else:
        readout = nn.Sequential(nn.Linear(dim, 7), nn.Tanh(), nn.Linear(7, classes)).double()
    eta = torch.randn(batch, dim, dtype=torch.float64) * 3
    velocity = torch.randn(batch, dim, dtype=torch.float64)
    target = torch.randint(0, classes, (batch,))
    for pot in (CrossEntropyPotential(), MarginPotential(), FocalPotential()):
        v, v_dot = pot.evaluate(eta, velocity, target, readout=readout)
        ref_v, ref_dot = reference_v_and_vdot(lambda e, pot=pot: pot.value(readout(e), target), eta, velocity)
        torch.testing.assert_close(v, ref_v, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v_dot, ref_dot, rtol=1e-9, atol=1e-11)


@given(classification_batch(dtype=torch.float64))
def test_user_potential_with_only_value_gets_exact_derivative(batch):
    eta, velocity, target = batch
    pot = FocalPotential()
    v, v_dot = pot.evaluate(eta, velocity, target)
    ref_v, ref_dot = reference_v_and_vdot(lambda e: pot.value(e, target), eta, velocity)
    torch.testing.assert_close(v_dot, ref_dot, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(v, ref_v)


@given(classification_batch(dtype=torch.float64), st.floats(-3, 3), st.floats(-3, 3))
def test_derivative_is_linear_in_velocity(batch, a, b):
    eta, f1, target = batch
    f2 = torch.flip(f1, dims=[0]) * 0.5 + 1.0
    for pot in (CrossEntropyPotential(), MarginPotential()):
        _, d1 = pot.evaluate(eta, f1, target)
        _, d2 = pot.evaluate(eta, f2, target)
        _, d12 = pot.evaluate(eta, a * f1 + b * f2, target)
        torch.testing.assert_close(d12, a * d1 + b * d2, rtol=1e-9, atol=1e-9)


@given(classification_batch(), st.randoms(use_true_random=False))
def test_values_and_derivatives_are_invariant_to_batch_order(batch, rnd):
    eta, velocity, target = batch
    perm = list(range(eta.shape[0]))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    for pot in (CrossEntropyPotential(gamma=0.1), MarginPotential()):
        v, d = pot.evaluate(eta, velocity, target)
        vp, dp = pot.evaluate(eta[perm], velocity[perm], target[perm])
        torch.testing.assert_close(vp, v[perm])
        torch.testing.assert_close(dp, d[perm])


@given(classification_batch())
def test_margin_potential_range_and_definition(batch):
    eta, velocity, target = batch
    v, _ = MarginPotential().evaluate(eta, velocity, target)
    p = eta.double().softmax(-1)
    expected = []
    for i in range(p.shape[0]):
        others = [p[i, j] for j in range(p.shape[1]) if j != int(target[i])]
        expected.append(1 + max(others) - p[i, int(target[i])])
    torch.testing.assert_close(v.double(), torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert bool((v >= 0).all()) and bool((v <= 2).all())
    # V < 1 exactly when the label is the arg-max (away from ties).
    correct = eta.argmax(-1) == target
    assert bool((v[correct] <= 1 + 1e-6).all()) and bool((v[~correct] >= 1 - 1e-6).all())


@given(st.integers(1, 6), st.integers(1, 5), DTYPES, st.integers(0, 1000))
def test_mse_closed_form(batch, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(batch, dim, generator=g, dtype=dtype)
    y = torch.randn(batch, dim, generator=g, dtype=dtype)
    dz = torch.randn(batch, dim, generator=g, dtype=dtype)
    v, v_dot = MSEPotential().evaluate(out, dz, y)
    torch.testing.assert_close(v, F.mse_loss(out, y, reduction="none").mean(-1))
    ref_v, ref_dot = reference_v_and_vdot(lambda o: ((o - y) ** 2).mean(-1), out.double(), dz.double())
    torch.testing.assert_close(v_dot.double(), ref_dot, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=1e-5)


def test_readout_jvp_is_exact_for_linear_and_identity():
    lin = nn.Linear(3, 2).double()
    eta = torch.randn(4, 3, dtype=torch.float64)
    vel = torch.randn(4, 3, dtype=torch.float64)
    out, d = readout_jvp(lin, eta, vel)
    torch.testing.assert_close(d, vel @ lin.weight.T)
    out, d = readout_jvp(None, eta, vel)
    assert out is eta and d is vel


def test_readout_with_batchnorm_in_training_mode_works():
    readout = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    eta = torch.randn(5, 3, dtype=torch.float64)
    vel = torch.randn(5, 3, dtype=torch.float64)
    target = torch.randint(0, 4, (5,))
    v, v_dot = CrossEntropyPotential().evaluate(eta, vel, target, readout=readout)
    assert v.shape == v_dot.shape == (5,)
    assert torch.isfinite(v_dot).all()


def test_gradients_flow_to_readout_and_dynamics_parameters():
    readout = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 3))
    dyn = nn.Linear(3, 3)
    eta = torch.randn(6, 3)
    target = torch.randint(0, 3, (6,))
    v, v_dot = CrossEntropyPotential().evaluate(eta, dyn(eta), target, readout=readout)
    (v_dot + v).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in [*readout.parameters(), *dyn.parameters()])


class TestValidation:
    def test_gamma_negative(self):
        with pytest.raises(ValueError, match="gamma must be >= 0, got -0.1"):
            CrossEntropyPotential(gamma=-0.1)

    def test_gamma_wrong_type(self):
        with pytest.raises(TypeError, match="gamma must be a real number"):
            CrossEntropyPotential(gamma="0.1")

    def test_gamma_positional_rejected(self):
        with pytest.raises(TypeError):
            CrossEntropyPotential(0.1)  # settings are keyword-only

    def test_labels_out_of_range(self):
        eta = torch.zeros(2, 3)
        with pytest.raises(ValueError, match=r"target must lie in \[0, 2\] for 3 classes, got values in \[0, 3\]"):
            CrossEntropyPotential().evaluate(eta, eta, torch.tensor([0, 3]))

    def test_float_labels(self):
        eta = torch.zeros(2, 3)
        with pytest.raises(TypeError, match="target must hold integer class labels, got dtype torch.float32"):
            CrossEntropyPotential().evaluate(eta, eta, torch.tensor([0.0, 1.0]))

    def test_batch_mismatch(self):
        eta = torch.zeros(2, 3)
        with pytest.raises(
            ValueError, match=r"target must have batch size 2 \(the batch size of the output\), got shape \(3,\)"
        ):
            CrossEntropyPotential().evaluate(eta, eta, torch.tensor([0, 1, 2]))

    def test_velocity_shape(self):
        with pytest.raises(ValueError, match=r"velocity must have shape \(2, 3\) \(the shape of eta\), got \(2, 4\)"):
            CrossEntropyPotential().evaluate(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]))

    def test_velocity_dtype(self):
        with pytest.raises(TypeError, match="velocity must have dtype torch.float32"):
            CrossEntropyPotential().evaluate(
                torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.float64), torch.tensor([0, 1])
            )

    def test_non_finite_state(self):
        eta = torch.zeros(2, 3)
        eta[1, 2] = math.nan
        with pytest.raises(ValueError, match="eta must be finite, got 1 NaN/Inf entry"):
            lyapunov_loss(eta, torch.zeros(2, 3), torch.tensor([0, 1]), potential=CrossEntropyPotential(), kappa=1.0)

    def test_empty_batch(self):
        with pytest.raises(ValueError, match="eta must have a non-empty batch dimension"):
            CrossEntropyPotential().evaluate(torch.zeros(0, 3), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))

    def test_logits_need_two_classes(self):
        with pytest.raises(ValueError, match=r"logits of shape \(batch, num_classes >= 2\), got \(2, 1\)"):
            CrossEntropyPotential().evaluate(torch.zeros(2, 1), torch.zeros(2, 1), torch.tensor([0, 0]))

    def test_mse_target_shape(self):
        with pytest.raises(ValueError, match=r"target must have shape \(2, 3\)"):
            MSEPotential().evaluate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2))


@pytest.mark.parametrize("readout_kind", ["linear", "mlp"])
def test_value_only_potentials_backpropagate_through_a_trainable_readout_float64(readout_kind):
    """Eq. (12) with a potential that defines only value(): its gradient to the readout's
    parameters and to the states equals an independent double-backward computation."""

    class Focal(Potential):
        def value(self, output, target):
            log_p = output.log_softmax(-1).gather(-1, target[:, None])[:, 0]
            return -((1 - log_p.exp()) ** 2) * log_p

    torch.manual_seed(0)
    readout = (
        nn.Linear(3, 4) if readout_kind == "linear" else nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4))
    ).double()
    eta = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    velocity = torch.randn(6, 3, dtype=torch.float64)
    target = torch.randint(0, 4, (6,))
    for potential in (Focal(), MarginPotential()):
        loss = lyapunov_loss(eta, velocity, target, potential=potential, kappa=2.0, readout=readout).sum()
        grads = torch.autograd.grad(loss, [eta, *readout.parameters()])
        # reference: V by reverse mode, dV/deta . f by a gradient with create_graph (double backward)
        v = potential.value(readout(eta), target)
        (dv,) = torch.autograd.grad(v.sum(), eta, create_graph=True)
        reference = torch.relu((dv * velocity).sum(-1) + 2.0 * v).sum()
        expected = torch.autograd.grad(reference, [eta, *readout.parameters()])
        for got, want in zip(grads, expected, strict=False):
            torch.testing.assert_close(got, want)


def test_non_finite_states_are_not_masked_by_the_cross_entropy_potential():
    """A NaN state must give a non-finite V and dV/dt (Eq. 11-12), never a silent 0."""
    eta = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [float("inf"), -float("inf")]])
    velocity = torch.ones(3, 2)
    v, v_dot = CrossEntropyPotential().evaluate(eta, velocity, torch.tensor([1, 0, 0]))
    assert torch.isfinite(v[0]) and torch.isfinite(v_dot[0])
    assert not torch.isfinite(v[1]) and not torch.isfinite(v_dot[1])
    assert not (torch.isfinite(v[2]) and torch.isfinite(v_dot[2]))


@pytest.mark.parametrize("margin", [0.0, 12.0, 16.0])
def test_cross_entropy_keeps_small_values_of_confident_rows(margin):
    """The closed form works on max-shifted logits: for confident rows (small CE) float32
    stays as accurate as torch's log_softmax against float64, and a tie at huge logits is
    log 2, not 0 (logsumexp(z) - z_y would cancel both)."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2000, 10, generator=g) * 3
    y = torch.randint(0, 10, (2000,), generator=g)
    z[torch.arange(2000), y] += margin
    v = torch.randn(2000, 10, generator=g)
    exact = F.cross_entropy(z.double(), y, reduction="none")
    ours, v_dot = CrossEntropyPotential().value_and_derivative(z, y, v)
    torch_f32 = F.cross_entropy(z, y, reduction="none")
    rel = lambda a: float(((a.double() - exact).abs() / exact.clamp_min(1e-300)).median())  # noqa: E731
    # Both are float32 kernels whose rounding depends on the CPU's vector units: on an AVX2
    # machine ours was 1.24x torch's median at margin 12 (4.3e-5), on the earlier CI machine
    # within 1.2x. The claim is "as accurate as torch's float32", not a bit-level ranking.
    assert rel(ours) <= 1.5 * rel(torch_f32) + 1e-9
    exact_dot = (F.softmax(z.double(), -1) * v.double()).sum(-1) - v.double().gather(-1, y[:, None])[:, 0]
    assert float((v_dot.double() - exact_dot).abs().max()) < 1e-5
    tie = torch.tensor([[1e30, 1e30, 0.0]])
    assert float(CrossEntropyPotential().value(tie, torch.tensor([0]))) == pytest.approx(math.log(2.0))


def _smoothed_kl_reference(eta: torch.Tensor, target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """``KL(q || softmax(eta))`` for ``q = (1 - s) e_y + s / K``, written from the definition."""
    classes = eta.shape[-1]
    q = torch.full_like(eta, smoothing / classes)
    q[torch.arange(len(target)), target] += 1.0 - smoothing
    q_log_q = torch.where(q > 0, q * q.log(), torch.zeros_like(q))
    return (q_log_q - q * eta.log_softmax(-1)).sum(-1)


@given(classification_batch(dtype=torch.float64), st.floats(0.0, 0.99), st.floats(0.0, 1.0))
def test_label_smoothed_potential_is_the_kl_to_the_smoothed_target(batch, smoothing, gamma):
    """Value against the definition, closed-form derivative against reverse mode, in float64;
    ``V >= 0`` everywhere (a Lyapunov candidate), and the truncation applies on top."""
    eta, velocity, target = batch
    pot = CrossEntropyPotential(smoothing=smoothing, gamma=gamma)
    v, v_dot = pot.evaluate(eta, velocity, target)
    kl = _smoothed_kl_reference(eta, target, smoothing)
    torch.testing.assert_close(v, torch.clamp(kl - gamma, min=0.0), rtol=1e-12, atol=1e-12)
    assert bool((v >= 0).all())
    _, ref_dot = reference_v_and_vdot(lambda e: _smoothed_kl_reference(e, target, smoothing), eta, velocity)
    off_kink = (kl - gamma).abs() > 1e-9
    active = kl > gamma
    torch.testing.assert_close(v_dot[off_kink & active], ref_dot[off_kink & active], rtol=1e-10, atol=1e-12)
    assert bool((v_dot[~active] == 0).all())


def test_label_smoothed_potential_vanishes_at_finite_logits_and_reduces_to_ce_at_zero():
    smoothing, classes = 0.1, 5
    target = torch.tensor([2, 0])
    q = torch.full((2, classes), smoothing / classes, dtype=torch.float64)
    q[torch.arange(2), target] += 1.0 - smoothing
    minimum = CrossEntropyPotential(smoothing=smoothing).value(q.log() + 3.0, target)  # shift-invariant
    torch.testing.assert_close(minimum, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-14)
    eta = torch.randn(2, classes, dtype=torch.float64) * 4
    assert torch.equal(
        CrossEntropyPotential(smoothing=0.0).value(eta, target), CrossEntropyPotential().value(eta, target)
    )
    # Plain CE only approaches 0 as the margin grows without bound; the smoothed one rises again.
    far = torch.zeros(1, classes, dtype=torch.float64)
    far[0, 2] = 50.0
    assert float(CrossEntropyPotential(smoothing=smoothing).value(far, target[:1])) > 1.0


@pytest.mark.parametrize("smoothing", [1.0, -0.1, float("nan"), "0.1"])
def test_label_smoothing_outside_the_unit_interval_is_refused_by_name(smoothing):
    with pytest.raises((ValueError, TypeError), match="smoothing"):
        CrossEntropyPotential(smoothing=smoothing)


def test_label_smoothed_potential_stores_floats_and_accepts_any_integer_labels():
    # Found by review: a Fraction was accepted and then failed in the tensor arithmetic, and
    # value_and_derivative gathered with the raw labels (uint8 failed).
    from fractions import Fraction

    import numpy as np

    potential = CrossEntropyPotential(smoothing=Fraction(1, 20), gamma=np.float32(0.0))
    assert type(potential.smoothing) is float and type(potential.gamma) is float
    assert potential == CrossEntropyPotential(smoothing=0.05)
    z = torch.randn(5, 3, dtype=torch.float64)
    dz = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    for dtype in (torch.uint8, torch.int32, torch.int64):
        value, derivative = potential.value_and_derivative(z, labels.to(dtype), dz)
        reference = potential.value_and_derivative(z, labels, dz)
        torch.testing.assert_close(value, reference[0])
        torch.testing.assert_close(derivative, reference[1])


@given(classification_batch(dtype=torch.float64))
def test_default_ce_fast_path_equals_the_general_path(batch):
    """The default potential's short path (no truncation, no smoothing) against the general
    one, reached through a subclass that hides the shortcut: same V and dV/dt in float64."""
    eta, velocity, target = batch

    class General(CrossEntropyPotential):
        def value_and_derivative(self, output, target, output_velocity):
            return _general(self, output, target, output_velocity)

    def _general(pot, output, target, output_velocity):
        labels = target[:, None]
        shifted, log_z = pot._shifted(output)
        ce = log_z - shifted.gather(-1, labels)[:, 0]
        p_dot_dz = ((shifted - log_z[:, None]).exp() * output_velocity).sum(-1)
        dce = p_dot_dz - output_velocity.gather(-1, labels)[:, 0]
        return torch.relu(ce), dce * (ce > 0).to(ce.dtype)

    fast = CrossEntropyPotential().value_and_derivative(eta, target, velocity)
    general = General().value_and_derivative(eta, target, velocity)
    torch.testing.assert_close(fast[0], general[0], rtol=1e-12, atol=1e-12)
    positive = general[0] > 0  # where CE rounds to 0 the general path masks a ~1e-16 derivative
    torch.testing.assert_close(fast[1][positive], general[1][positive], rtol=1e-10, atol=1e-12)
    assert bool((fast[0] >= 0).all())


def test_default_ce_propagates_non_finite_logits():
    z = torch.tensor([[0.0, float("nan")], [float("inf"), 0.0], [1.0, 2.0]])
    v, v_dot = CrossEntropyPotential().value_and_derivative(z, torch.tensor([0, 1, 0]), torch.ones(3, 2))
    assert not bool(torch.isfinite(v[:2]).any()) and not bool(torch.isfinite(v_dot[:2]).any())
    assert bool(torch.isfinite(v[2])) and bool(torch.isfinite(v_dot[2]))
