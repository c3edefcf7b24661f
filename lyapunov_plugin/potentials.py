"""Potential functions ``V_y(eta) = L(psi(eta), y)`` (paper Eq. 11, Section 3.1).

A :class:`Potential` turns a supervised loss ``L`` into a Lyapunov candidate. The loss
of Eq. (12) needs two numbers per state: ``V_y(eta)`` and its derivative along the
dynamics, ``dV_y/deta . f(eta, x, t)``. A subclass only has to define
:meth:`Potential.value`; the derivative then comes from forward-mode automatic
differentiation (one pass, no double backward). Subclasses may override
:meth:`Potential.value_and_derivative` with a closed form, as the built-ins do.

The readout ``psi`` is composed in :meth:`Potential.evaluate`: the velocity ``f`` is
pushed through ``psi`` by a Jacobian-vector product (exact and free for an identity or
``nn.Linear`` readout), so a potential is written in terms of the readout's output only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Optional, cast

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn

from ._typing import Output, PerSample, State
from ._validation import (
    as_labels,
    check_batch,
    check_bool,
    check_class_labels,
    check_finite,
    check_like,
    check_non_negative,
    check_readout,
    check_shape,
    check_tensor,
)

Readout = Optional[Callable[[Tensor], Tensor]]

__all__ = [
    "Potential",
    "CrossEntropyPotential",
    "MarginPotential",
    "MSEPotential",
    "readout_jvp",
    "readout_of",
]


def readout_jvp(readout: Readout, eta: State, velocity: State) -> tuple[Output, Output]:
    """Push a state velocity through the readout: ``(psi(eta), J_psi(eta) f)``.

    Exact closed forms for ``None``/``nn.Identity`` (the paper's identity readout) and
    ``nn.Linear``; forward-mode autodiff for anything else.

    Arguments:
        readout: ``psi``, a callable on states, or ``None`` for the identity.
        eta: states, ``(B, *S)``.
        velocity: ``f(eta, x, t)``, same shape as ``eta``.

    Returns:
        ``(output, output_velocity)``, both ``(B, m)``.
    """
    check_readout("readout", readout)
    check_tensor("eta", eta, min_ndim=1, floating=True)
    check_tensor("velocity", velocity, floating=True)
    check_shape("velocity", velocity, eta.shape, "the shape of eta")
    return _readout_jvp(readout, eta, velocity)


def _readout_jvp(readout: Readout, eta: State, velocity: State) -> tuple[Output, Output]:
    """:func:`readout_jvp` on checked arguments (the losses' per-step path)."""
    readout = readout_of(readout)
    if readout is None or isinstance(readout, nn.Identity):
        return eta, velocity
    if isinstance(readout, nn.Linear):
        return readout(eta), F.linear(velocity, readout.weight)
    return _forward_jvp(readout, eta, velocity)


def readout_of(readout: Readout) -> Readout:
    """The readout with the least indirection, so that identity and linear readouts get
    their closed forms: a model's bound ``readout`` method becomes its ``readout_module``
    (the protocol's contract: when a model has one, ``readout(eta) == readout_module(eta)``),
    an ``nn.Sequential`` of one layer is unwrapped and an empty one is the identity."""
    owner = getattr(readout, "__self__", None)
    module = getattr(owner, "readout_module", None)
    if isinstance(module, nn.Module) and getattr(readout, "__name__", "") == "readout":
        readout = module
    if isinstance(readout, nn.Sequential):
        if len(readout) == 0:
            return None
        if len(readout) == 1:
            return readout_of(readout[0])
    return readout


def _forward_jvp(func: Callable[[Tensor], Tensor], primal: Tensor, tangent: Tensor) -> tuple[Tensor, Tensor]:
    """``(func(primal), J_func(primal) tangent)`` by forward-mode AD.

    ``torch.autograd.forward_ad`` rather than ``torch.func.jvp``: both are forward mode and
    both keep the reverse-mode graph to the parameters, but dual tensors also work through
    modules that update buffers in place (``BatchNorm`` in training mode), which
    ``torch.func`` transforms refuse.
    """
    with fwAD.dual_level():
        out = func(fwAD.make_dual(primal, tangent))
        unpacked = fwAD.unpack_dual(out)
        value, derivative = unpacked.primal, unpacked.tangent
    if derivative is None:  # the output does not depend on the input
        derivative = torch.zeros_like(value)
    return value, derivative


class Potential(ABC):
    """Abstract potential ``V_y(eta) = L(psi(eta), y)`` of Eq. (11).

    Subclass it for a new supervised loss by defining :meth:`value` on the readout's
    output; everything else is inherited::

        class FocalPotential(Potential):
            def value(self, output, target):
                log_p = output.log_softmax(-1).gather(-1, target[:, None])[:, 0]
                return -((1 - log_p.exp()) ** 2) * log_p

    Subclasses whose targets need checking (class labels in range, shapes) override
    :meth:`validate`.

    A subclass may also set :attr:`path_steps`: the rollout steps the *default* path-integral
    objective uses with it (``None``: the objective's own default, 4), for a loss whose
    Lyapunov condition asks for a field too stiff for four RK4 steps (see
    :class:`MSEPotential`).
    """

    #: Rollout steps of the default path integral with this potential (``None``: its own, 4).
    #: Read by :meth:`~lyapunov_plugin.Recipe.resolve` only when the objective is left to it.
    path_steps: ClassVar[Optional[int]] = None

    @abstractmethod
    def value(self, output: Output, target: Tensor) -> PerSample:
        """The loss ``V_y`` per example.

        Arguments:
            output: readout output ``psi(eta)``, ``(B, m)``.
            target: the supervision ``y`` for each example (labels ``(B,)`` or values).

        Returns:
            ``(B,)`` non-negative values.
        """

    def _value_unchecked(self, output: Output, target: Tensor) -> PerSample:
        """:meth:`value` for a caller that has already validated ``target`` (the losses
        validate once per call, then evaluate ``V`` at many states). Built-ins whose
        :meth:`value` validates override this with the bare computation."""
        return self.value(output, target)

    def value_and_derivative(
        self, output: Output, target: Tensor, output_velocity: Output
    ) -> tuple[PerSample, PerSample]:
        """``V_y`` and its directional derivative ``dV_y/doutput . output_velocity``.

        The default uses forward-mode autodiff on :meth:`value` (``torch.func.jvp``, whose
        result keeps the reverse-mode graph to the readout's parameters and the dynamics);
        override with a closed form where one exists.

        Returns:
            ``(V, V_dot)``, each ``(B,)``.
        """
        # torch.func.jvp rather than the dual tensors of _forward_jvp: PyTorch's forward-mode
        # rules for softmax / log_softmax / logsumexp modify exp() in place, which breaks the
        # backward pass of a dual-tensor JVP whenever the output requires grad (a trainable
        # readout, states that carry gradient); the functional transform is not affected.
        # Without has_aux, jvp returns the pair (value, derivative).
        value, derivative = cast(
            tuple[Tensor, Tensor],
            torch.func.jvp(lambda out: self._value_unchecked(out, target), (output,), (output_velocity,)),
        )
        return value, derivative

    def validate(self, output: Output, target: Tensor) -> None:
        """Check ``target`` against ``output``; raise ``ValueError``/``TypeError``.

        The default only requires a tensor with the output's batch size.
        """
        check_tensor("output", output, min_ndim=1)
        check_tensor("target", target, min_ndim=1)
        check_batch("target", target, "the readout output", output.shape[0])

    def evaluate(
        self,
        eta: State,
        velocity: State,
        target: Tensor,
        *,
        readout: Readout = None,
        validate: bool = True,
    ) -> tuple[PerSample, PerSample]:
        """``V_y(eta)`` and ``dV_y/deta . f`` with the readout composed in (Eq. 11-12).

        Arguments:
            eta: states ``(B, *S)``.
            velocity: ``f(eta, x, t)`` at those states, same shape, dtype and device.
            target: supervision per example.
            readout: ``psi``; ``None`` means the identity (paper Section 5: hidden
                dimension = number of classes).
            validate: check shapes, dtypes, devices and targets (leave on unless the
                caller already did). Values are not checked for NaN/Inf here: a
                non-finite state or velocity gives a non-finite ``V``/``V_dot``, which
                training loops handle by policy.

        Returns:
            ``(V, V_dot)``, each ``(B,)``.
        """
        check_readout("readout", readout)
        check_bool("validate", validate)
        if validate:
            check_tensor("eta", eta, min_ndim=1, floating=True)
            check_tensor("velocity", velocity, floating=True)
            check_shape("velocity", velocity, eta.shape, "the shape of eta")
            check_like("velocity", velocity, "eta", eta)
        output, output_velocity = _readout_jvp(readout, eta, velocity)
        if validate:
            self.validate(output, target)
        v, v_dot = self.value_and_derivative(output, as_labels(target), output_velocity)
        return v, v_dot


def _check_logits(output: Tensor) -> None:
    check_tensor("output", output, min_ndim=1, floating=True)
    if output.ndim != 2 or output.shape[1] < 2:
        raise ValueError(
            f"the readout output must be logits of shape (batch, num_classes >= 2), got {tuple(output.shape)}"
        )


@dataclass(frozen=True, kw_only=True)
class CrossEntropyPotential(Potential):
    """Truncated cross entropy ``max(0, CE(psi(eta), y) - gamma)`` (Section 3.1, Lemma 1).

    The truncation lets ``V`` reach 0 at a finite state, which the stability analysis
    needs; the paper sets ``gamma`` to machine precision and ignores it in practice, so
    the default ``gamma=0`` is plain cross entropy.

    With ``smoothing = s > 0`` the cross entropy is taken against the label-smoothed target
    ``q = (1 - s) e_y + s / K`` and shifted by its entropy, ``V = KL(q || softmax(z))``: still
    ``>= 0`` and 0 exactly where ``softmax(z) = q``, i.e. at *finite* logits. Plain cross
    entropy is 0 only at infinite margin, so Eq. (10) at rate ``kappa`` asks the margin to
    grow by about ``kappa`` per unit time forever (the state never settles); with smoothing
    the condition asks for convergence to a fixed point, near which ``V`` is quadratic. ``s``
    must lie in ``[0, 1)``; ``s = 0`` is the plain cross entropy.

    The derivative is in closed form: with ``p = softmax(z)``,
    ``dV/dz . dz = (p - q) . dz`` where ``V > gamma``, and 0 where truncated.

    Arguments:
        gamma: truncation level, ``>= 0``.
        smoothing: label smoothing ``s`` of the target, ``0 <= s < 1``.
    """

    gamma: float = 0.0
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        gamma = check_non_negative("gamma", self.gamma)
        smoothing = check_non_negative("smoothing", self.smoothing)
        if smoothing >= 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {self.smoothing!r}")
        # Store the checked Python floats (a Fraction or a NumPy scalar would reach the tensor
        # arithmetic as is).
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "smoothing", smoothing)

    def _smoothed(self, shifted: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(sum_j q_j s_j, sum_j q_j log q_j)`` for the smoothed target ``q`` of ``target``."""
        labels = as_labels(target)[:, None]
        true = shifted.gather(-1, labels)[:, 0]
        if self.smoothing == 0.0:
            return true, torch.zeros_like(true)
        s, k = self.smoothing, shifted.shape[-1]
        off, on = s / k, 1.0 - s + s / k
        neg_entropy = _x_log_x(on) + (k - 1) * _x_log_x(off)
        weighted = (1.0 - s) * true + off * shifted.sum(-1)
        return weighted, torch.full_like(true, neg_entropy)

    def validate(self, output: Output, target: Tensor) -> None:
        _check_logits(output)
        check_class_labels("target", target, output.shape[0], output.shape[1])

    def value(self, output: Output, target: Tensor) -> PerSample:
        self.validate(output, target)
        return self._value_unchecked(output, target)

    # CE and p = softmax(z) from the max-shifted logits s = z - max(z) (the shift detached:
    # CE does not depend on it, so the gradient is exact): log Z = log sum exp(s),
    # CE = log Z - s_y, p = exp(s - log Z). As accurate as F.log_softmax (every term is
    # relative to the largest logit, so confident rows keep their small CE), but on the CPU
    # PyTorch's log_softmax kernel over a short class dimension costs several times these
    # elementwise ops, and it was the largest part of the Monte Carlo loss's overhead over
    # the bare vector field (benchmarks.timing, part 2).
    @staticmethod
    def _shifted(output: Output) -> tuple[Tensor, Tensor]:
        """``(s, log Z)``: the logits minus their (detached) row maximum and ``log sum exp(s)``."""
        shifted = output - output.detach().amax(-1, keepdim=True)
        return shifted, shifted.exp().sum(-1).log()

    def _value_unchecked(self, output: Output, target: Tensor) -> PerSample:
        shifted, log_z = self._shifted(output)
        weighted, neg_entropy = self._smoothed(shifted, target)
        ce = log_z - weighted + neg_entropy
        return torch.relu(ce - self.gamma)

    def value_and_derivative(
        self, output: Output, target: Tensor, output_velocity: Output
    ) -> tuple[PerSample, PerSample]:
        labels = as_labels(target)[:, None]
        if self.gamma == 0.0 and self.smoothing == 0.0:
            return self._plain_value_and_derivative(output, labels, output_velocity)
        shifted, log_z = self._shifted(output)
        weighted, neg_entropy = self._smoothed(shifted, target)
        ce = log_z - weighted + neg_entropy
        p_dot_dz = ((shifted - log_z[:, None]).exp() * output_velocity).sum(-1)
        q_dot_dz = output_velocity.gather(-1, labels)[:, 0]
        if self.smoothing:
            q_dot_dz = (1.0 - self.smoothing) * q_dot_dz + self.smoothing / output.shape[-1] * output_velocity.sum(-1)
        dce = p_dot_dz - q_dot_dz
        # relu and a multiplicative mask (not torch.where) so that NaN/Inf states give a
        # non-finite V and dV/dt, which training loops catch, instead of a silent 0.
        active = (ce > self.gamma).to(ce.dtype)
        return torch.relu(ce - self.gamma), dce * active

    @staticmethod
    def _plain_value_and_derivative(
        output: Output, labels: Tensor, output_velocity: Output
    ) -> tuple[PerSample, PerSample]:
        """The default potential (no truncation, no smoothing) in fewer tensor ops, the
        Monte Carlo loss's inner loop: ``CE = log Z - s_y`` and ``dCE/dt = (e . dz) / Z - dz_y``
        with ``e = exp(s)``, ``Z = sum e``. No hinge is needed: ``Z >= 1`` and ``s_y <= 0``, so
        ``CE >= 0`` in floating point too, and NaN/Inf logits still give NaN/Inf. Unlike the
        truncated path (``gamma > 0``, where ``dV/dt`` is 0 wherever ``V`` is), the derivative
        is not masked where CE rounds to 0: the true CE there is tiny but positive, and the
        derivative returned is its true one (small unless the velocity is huge)."""
        shifted = output - output.detach().amax(-1, keepdim=True)
        e = shifted.exp()
        z = e.sum(-1)
        ce = z.log() - shifted.gather(-1, labels)[:, 0]
        dce = (e * output_velocity).sum(-1) / z - output_velocity.gather(-1, labels)[:, 0]
        return ce, dce


def _x_log_x(value: float) -> float:
    """``value log value`` with its limit 0 at 0 (a tiny smoothing can underflow to 0)."""
    return value * math.log(value) if value > 0.0 else 0.0


@dataclass(frozen=True, kw_only=True)
class MarginPotential(Potential):
    """Probability-margin potential ``1 + max_{j != y} p_j - p_y`` with ``p = softmax(psi(eta))``,
    an alternative supervised loss ``L`` for Eq. (11).

    Bounded in ``[0, 2]`` and below 1 exactly when ``y`` is the predicted class, so a
    decrease of ``V`` below 1 certifies a correct prediction. Defines only
    :meth:`value`; the derivative along ``f`` comes from forward-mode autodiff.
    """

    def validate(self, output: Output, target: Tensor) -> None:
        _check_logits(output)
        check_class_labels("target", target, output.shape[0], output.shape[1])

    def value(self, output: Output, target: Tensor) -> PerSample:
        self.validate(output, target)
        return self._value_unchecked(output, target)

    def _value_unchecked(self, output: Output, target: Tensor) -> PerSample:
        target = as_labels(target)
        p = output.softmax(dim=-1)
        p_true = p.gather(-1, target[:, None])[:, 0]
        others = p.scatter(-1, target[:, None], float("-inf"))
        return 1.0 + others.max(dim=-1).values - p_true


@dataclass(frozen=True, kw_only=True)
class MSEPotential(Potential):
    """Squared error ``mean_i (psi(eta)_i - y_i)^2`` per example, for regression (Eq. 11).

    Closed-form derivative ``(2 / m) (psi(eta) - y) . dpsi``.

    The default recipe's path integral rolls out with ``path_steps = 8`` RK4 steps with this
    potential, not 4. Eq. (10) with ``V = |r|^2`` asks the residual ``r`` itself to shrink
    at rate ``kappa / 2`` *at every state*, so the field has to be contracting, with a speed
    that grows with the residual; on the suite's regression problems the fields it learned
    were stiff enough that the four-step rollout left the flow (``make_friedman1`` with
    torchdyn's ``Augmenter`` model: training MSE 1.83 along the RK4-4 grid it was trained on,
    0.43 for the same ODE solved accurately; ``python -m benchmarks.regression_rollout``), and
    the condition was met at states inference never visits. With eight steps the two agree
    (0.063 / 0.063), 16 steps give the same suite numbers, and the cells whose rollout had
    left the flow went from 1.5-7.2x to 0.96-1.6x standard training's test MSE
    (docs/defaults.md, "Regression and the bare pattern in the suite").
    Cross entropy needs no such field (its gradient vanishes as the margin grows, so a
    bounded speed meets Eq. 10) and keeps four.
    """

    path_steps: ClassVar[Optional[int]] = 8

    def validate(self, output: Output, target: Tensor) -> None:
        check_tensor("output", output, min_ndim=1, floating=True)
        check_tensor("target", target, min_ndim=1, floating=True)
        check_shape("target", target, output.shape, "the shape of the readout output")
        check_like("target", target, "the readout output", output)
        check_finite("target", target)

    def value(self, output: Output, target: Tensor) -> PerSample:
        # Validated: a target of the wrong width would broadcast into a (B, B) residual.
        self.validate(output, target)
        return self._value_unchecked(output, target)

    def _value_unchecked(self, output: Output, target: Tensor) -> PerSample:
        return (output - target).pow(2).flatten(1).mean(-1)

    def value_and_derivative(
        self, output: Output, target: Tensor, output_velocity: Output
    ) -> tuple[PerSample, PerSample]:
        residual = (output - target).flatten(1)
        v = residual.pow(2).mean(-1)
        v_dot = 2.0 * (residual * output_velocity.flatten(1)).mean(-1)
        return v, v_dot
