"""The certified stop with a bound local to the current state (fixed-step RK4, the paper's model).

:mod:`lyapunov_plugin.speed` bounds how fast a logit gap can move *anywhere*: the field's
fastest direction over the whole activation box. Where the field is smooth, the gap moves
near its current rate for a while, and a bound that starts from that rate proves a stop
much earlier. For a field built of ``nn.Linear`` and monotone elementwise layers
(``ODEModel`` with :class:`~lyapunov_plugin.blocks.MLPDynamics`: ``f = MLP([eta, x, t])``)
and the fixed-step RK4 solver, at the current state ``eta`` and time ``t`` with
``R`` steps of size ``h`` left:

1. **Displacement.** Every later stage state ``Y`` at elapsed time ``tau`` satisfies
   ``|Y - eta| <= D(tau)`` elementwise. RK4's stage and step weights are non-negative and
   sum to the elapsed time, so ``D`` grows by at most ``dtau`` times a bound on the speed of
   the stages in that interval: ``min(S, |f(eta)| + |A| dev)``, with ``S`` the global speed
   box (``LogitRateBound.speed``), ``A`` the last layer and ``dev`` the deviation below,
   evaluated at the displacement ``tau_end S`` that the speed box alone allows by the
   interval's end (a sound over-estimate on the interval).
2. **Deviation.** From ``|Y - eta| <= D`` and ``|t' - t| <= tau`` (the context is fixed),
   the input of the last layer moves by at most ``dev``: ``|W| d`` through each linear
   layer, and through a monotone layer with current input ``v`` exactly
   ``max(phi(v + d) - phi(v), phi(v) - phi(v - d))``. A saturated unit barely moves.
3. **The gap.** Each stage's gap rate is at least its current rate
   ``(W_c - W_j) f(eta)`` minus ``|(W_c - W_j) A| dev``, and never below the global bound
   ``-r_cj``; an RK4 step moves the gap by ``h`` times a convex combination of its stages'
   rates. Summed over a doubling grid of intervals (1, 2, 4, ... steps; within an interval
   the bound at its end holds, as it only grows with ``tau``), this gives a lower bound on
   ``z_c - z_j`` at ``t_end``.

A stop where that lower bound exceeds the rounding slack of
:func:`~lyapunov_plugin.speed.certified_stops` (plus 64 ulp of the field's largest
contribution per step) is proven in exact arithmetic, like the global rule's; ``anytime_predict``
stops at the first of the two. Each check costs the arithmetic of about two evaluations of
the field's layers per interval (``K = ceil(log2(R + 1))`` intervals; done as two passes on
``K`` stacked copies of the batch), not counted as NFE (the benchmark reports the wall clock).
Step 1 takes every interval's speed bound from the displacement the global speed box
allows at its end, so that all intervals are evaluated at once; the displacement they add up
to (step 2's input) is then the sharper cumulative sum.

It does not apply to dopri5: its stage weights have both signs and reach ~25 in magnitude,
so a bound over every step sequence the controller might choose would be the global one
again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ._structure import layer_type
from .blocks import MLPDynamics
from .model import ODEModel
from .speed import (
    LogitRateBound,
    _all_others,
    _apply_monotone,
    _is_monotone,
    _leaves,
    _linear,
    _readout_matrix,
    _slack,
    global_hooks,
)

__all__ = ["LocalRateBound", "local_rate_bound", "gap_lower_bound", "local_certified_stops", "doubling_intervals"]

#: The rounding allowance for the field's own evaluation, in ulps of its largest gap
#: contribution, per unit of remaining time.
_FIELD_ULPS = 64.0

_Layer = Union[tuple[Tensor, Tensor], nn.Module]


@dataclass(frozen=True)
class LocalRateBound:
    """The field's layers (float64) and the matrices the local certified stop needs.

    Attributes:
        layers: per layer of ``MLPDynamics.net``, ``(weight, bias)`` for ``nn.Linear`` or the
            monotone module itself; the first and the last are linear.
        state_dim: ``n``, the state's width (the first ``n`` input columns).
        gap_weights: ``(m, m, H)``, ``|(W_c - W_j) A|`` (``W`` the readout, ``A`` the last layer).
        readout: ``(m, n)``, the readout's matrix.
        speed: ``(n,)``, ``sup |f_k|`` over the activation box.
        magnitudes: ``|weight|`` of every linear layer (``None`` for the others); the first
            layer's is split into its state columns and its time column (``time_weight``,
            ``None`` when the field has no time input).
    """

    layers: tuple[_Layer, ...]
    state_dim: int
    gap_weights: Tensor
    readout: Tensor
    speed: Tensor
    magnitudes: tuple[Optional[Tensor], ...]
    time_weight: Optional[Tensor]

    def to(self, device: Any) -> LocalRateBound:
        """A copy on ``device`` (float64 throughout: the bound is computed in double precision)."""

        def move(layer: _Layer) -> _Layer:
            if isinstance(layer, tuple):
                return (layer[0].to(device), layer[1].to(device))
            return layer

        return replace(
            self,
            layers=tuple(move(layer) for layer in self.layers),
            gap_weights=self.gap_weights.to(device),
            readout=self.readout.to(device),
            speed=self.speed.to(device),
            magnitudes=tuple(None if m is None else m.to(device) for m in self.magnitudes),
            time_weight=None if self.time_weight is None else self.time_weight.to(device),
        )


def local_rate_bound(model: Any, bound: LogitRateBound) -> Optional[LocalRateBound]:
    """The :class:`LocalRateBound` of an ``ODEModel`` with ``MLPDynamics`` whose layers are all
    ``nn.Linear`` or monotone elementwise (without forward hooks), ``None`` for any other
    model (the global bound ``bound`` then stands alone)."""
    if type(model) is not ODEModel or type(model.dynamics) is not MLPDynamics or bound.speed is None:
        return None
    # Every module of the field, containers included (a pre-hook on MLPDynamics or on its
    # nn.Sequential rewrites the input without touching a layer; review finding), and no
    # global hooks.
    if global_hooks() or any(m._forward_hooks or m._forward_pre_hooks for m in model.dynamics.modules()):
        return None
    layers: list[_Layer] = []
    for module in _leaves(model.dynamics.net):
        kind = layer_type(module)
        if kind is nn.Linear:
            layers.append(_linear(module))
        elif _is_monotone(module):
            layers.append(module)
        else:
            return None
    first, last = layers[0], layers[-1]
    if not (isinstance(first, tuple) and isinstance(last, tuple)):
        return None
    dynamics = model.dynamics
    width = dynamics.state_dim + dynamics.context_dim + int(dynamics.time_dependent)
    if first[0].shape[1] != width:
        return None
    w = _readout_matrix(model, last[0].shape[0], "rule='certified'")
    rows = w @ last[0]
    magnitudes = [layer[0].abs() if isinstance(layer, tuple) else None for layer in layers]
    first_abs = first[0].abs()
    magnitudes[0] = first_abs[:, : dynamics.state_dim]
    return LocalRateBound(
        layers=tuple(layers),
        state_dim=dynamics.state_dim,
        gap_weights=(rows[:, None, :] - rows[None, :, :]).abs(),
        readout=w,
        speed=bound.speed,
        magnitudes=tuple(magnitudes),
        time_weight=first_abs[:, -1] if dynamics.time_dependent else None,
    )


def doubling_intervals(steps: int) -> list[int]:
    """``steps`` split into intervals of 1, 2, 4, ... steps (the last one shorter)."""
    out, size = [], 1
    while steps > 0:
        out.append(min(size, steps))
        steps -= out[-1]
        size *= 2
    return out


def _deviation(
    local: LocalRateBound, inputs: list[Tensor], outputs: list[Tensor], state: Tensor, tau: Tensor
) -> Tensor:
    """Elementwise bound on how far the last layer's input moves when the state moves by at
    most ``state`` (``(K, B, n)``) and the time by at most ``tau`` (``(K, 1, 1)``), for ``K``
    intervals at once (module docstring, step 2)."""
    spread = state @ local.magnitudes[0].T  # type: ignore[union-attr]  # the first layer is linear
    if local.time_weight is not None:
        spread = spread + tau * local.time_weight
    layers = zip(local.layers[1:-1], local.magnitudes[1:-1], inputs[1:-1], outputs[1:-1], strict=True)
    for layer, magnitude, v, out in layers:
        if magnitude is not None:
            spread = spread @ magnitude.T
        elif isinstance(layer, nn.Module):
            spread = activation_deviation(layer, v, out, spread)
    return spread


def activation_deviation(layer: nn.Module, v: Tensor, out: Tensor, spread: Tensor) -> Tensor:
    """``max |phi(v') - phi(v)|`` over ``|v' - v| <= spread`` for a monotone layer ``phi`` at
    input ``v`` with output ``out = phi(v)``: ``max(phi(v + d) - phi(v), phi(v) - phi(v - d))``."""
    if _symmetric_slope(layer):
        # The slope is even and falls with |v|: the larger change is the step towards 0.
        towards_zero = torch.where(v < 0, -spread, spread)  # at v = 0 either side is the same
        return (out - _apply_monotone(layer, v - towards_zero)).abs()
    up = _apply_monotone(layer, v + spread) - out
    down = out - _apply_monotone(layer, v - spread)
    return torch.maximum(up, down)


def _symmetric_slope(layer: nn.Module) -> bool:
    """Whether ``phi'`` is even and non-increasing in ``|v|`` (tanh, sigmoid, softsign, a
    symmetric hardtanh): then ``max(phi(v + d) - phi(v), phi(v) - phi(v - d)) =
    |phi(v) - phi(v - s d)|`` with ``s = -1`` where ``v < 0``, else ``1``: one evaluation instead of two."""
    kind = layer_type(layer)
    if kind is nn.Hardtanh:
        return float(layer.min_val) == -float(layer.max_val)  # type: ignore[arg-type]
    return kind in (nn.Tanh, nn.Sigmoid, nn.Softsign)


def _current(
    local: LocalRateBound, eta: Tensor, context: Optional[Tensor], t: Tensor, logits: Tensor
) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor, Tensor]:
    """At the current states, in float64: every layer's input and output, the predicted class
    ``c``, the gaps ``z_c - z_j`` and their rates now."""
    parts = [eta.flatten(1).double()]
    if context is not None:
        parts.append(context.flatten(1).double())
    if local.time_weight is not None:  # the field's last input column is t
        parts.append(t.double().reshape(-1, 1))
    value = torch.cat(parts, dim=1)
    inputs, outputs = [], []
    for layer in local.layers:
        inputs.append(value)
        value = value @ layer[0].T + layer[1] if isinstance(layer, tuple) else _apply_monotone(layer, value)
        outputs.append(value)
    z = logits.double()
    c = z.argmax(-1)
    rows = torch.arange(z.shape[0], device=z.device)
    rate = value @ local.readout.T  # value: f(eta, x, t)
    return inputs, outputs, c, z[rows, c].unsqueeze(-1) - z, rate[rows, c].unsqueeze(-1) - rate


def _lower_bound(
    local: LocalRateBound,
    bound: LogitRateBound,
    inputs: list[Tensor],
    outputs: list[Tensor],
    c: Tensor,
    gap: Tensor,
    rate_gap: Tensor,
    steps_left: int,
    step: float,
) -> Tensor:
    """The lower bound on ``z_c - z_j`` at ``t_end`` of the module docstring, ``(B, m)``.

    All intervals at once (two passes through the layers, each on ``K`` stacked copies of the
    batch): interval ``k``'s stage speeds are bounded from the displacement ``tau_k S`` the
    global speed box allows, and the displacements they add up to (a cumulative sum) give the
    deviation that lowers the gap's rate."""
    velocity = outputs[-1]
    floor = -bound.pairwise.to(gap)[c]  # the global bound: no rate is ever lower
    out_magnitude = local.magnitudes[-1]
    assert out_magnitude is not None  # the last layer is linear (local_rate_bound)
    speed = local.speed.to(gap)
    widths = torch.tensor(doubling_intervals(steps_left), dtype=gap.dtype, device=gap.device) * step
    taus = widths.cumsum(0)[:, None, None]  # (K, 1, 1): each interval's end, elapsed
    reach = _deviation(local, inputs, outputs, (taus * speed).expand(-1, gap.shape[0], -1), taus)
    speeds = torch.minimum(speed, velocity.abs() + reach @ out_magnitude.T)  # (K, B, n)
    moved = (widths[:, None, None] * speeds).cumsum(0)
    spread = _deviation(local, inputs, outputs, moved, taus)  # (K, B, H)
    loss = torch.bmm(local.gap_weights[c], spread.permute(1, 2, 0))  # (B, m, K)
    lowest = torch.maximum(rate_gap.unsqueeze(-1) - loss, floor.unsqueeze(-1))
    return gap + lowest @ widths


def gap_lower_bound(
    local: LocalRateBound,
    bound: LogitRateBound,
    eta: Tensor,
    context: Optional[Tensor],
    t: Tensor,
    logits: Tensor,
    *,
    steps_left: int,
    step: float,
) -> Tensor:
    """``(B, m)`` float64 lower bound, in exact arithmetic, on ``z_c - z_j`` after
    ``steps_left`` RK4 steps of size ``step`` from the states ``eta`` (``(B, n)``) at times
    ``t`` (``(B,)``) with ``context`` (``(B, p)``), ``c`` the argmax of ``logits`` (the readout
    of ``eta``); column ``c`` is 0."""
    inputs, outputs, c, gap, rate_gap = _current(local, eta, context, t, logits)
    return _lower_bound(local, bound, inputs, outputs, c, gap, rate_gap, steps_left, step)


def local_certified_stops(
    local: LocalRateBound,
    bound: LogitRateBound,
    eta: Tensor,
    context: Optional[Tensor],
    t: Tensor,
    logits: Tensor,
    *,
    steps_left: int,
    step: float,
    max_steps: int,
) -> Tensor:
    """Where the local bound proves today's ``argmax`` is the RK4 prediction at ``t_end``:
    :func:`gap_lower_bound` above the rounding slack for every other class (arguments as
    there; ``max_steps`` the solve's step count, for the slack)."""
    inputs, outputs, c, gap, rate_gap = _current(local, eta, context, t, logits)
    remaining = steps_left * step
    eps = torch.finfo(logits.dtype).eps
    scale = eta.flatten(1).abs().amax(-1)
    slack = _slack(logits, c, torch.full_like(logits[:, :1], remaining), bound, 1.0, scale, max_steps).double()
    floor = -bound.pairwise.to(gap)[c]
    slack = slack + remaining * _FIELD_ULPS * eps * (-floor)
    # The rate can only fall from today's (step 3), so rows where even today's rate held to
    # t_end would not prove the class are dropped before the intervals.
    candidate = _all_others(gap + remaining * torch.maximum(rate_gap, floor) > slack, c)
    proven = torch.zeros_like(candidate)
    pick = candidate.nonzero()[:, 0]
    if pick.numel():
        inputs, outputs = [v[pick] for v in inputs], [v[pick] for v in outputs]
        total = _lower_bound(local, bound, inputs, outputs, c[pick], gap[pick], rate_gap[pick], steps_left, step)
        proven[pick] = _all_others(total > slack[pick], c[pick])
    return proven
