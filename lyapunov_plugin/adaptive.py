"""Per-example explicit Runge-Kutta steps for Eq. (2): Dormand-Prince 5(4) and RK4.

Every quantity that a batched solver (torchdiffeq, torchdyn) keeps once per batch is kept
here once per *row*: the time ``t``, the step size ``h`` and the error norm. Each example
therefore takes exactly the steps it would take if it were integrated alone, so that a row
can leave the batch (:func:`lyapunov_plugin.anytime_predict`) without changing the path of
the others, and the number of evaluations each example needed is well defined.

Step-size control follows the usual dopri5 recipe (Hairer, Norsett & Wanner, *Solving
Ordinary Differential Equations I*, Section II.4, the one torchdiffeq and torchode use):
error ``h sum_i (b_i - b*_i) k_i``, scaled by ``atol + rtol max(|y0|, |y1|)``, RMS over the
state, accept when the ratio is at most 1, next step ``h min(10, max(0.2, 0.9 ratio^(-1/5)))``
(no shrinking after a step whose ratio is below 1); the first step from the two-evaluation estimate of
the same book (II.4, "Starting step size"), without its ``100 h0`` cap from a zero state unless
asked for (:func:`initial_step`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "DOPRI5_C",
    "DOPRI5_A",
    "DOPRI5_B",
    "DOPRI5_ERROR",
    "RowField",
    "rms_rows",
    "per_row",
    "initial_step",
    "dopri5_step",
    "control",
    "rk4_step",
    "next_step",
    "error_ratio",
    "SAFETY",
    "MAX_FACTOR",
    "MIN_FACTOR",
]

#: ``f(eta, t)`` on the rows still being integrated, ``t`` of shape ``(B,)``.
RowField = Callable[[Tensor, Tensor], Tensor]

# Dormand-Prince 5(4) tableau (Dormand & Prince 1980).
DOPRI5_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DOPRI5_A: tuple[tuple[float, ...], ...] = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
#: Fifth-order weights (equal to the last row of ``A``: the last stage is FSAL).
DOPRI5_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
# The embedded fourth-order weights torchdiffeq's dopri5 uses (Shampine's variant; Hairer's
# DOPRI5 uses 5179/57600, ...): with them (and torchdiffeq's first step) an example alone takes
# torchdiffeq's steps exactly.
_DOPRI5_B_STAR = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
#: ``b - b*``: the embedded error estimate's weights.
DOPRI5_ERROR = tuple(b - bs for b, bs in zip(DOPRI5_B, _DOPRI5_B_STAR, strict=True))

#: Step-size controller constants (the values of torchdiffeq's and torchode's dopri5).
SAFETY, MAX_FACTOR, MIN_FACTOR = 0.9, 10.0, 0.2
_ORDER = 5


def per_row(value: Tensor, like: Tensor) -> Tensor:
    """A ``(B,)`` tensor shaped ``(B, 1, ..., 1)`` to broadcast against states ``like``."""
    return value.reshape(value.shape[0], *([1] * (like.ndim - 1)))


def rms_rows(value: Tensor) -> Tensor:
    """Root mean square over everything but the batch dimension, ``(B,)``."""
    return value.flatten(1).pow(2).mean(-1).sqrt()


def initial_step(
    field: RowField,
    t0: Tensor,
    y0: Tensor,
    f0: Tensor,
    *,
    rtol: float,
    atol: float,
    order: int = 4,
    cap_from_zero: bool = True,
) -> Tensor:
    """First step size per row (Hairer-Norsett-Wanner II.4); costs one evaluation per row.

    The book's estimate: a trial step ``h0 = 0.01 |y0| / |f0|`` (in the tolerance's scale;
    ``1e-6`` when ``|y0|`` or ``|f0|`` is below ``1e-5``), the step ``h1`` at which the local
    error of order ``order + 1`` is about 1 % of the tolerance, from ``|f0|`` and the finite
    difference of ``f`` over ``h0``, and the first step ``min(100 h0, h1)``.

    Arguments:
        field: the vector field on these rows.
        t0, y0, f0: ``(B,)`` times, ``(B, *S)`` states and ``f(y0, t0)``.
        order: the order of the error estimate (4 for dopri5).
        cap_from_zero: keep the ``100 h0`` cap also where the state is zero (``|y0| < 1e-5``
            in the tolerance's scale) and moving (``|f0| >= 1e-5``): torchdiffeq's and
            torchode's behaviour. There ``h0`` is the arbitrary ``1e-6`` (the state has no
            scale of its own to relate to ``|f0|``), so the cap makes the first step
            ``1e-4`` whatever the dynamics; with the tenfold growth limit an example then
            needs four steps (24 evaluations) to reach ``t = 0.1``. ``False`` takes ``h1``
            there, the book's derivative-based estimate itself; the step stays error
            controlled (a first step that is too large is rejected and shrunk).

    Returns:
        ``(B,)`` step sizes.
    """
    scale = atol + y0.abs() * rtol
    d0, d1 = rms_rows(y0 / scale), rms_rows(f0 / scale)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = field(y0 + per_row(h0, y0) * f0, t0 + h0)
    d2 = rms_rows((f1 - f0) / scale) / h0
    largest = torch.maximum(d1, d2)
    h1 = torch.where(
        largest <= 1e-15,
        torch.clamp_min(h0 * 1e-3, 1e-6),
        (0.01 / largest.clamp_min(1e-300)) ** (1.0 / (order + 1)),
    )
    step = torch.minimum(100 * h0, h1)
    if cap_from_zero:
        return step
    return torch.where((d0 < 1e-5) & (d1 >= 1e-5), h1, step)


def _combine(weights: tuple[float, ...], stages: list[Tensor]) -> Tensor:
    """``sum_j w_j k_j`` over the nonzero weights, one kernel per term (``add`` with ``alpha``)."""
    terms = [(w, k) for w, k in zip(weights, stages, strict=False) if w != 0.0]
    total = terms[0][1] * terms[0][0]
    for w, k in terms[1:]:
        total = torch.add(total, k, alpha=w)
    return total


def dopri5_step(field: RowField, t: Tensor, y: Tensor, k1: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One Dormand-Prince 5(4) step of size ``h`` per row from ``(t, y)`` with ``k1 = f(y, t)``.

    Costs six evaluations per row (``k1`` is the previous step's last stage). Each tableau
    term is one fused ``add(..., alpha=a_ij)`` and each stage one ``addcmul`` (about half
    the kernels of a product and a sum per term). Only elementwise kernels are used, never a
    matrix product or a reduction over the stages, whose summation order may depend on the
    batch size: each row's result, and so its step sequence, does not depend on the other rows
    (as far as the vector field itself computes each row independently).

    Returns:
        ``(y_new, error, k7)``: the fifth-order state, the embedded error estimate and
        ``f(y_new, t + h)`` (the next step's ``k1``, and the velocity at ``y_new``).
    """
    hb = per_row(h, y)
    stages = [k1]
    for i in range(1, 7):
        stages.append(field(torch.addcmul(y, hb, _combine(DOPRI5_A[i], stages)), torch.add(t, h, alpha=DOPRI5_C[i])))
    y_new = torch.addcmul(y, hb, _combine(DOPRI5_B, stages))
    error = hb * _combine(DOPRI5_ERROR, stages)
    return y_new, error, stages[6]


def control(
    error: Tensor, y0: Tensor, y1: Tensor, h: Tensor, *, rtol: float, atol: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Accept/reject and the next step size per row, in a handful of fused ops.

    The same rule as :func:`error_ratio` and :func:`next_step` (accept when the RMS error
    ratio is at most 1; next step ``h min(10, max(0.2, 0.9 ratio^(-1/5)))``, no shrinking
    after a ratio below 1), computed on the squared ratio, so without a square root.

    Returns:
        ``(accepted, h_next, ratio_squared)``, each ``(B,)``.
    """
    scale = torch.maximum(y0.abs(), y1.abs()).mul_(rtol).add_(atol)
    squared = error.div(scale).square_().flatten(1).mean(-1)
    accepted = squared <= 1
    # 0.9 r^(-1/5) = 0.9 (r^2)^(-1/10); a zero error gives inf, clamped to the 10x growth.
    factor = squared.pow(-0.5 / _ORDER).mul_(SAFETY).clamp_(MIN_FACTOR, MAX_FACTOR)
    # After a step with ratio < 1 the factor is at least 1 (the float is 1 there, 0 elsewhere).
    factor = torch.maximum(factor, (squared < 1).to(factor.dtype))
    return accepted, h * factor, squared


def rk4_step(field: RowField, t: Tensor, y: Tensor, k1: Tensor, h: Tensor) -> Tensor:
    """One classical RK4 step per row from ``(t, y)`` with ``k1 = f(y, t)``: three evaluations."""
    hb = per_row(h, y)
    k2 = field(y + 0.5 * hb * k1, t + 0.5 * h)
    k3 = field(y + 0.5 * hb * k2, t + 0.5 * h)
    k4 = field(y + hb * k3, t + h)
    return y + hb * (k1 + 2 * k2 + 2 * k3 + k4) / 6


def error_ratio(error: Tensor, y0: Tensor, y1: Tensor, *, rtol: float, atol: float) -> Tensor:
    """RMS of the error over its tolerance ``atol + rtol max(|y0|, |y1|)`` per row, ``(B,)``."""
    return rms_rows(error / (atol + rtol * torch.maximum(y0.abs(), y1.abs())))


def next_step(h: Tensor, ratio: Tensor) -> Tensor:
    """The next step size from the error ratio of a step of size ``h`` (per row)."""
    factor = SAFETY * ratio.clamp_min(1e-300) ** (-1.0 / _ORDER)
    # An accepted step (ratio <= 1) never shrinks the next one; a zero error grows it fully.
    low = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, MIN_FACTOR))
    factor = torch.clamp(torch.maximum(factor, low), max=MAX_FACTOR)
    return h * torch.where(ratio == 0, torch.full_like(ratio, MAX_FACTOR), factor)
