"""A sound bound on how fast a model's logits can move: the certified stop of anytime inference.

Most Neural ODE vector fields end in a linear layer applied to a *bounded* activation,
``f(eta, x, t) = A s(...) + a`` with ``s`` in a box (``tanh``: ``[-1, 1]``; ``sigmoid``:
``[0, 1]``), whatever the state, the input and the time. With a linear (or identity)
readout ``z = W eta + b``, the gap between two logits then moves at a bounded rate
everywhere::

    |d(z_c - z_j)/dt| = |(W_c - W_j) f| <= r_cj = |(W_c - W_j)(A m + a)| + |(W_c - W_j) A| r

(``m`` and ``r`` the box's centre and radius; layers between the bounded activation and
the last linear layer are carried by interval arithmetic). A Runge-Kutta step of size
``h`` moves the state by ``h sum_i b_i k_i`` with every stage ``k_i`` a value of ``f``,
so the gap moves by at most ``h (sum_i |b_i|) r_cj``: over the rest of a solve, from time
``t`` to ``t_end`` with any step sequence, by at most ``(t_end - t) G r_cj``, where the
solver's gain ``G = sum_i |b_i|`` is 1 for RK4 (positive weights) and
``1 + 2 * 2187/6784 ~ 1.645`` for Dormand-Prince 5 (one negative weight).

So if ``z_c - z_j > (t_end - t) G r_cj`` for every ``j != c`` at an accepted state, the
solver's prediction at ``t_end`` is ``c`` in exact arithmetic: stopping there is never a
false stop (up to floating-point rounding, which :func:`certified_stops` allows for with a
slack sized from the state's magnitude and the steps left). The
statement is about the solver, not the exact flow, and it needs no label, no validation
split and no Lyapunov condition; LyaNet training helps only by making the logit gaps grow
early. It is loose by construction (the worst direction of ``f`` at every instant), so it
fires late in the solve unless the margins are large.

The module imports torch only (torchdyn's classes are recognised by name).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional, cast

import torch
from torch import Tensor, nn

from ._structure import layer_type, torchdyn_field, torchdyn_parts, unwrap_adapter
from .adaptive import DOPRI5_B
from .blocks import MLPDynamics
from .model import ODEModel
from .potentials import readout_of

__all__ = ["LogitRateBound", "logit_rate_bound", "solver_gain", "certified_stops", "BOUNDED_ACTIVATIONS"]

#: Activations whose output lies in a fixed box whatever their input.
BOUNDED_ACTIVATIONS = ("nn.Tanh", "nn.Sigmoid", "nn.Softsign", "nn.Hardtanh")
# Elementwise non-decreasing layers interval arithmetic carries exactly (endpoints map to
# endpoints). Dropout is the identity in eval mode, in which every anytime solve runs.
# ``nn.Softplus`` is not among them: above ``threshold / beta`` PyTorch switches it to the
# identity, a downward jump of ``log1p(exp(-threshold)) / beta`` (0.2 at ``beta = 1e-8``;
# 2e-9 at the defaults, enough to flip a stop behind a large weight): not monotone (review finding).
_MONOTONE = (nn.Tanh, nn.Sigmoid, nn.Softsign, nn.Hardtanh, nn.ReLU, nn.Identity, nn.Dropout)


def _is_monotone(module: nn.Module) -> bool:
    """Whether interval endpoints map to endpoints through ``module`` (elementwise, non-decreasing)."""
    return layer_type(module) in _MONOTONE


def global_hooks() -> bool:
    """Whether forward hooks are registered for *every* module
    (``torch.nn.modules.module.register_module_forward_hook`` and its pre-hook twin): they
    change layers' inputs or outputs without appearing on any module."""
    registry = torch.nn.modules.module
    names = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_forward_hooks_always_called")
    return any(bool(getattr(registry, name, None)) for name in names)


# The part of the certified test's rounding slack that covers the readout (the logits
# computed from the state), in units of the dtype's epsilon times the logits' magnitude.
_ROUNDING_ULPS = 1e3


@dataclass(frozen=True)
class LogitRateBound:
    """Bound on the rate of change of every logit gap, over all states, inputs and times.

    Attributes:
        pairwise: ``(m, m)`` float64, ``pairwise[c, j] >= |d(z_c - z_j)/dt|`` (0 on the
            diagonal).
        module: the field's last layer, whose output the field must return as its velocity
            (checked on every evaluation by :func:`verified_field_output`).
        readout_l1: ``(m, m)``, ``||W_c - W_j||_1`` (sizes the rounding slack).
        field_max: ``max_i sup |f_i|``, the largest speed of a state coordinate.
    """

    pairwise: Tensor
    module: nn.Module
    readout_l1: Tensor
    field_max: float
    #: ``(n,)`` float64, ``sup |f_k|`` per state coordinate (``field_max`` is its maximum);
    #: ``None`` where it was not computed.
    speed: Optional[Tensor] = None
    #: The readout's ``sum_k |W_ik|`` and ``|b_i|`` per logit, and the state's width ``n``:
    #: the rounding of ``z = W eta + b`` itself (``None``: not allowed for).
    readout_terms: Optional[tuple[Tensor, Tensor, int]] = None


def _box(module: nn.Module) -> Optional[tuple[Tensor, Tensor]]:
    """The box ``[lower, upper]`` a bounded activation's outputs lie in (``None`` if it is not one)."""
    kind = layer_type(module)
    if kind in (nn.Tanh, nn.Softsign):
        low, high = -1.0, 1.0
    elif kind is nn.Sigmoid:
        low, high = 0.0, 1.0
    elif kind is nn.Hardtanh:
        low, high = float(module.min_val), float(module.max_val)  # type: ignore[arg-type]
        if not (math.isfinite(low) and math.isfinite(high)):
            return None  # an unbounded Hardtanh bounds nothing
    else:
        return None
    return torch.tensor(low, dtype=torch.float64), torch.tensor(high, dtype=torch.float64)


def _leaves(module: nn.Module) -> Iterator[nn.Module]:
    # ``_modules``, not ``children()``: a module used twice (one ``nn.Tanh()`` reused) is
    # listed once by ``children()`` but run at every position by ``Sequential.forward``.
    if layer_type(module) is nn.Sequential:
        for child in module._modules.values():
            if child is not None:
                yield from _leaves(child)
    else:
        yield module


def _check_no_hooks(module: nn.Module, who: str) -> None:
    """Refuse a layer with forward hooks: what it returns is then not its own computation (e.g.
    ``torch.nn.utils.spectral_norm``'s pre-hook recomputes the weight the bound would read)."""
    if module._forward_hooks or module._forward_pre_hooks:
        raise NotImplementedError(
            f"{who} cannot bound {type(module).__name__}: it has forward hooks, so its output is not its weights' "
            "(use torch.nn.utils.parametrizations.spectral_norm rather than torch.nn.utils.spectral_norm)"
        )


def _apply_monotone(module: nn.Module, value: Tensor) -> Tensor:
    kind = layer_type(module)
    if kind in (nn.Identity, nn.Dropout):
        return value
    if kind is nn.Tanh:
        return value.tanh()
    if kind is nn.Sigmoid:
        return value.sigmoid()
    if kind is nn.Softsign:
        return value / (1 + value.abs())
    if kind is nn.Hardtanh:
        return value.clamp(float(module.min_val), float(module.max_val))  # type: ignore[arg-type]
    if kind is nn.ReLU:
        return value.clamp_min(0.0)
    raise AssertionError(f"not a monotone layer: {kind}")  # unreachable: callers check _MONOTONE


def _linear(module: nn.Module) -> tuple[Tensor, Tensor]:
    # On the CPU in float64: the bound is a small (m, m) matrix computed once per solve.
    weight = cast(Tensor, module.weight).detach().cpu().double()
    bias = cast(Optional[Tensor], module.bias)
    if bias is None:
        return weight, torch.zeros(weight.shape[0], dtype=torch.float64)
    return weight, bias.detach().cpu().double()


def _field_module(model: Any, who: str) -> nn.Module:
    if isinstance(model, ODEModel):
        if type(model) is not ODEModel:
            raise NotImplementedError(
                f"{who} supports ODEModel itself, not the subclass {type(model).__name__} (its field may differ)"
            )
        if type(model.dynamics) is not MLPDynamics:
            raise NotImplementedError(
                f"{who} needs the field's layers: supported dynamics of an ODEModel are "
                f"lyapunov_plugin.blocks.MLPDynamics, got {type(model.dynamics).__name__}"
            )
        return model.dynamics.net
    parts = torchdyn_parts(unwrap_adapter(model))
    if parts is None:
        raise NotImplementedError(
            f"{who} needs the field's layers: it supports an ODEModel with MLPDynamics and a torchdyn NeuralODE "
            f"(alone or in an nn.Sequential) whose field is an nn.Sequential, got {type(model).__name__} (a "
            "torchdiffeq func(t, y) is arbitrary Python, so its output cannot be bounded from its layers)"
        )
    return torchdyn_field(parts[1], who)


def _readout_matrix(model: Any, state_dim: int, who: str) -> Tensor:
    return _readout_affine(model, state_dim, who)[0]


def _readout_affine(model: Any, state_dim: int, who: str) -> tuple[Tensor, Tensor]:
    """The readout's weight and bias (float64): identity or one ``nn.Linear``."""
    readout = readout_of(model.readout)
    if readout is None or (isinstance(readout, nn.Module) and layer_type(readout) is nn.Identity):
        return torch.eye(state_dim, dtype=torch.float64), torch.zeros(state_dim, dtype=torch.float64)
    if isinstance(readout, nn.Module) and layer_type(readout) is nn.Linear:
        _check_no_hooks(readout, who)
        return _linear(readout)
    raise NotImplementedError(
        f"{who} needs an identity or a single nn.Linear readout (the logits linear in the state), got "
        f"{type(readout).__name__}"
    )


def logit_rate_bound(model: Any, who: str = "the certified stop") -> LogitRateBound:
    """:class:`LogitRateBound` of a model the trainer accepts (module docstring).

    Supported: an ``ODEModel`` with :class:`~lyapunov_plugin.blocks.MLPDynamics`, or a torchdyn
    ``NeuralODE`` (alone, or the one ``NeuralODE`` of an ``nn.Sequential``) whose vector field
    is an ``nn.Sequential``; the field must contain a bounded activation
    (:data:`BOUNDED_ACTIVATIONS`) followed only by ``nn.Linear`` and monotone elementwise
    layers, and the readout must be the identity or one ``nn.Linear``.

    Raises:
        NotImplementedError: the model is not of that form (the message says why).
    """
    if global_hooks():
        raise NotImplementedError(
            f"{who} cannot bound the field while global module forward hooks are registered "
            "(torch.nn.modules.module.register_module_forward_hook / _pre_hook): they change every layer's output"
        )
    leaves = list(_leaves(_field_module(model, who)))
    start = max((i for i, m in enumerate(leaves) if _box(m) is not None), default=None)
    if start is None:
        raise NotImplementedError(
            f"{who} needs a vector field whose outputs are bounded: a bounded activation "
            f"({', '.join(BOUNDED_ACTIVATIONS)}) followed only by nn.Linear and monotone elementwise layers; "
            "this field has none"
        )
    box = _box(leaves[start])
    assert box is not None
    lower, upper = box
    tail = leaves[start + 1 :]
    for module in leaves[start:]:
        _check_no_hooks(module, who)
    last = tail[-1] if tail and layer_type(tail[-1]) is nn.Linear else None
    for module in tail[:-1] if last is not None else tail:
        kind = layer_type(module)
        if kind is nn.Linear:
            weight, bias = _linear(module)
            centre, radius = (upper + lower) / 2, (upper - lower) / 2
            centre = weight @ centre.expand(weight.shape[1]) + bias
            radius = weight.abs() @ radius.expand(weight.shape[1])
            lower, upper = centre - radius, centre + radius
        elif _is_monotone(module):
            lower, upper = _apply_monotone(module, lower), _apply_monotone(module, upper)
        else:
            raise NotImplementedError(
                f"{who} cannot carry the field's bound through {kind.__module__}.{kind.__name__} (after its last "
                "bounded activation only nn.Linear and monotone elementwise layers are supported)"
            )
    if last is not None:
        a, a0 = _linear(last)
        width = a.shape[1]
        lower, upper = lower.expand(width), upper.expand(width)
    else:
        if lower.ndim == 0:
            raise NotImplementedError(f"{who} cannot tell the state's width from a field that ends in an activation")
        width = lower.shape[0]
        a, a0 = torch.eye(width, dtype=torch.float64), torch.zeros(width, dtype=torch.float64)
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    w, w0 = _readout_affine(model, a.shape[0], who)
    if w.shape[1] != a.shape[0]:
        raise NotImplementedError(
            f"{who}: the readout takes {w.shape[1]} features but the field's last layer returns {a.shape[0]}"
        )
    rows, offset = w @ a, w @ a0  # d z / dt = rows @ s + offset, s in the box
    gaps = rows[:, None, :] - rows[None, :, :]  # (m, m, width)
    pairwise = (gaps @ centre + (offset[:, None] - offset[None, :])).abs() + gaps.abs() @ radius
    pairwise.fill_diagonal_(0.0)
    speed = (a @ centre + a0).abs() + a.abs() @ radius
    field_max = float(speed.max())
    readout_l1 = (w[:, None, :] - w[None, :, :]).abs().sum(-1)
    if not (bool(pairwise.isfinite().all()) and math.isfinite(field_max)):
        raise NotImplementedError(f"{who}: the field's bound is not finite (non-finite weights?)")
    return LogitRateBound(
        pairwise=pairwise,
        module=leaves[-1],
        readout_l1=readout_l1,
        field_max=field_max,
        speed=speed,
        readout_terms=(w.abs().sum(1), w0.abs(), int(w.shape[1])),
    )


def solver_gain(solver: str) -> float:
    """``sum_i |b_i|`` of the solver's weights: 1 for ``"rk4"``, about 1.645 for ``"dopri5"``."""
    if solver == "rk4":
        return 1.0
    if solver == "dopri5":
        return float(sum(abs(b) for b in DOPRI5_B))
    raise ValueError(f"solver must be 'rk4' or 'dopri5', got {solver!r}")


def certified_stops(
    logits: Tensor,
    t: Tensor,
    t_end: float,
    bound: LogitRateBound,
    gain: float,
    *,
    state_scale: Optional[Tensor] = None,
    max_steps: int = 0,
) -> Tensor:
    """Where the predicted class at ``t_end`` is proven to be today's ``argmax``.

    ``logits`` ``(..., m)`` at times ``t`` (shape ``...``); ``bound`` from
    :func:`logit_rate_bound`. True where ``z_c - z_j > (t_end - t) gain pairwise[c, j] + slack``
    for every ``j != c`` (``c`` the argmax). The slack allows for floating-point rounding:
    ``eps (1000 (1 + max |z|) + 2 max_steps ||W_c - W_j||_1 (|eta|_inf + (t_end - t) gain
    field_max))`` with ``state_scale = |eta|_inf`` per state and ``max_steps`` the most steps
    the solver may still take: each step's addition rounds the state by about ``eps |eta|``.
    It is an estimate of the accumulated rounding sized generously, not a proof; the bound
    itself is exact arithmetic.
    """
    c = logits.argmax(-1)
    gap = logits.gather(-1, c.unsqueeze(-1)) - logits
    remaining = (t_end - t).clamp_min(0.0).unsqueeze(-1)
    reach = remaining * gain * bound.pairwise.to(logits)[c]
    return _all_others(gap > reach + _slack(logits, c, remaining, bound, gain, state_scale, max_steps), c)


def _slack(
    logits: Tensor,
    c: Tensor,
    remaining: Tensor,
    bound: LogitRateBound,
    gain: float,
    state_scale: Optional[Tensor],
    max_steps: int,
) -> Tensor:
    """The rounding slack of :func:`certified_stops` (its docstring), ``(..., m)``."""
    eps = torch.finfo(logits.dtype).eps
    slack = _ROUNDING_ULPS * eps * (1.0 + logits.abs().amax(-1, keepdim=True))
    if state_scale is not None and max_steps > 0:
        future = state_scale.unsqueeze(-1) + remaining * gain * bound.field_max
        slack = slack + 2.0 * max_steps * eps * bound.readout_l1.to(logits)[c] * future
        if bound.readout_terms is not None:
            # The readout's own rounding, now and at t_end: a dot product of n terms rounds by
            # at most about n eps sum_k |W_ik eta_k| (plus the bias's), which can dwarf the
            # logits' own ulp when a large state cancels in them (review finding).
            rows, bias, width = bound.readout_terms
            per_logit = rows.to(logits) * (state_scale.unsqueeze(-1) + future) + 2.0 * bias.to(logits)
            pair = per_logit + per_logit.gather(-1, c.unsqueeze(-1))
            slack = slack + (width + 2) * eps * pair
    return slack


def _all_others(ok: Tensor, c: Tensor) -> Tensor:
    """``ok[..., j]`` for every ``j != c`` (the predicted class needs no margin to itself)."""
    classes = torch.arange(ok.shape[-1], device=ok.device)
    return (ok | (classes == c.unsqueeze(-1))).all(-1)


@contextmanager
def verified_field_output(bound: LogitRateBound) -> Iterator[list[Tensor]]:
    """Record the outputs of the field's last layer inside the ``with`` block, to compare
    with the velocities the model returns, call by call: the bound holds only if they are
    the same (a model that rescales or post-processes its field's output is refused)."""
    seen: list[Tensor] = []
    handle = bound.module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()
