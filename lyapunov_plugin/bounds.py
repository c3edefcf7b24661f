"""Affine-arithmetic (zonotope) bound propagation for :func:`~lyapunov_plugin.certify`.

Every quantity of the certified computation is an *affine form* over a set of noise
symbols, ``v = c + sum_k g_k e_k``: the first symbols describe the input ball
(``x = x0 + eps * e_input`` with ``e_input`` in the unit ball of the threat norm), the
others are the linearisation errors of the activations, each in ``[-1, 1]``. Linear
layers, additions and concatenations are exact on affine forms; an activation ``s(z)``
over the interval ``[l, u]`` that ``z`` can reach becomes ``lambda z + mu + beta e_new``
with a fresh symbol ``e_new`` (DeepZ, Singh et al. 2018), where ``beta`` bounds
``|s(z) - lambda z - mu|`` on ``[l, u]`` exactly.

Why affine forms and not intervals: the stages of a Runge-Kutta step share ``eta``
(``k2 = f(eta + h/2 k1)``, ``eta' = eta + h/6 (k1 + 2 k2 + 2 k3 + k4)``), so the
coupling of every stage to ``eta`` and to the input must be tracked for the bound to be
able to contract; interval arithmetic only ever adds radii.

The module imports torch only. It is internal: :mod:`lyapunov_plugin.certify` is the
public entry point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SymbolSpace", "AffineForm", "relax", "ACTIVATIONS"]

ACTIVATIONS = ("tanh", "sigmoid", "relu", "softplus")


@dataclass
class SymbolSpace:
    """The noise symbols shared by every affine form of one certification.

    Attributes:
        num_input: the leading ``num_input`` symbols describe the input ball and lie in
            the unit ball of ``norm``; every later symbol lies in ``[-1, 1]``.
        norm: ``"linf"`` or ``"l2"``: the norm of the input symbols.
        total: symbols allocated so far (forms with fewer are zero-padded on the right).
    """

    num_input: int
    norm: str
    total: int

    def allocate(self, count: int) -> int:
        """Reserve ``count`` new symbols in ``[-1, 1]``; returns the index of the first."""
        first = self.total
        self.total += count
        return first


@dataclass
class AffineForm:
    """``center + sum_k gens[:, k] * e_k`` for a batch: ``center`` is ``(B, *S)``, ``gens``
    is ``(B, K, *S)`` with ``K <= space.total`` (missing trailing symbols are zero)."""

    center: Tensor
    gens: Tensor
    space: SymbolSpace

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.center.shape[1:])

    @classmethod
    def constant(cls, value: Tensor, space: SymbolSpace) -> AffineForm:
        """A form without noise: ``value`` exactly."""
        return cls(value, value.new_zeros((value.shape[0], 0, *value.shape[1:])), space)

    def padded(self, count: int) -> Tensor:
        """``gens`` with zero columns appended up to ``count`` symbols."""
        k = self.gens.shape[1]
        if k == count:
            return self.gens
        pad = self.gens.new_zeros((self.gens.shape[0], count - k, *self.gens.shape[2:]))
        return torch.cat([self.gens, pad], dim=1)

    # -- bounds -------------------------------------------------------------------------

    def radius(self) -> Tensor:
        """The largest ``|v - center|`` over the symbol set, per element ``(B, *S)``: the
        dual norm of the input generators plus the l1 norm of the error generators."""
        m = min(self.space.num_input, self.gens.shape[1])
        inputs, errors = self.gens[:, :m], self.gens[:, m:]
        if self.space.norm == "l2":
            head = inputs.norm(dim=1)
        else:
            head = inputs.abs().sum(dim=1)
        return head + errors.abs().sum(dim=1)

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Elementwise lower and upper bounds ``(B, *S)``; exact for an affine form."""
        r = self.radius()
        return self.center - r, self.center + r

    # -- exact (affine) operations -----------------------------------------------------

    def __add__(self, other: AffineForm) -> AffineForm:
        k = max(self.gens.shape[1], other.gens.shape[1])
        return AffineForm(self.center + other.center, self.padded(k) + other.padded(k), self.space)

    def __sub__(self, other: AffineForm) -> AffineForm:
        return self + other.scale(-1.0)

    def scale(self, factor: float) -> AffineForm:
        return AffineForm(self.center * factor, self.gens * factor, self.space)

    def elementwise_affine(self, weight: Tensor, bias: Optional[Tensor]) -> AffineForm:
        """``weight * v + bias`` with ``weight``/``bias`` broadcastable to ``(B, *S)``."""
        w_gen = _for_gens(weight, self.center.ndim)
        center = self.center * weight
        if bias is not None:
            center = center + bias
        return AffineForm(center, self.gens * w_gen, self.space)

    def linear(self, weight: Tensor, bias: Optional[Tensor]) -> AffineForm:
        return AffineForm(F.linear(self.center, weight, bias), F.linear(self.gens, weight), self.space)

    def conv2d(self, module: nn.Conv2d, weight: Tensor, bias: Optional[Tensor]) -> AffineForm:
        b, k = self.gens.shape[:2]
        kwargs = {
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
        }
        center = F.conv2d(self.center, weight, bias, **kwargs)  # type: ignore[arg-type]
        if k == 0:
            gens = center.new_zeros((b, 0, *center.shape[1:]))
        else:
            flat = F.conv2d(self.gens.reshape(b * k, *self.gens.shape[2:]), weight, None, **kwargs)  # type: ignore[arg-type]
            gens = flat.reshape(b, k, *flat.shape[1:])
        return AffineForm(center, gens, self.space)

    def flatten(self, start_dim: int, end_dim: int) -> AffineForm:
        """``torch.flatten`` of the feature dimensions (``start_dim >= 1`` of the batch layout)."""
        gen_end = end_dim + 1 if end_dim >= 0 else end_dim
        return AffineForm(
            self.center.flatten(start_dim, end_dim), self.gens.flatten(start_dim + 1, gen_end), self.space
        )

    def select(self, index: Tensor) -> AffineForm:
        """Rows ``index`` of the batch."""
        return AffineForm(self.center[index], self.gens[index], self.space)

    @staticmethod
    def cat(forms: Sequence[AffineForm], dim: int) -> AffineForm:
        """Concatenation along feature dimension ``dim`` (``dim >= 1`` of the batch layout)."""
        k = max(f.gens.shape[1] for f in forms)
        center = torch.cat([f.center for f in forms], dim=dim)
        gens = torch.cat([f.padded(k) for f in forms], dim=dim + 1)
        return AffineForm(center, gens, forms[0].space)

    # -- relaxations -------------------------------------------------------------------

    def activation(self, kind: str) -> AffineForm:
        """``s(v)`` elementwise for ``s`` in :data:`ACTIVATIONS`: the DeepZ relaxation with
        one fresh symbol per element."""
        lower, upper = self.bounds()
        slope, intercept, error = relax(kind, lower, upper)
        n = int(math.prod(self.feature_shape))
        self.space.allocate(n)
        b = self.center.shape[0]
        fresh = torch.diag_embed(error.reshape(b, n)).reshape(b, n, *self.feature_shape)
        gens = torch.cat([self.padded(self.space.total - n) * slope.unsqueeze(1), fresh], dim=1)
        return AffineForm(self.center * slope + intercept, gens, self.space)

    def reduce_errors(self, keep: int) -> AffineForm:
        """Keep symbols ``[0, keep)`` and enclose the rest by fresh axis-aligned symbols
        (one per element), so the number of symbols stays bounded over many solver steps.

        Sound: ``|sum_k g_k e_k| <= sum_k |g_k|`` for ``e_k`` in ``[-1, 1]``; the symbols
        ``>= keep`` are dropped from the space, so no other live form may use them.
        """
        if self.gens.shape[1] <= keep:
            return self
        b = self.center.shape[0]
        n = int(math.prod(self.feature_shape))
        box = self.gens[:, keep:].abs().sum(dim=1).reshape(b, n)
        fresh = torch.diag_embed(box).reshape(b, n, *self.feature_shape)
        self.space.total = keep + n
        return AffineForm(self.center, torch.cat([self.gens[:, :keep], fresh], dim=1), self.space)


def _for_gens(param: Tensor, center_ndim: int) -> Tensor:
    """A parameter broadcast against ``(B, *S)`` reshaped to broadcast against ``(B, K, *S)``."""
    if param.ndim == center_ndim:
        return param.unsqueeze(1)
    return param


def relax(kind: str, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A sound affine enclosure of ``s(z)`` for ``z`` in ``[lower, upper]`` (elementwise):
    ``|s(z) - slope * z - intercept| <= error``.

    - ``tanh``, ``sigmoid``: ``s'`` is largest at one point and falls off on both sides,
      so on ``[l, u]`` its minimum is at an end; with ``slope = min(s'(l), s'(u))`` the
      residual ``s(z) - slope * z`` is nondecreasing and its range is given by the ends.
    - ``relu``, ``softplus``: convex; with the chord slope the residual is convex, its
      maximum is at the ends and its minimum where ``s'(z) = slope``.

    A few units in the last place are added to ``error`` so that rounding in this
    computation cannot make the enclosure too tight.
    """
    width = upper - lower
    tiny = width <= 1e-9 * (1.0 + lower.abs())
    if kind in ("tanh", "sigmoid"):
        fn: Callable[[Tensor], Tensor] = torch.tanh if kind == "tanh" else torch.sigmoid

        def derivative(z: Tensor) -> Tensor:
            s = fn(z)
            return 1.0 - s * s if kind == "tanh" else s * (1.0 - s)

        slope = torch.minimum(derivative(lower), derivative(upper))
        at_lower = fn(lower) - slope * lower
        at_upper = fn(upper) - slope * upper
        low, high = at_lower, torch.maximum(at_upper, at_lower)
    elif kind in ("relu", "softplus"):
        fn = torch.relu if kind == "relu" else F.softplus
        f_l, f_u = fn(lower), fn(upper)
        chord = (f_u - f_l) / torch.where(tiny, torch.ones_like(width), width)
        if kind == "relu":
            slope = torch.where(tiny, (lower > 0).to(lower.dtype), chord).clamp(0.0, 1.0)
            touch = torch.zeros_like(lower)
        else:
            slope = torch.where(tiny, torch.sigmoid((lower + upper) / 2), chord)
            p = slope.clamp(1e-12, 1.0 - 1e-12)
            touch = torch.log(p) - torch.log1p(-p)  # where softplus' = sigmoid = slope
        touch = torch.minimum(torch.maximum(touch, lower), upper)
        low = fn(touch) - slope * touch
        high = torch.maximum(f_l - slope * lower, f_u - slope * upper)
        if kind == "softplus":
            # torch's softplus returns z itself above its threshold (20), within exp(-20).
            high = high + math.exp(-20.0)
            low = low - math.exp(-20.0)
    else:
        raise ValueError(f"kind must be one of {ACTIVATIONS}, got {kind!r}")
    ulp = 8.0 * torch.finfo(lower.dtype).eps
    scale = 1.0 + low.abs() + high.abs() + slope.abs() * (lower.abs() + upper.abs())
    intercept = (low + high) / 2
    error = ((high - low) / 2).clamp_min(0.0) + ulp * scale
    return slope, intercept, error
