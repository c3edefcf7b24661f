"""A sound certificate of robustness for a Neural ODE as it runs at inference.

:func:`certify` proves, per example, that every input in the threat ball around ``x``
is classified as ``y`` by the *discretised* model: ``psi(eta_N)`` where ``eta_N`` is what
the given fixed-step solver (Euler, midpoint or RK4 with ``steps`` steps over
``[0, t_end]``, :class:`~lyapunov_plugin.FixedStepSolver`) computes for paper Eq. (1)-(3).
It is not a statement about the exact ODE flow, nor about an adaptive solver (whose step
sequence depends on the input). Bounds come from affine arithmetic through the encoder,
every stage of every solver step and the readout (:mod:`lyapunov_plugin.bounds`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._structure import layer_type, torchdyn_field, torchdyn_parts, unwrap_adapter
from ._validation import check_choice, check_in_range, check_non_negative, check_positive_int, check_tensor, time_dtype
from .blocks import LipschitzMLP, MLPDynamics, Standardize
from .bounds import AffineForm, SymbolSpace
from .dispatch import as_lyapunov_model
from .inference import EvalMode
from .model import ODEModel, horizon, integrate
from .solvers import FixedStepSolver

__all__ = ["Certificate", "certify", "SUPPORTED_LAYERS"]

_NORMS = ("linf", "l2")

SUPPORTED_LAYERS = (
    "nn.Sequential, nn.Linear, nn.Conv2d (zero padding), nn.Flatten, nn.Identity, nn.Tanh, nn.ReLU, "
    "nn.Sigmoid, nn.Softplus (beta=1), lyapunov_plugin.blocks.Standardize / LipschitzMLP; fields: "
    "lyapunov_plugin.blocks.MLPDynamics in an ODEModel, or an nn.Sequential vector field of a torchdyn "
    "NeuralODE with DataControl / DepthCat"
)

# How closely the interpreted model must reproduce the model's own output at x before
# its bounds are trusted (relative to the logit scale; float32 RK4 agrees to ~1e-6).
_SELF_CHECK_TOLERANCE = 1e-3

_ACTIVATION_TYPES: dict[type, str] = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU: "relu", nn.Softplus: "softplus"}


@dataclass(frozen=True)
class Certificate:
    """What :func:`certify` proved, per example and in total: a deterministic robustness
    certificate of the model of Eq. (1)-(3) as it runs through its fixed-step solver (the
    sound counterpart of the Theorem 3 bound).

    Attributes:
        certified: ``(B,)`` bool: every input of the ball is classified as ``y`` by the
            discretised model (solver ``method`` with ``steps`` steps over ``[0, t_end]``).
        margin_lower: ``(B,)`` a lower bound, over the ball, of the margin
            ``logit_y - max_{j != y} logit_j``; ``certified == (margin_lower > 0)``.
        margin: ``(B,)`` the margin at ``x`` itself (negative: misclassified).
        certified_accuracy: fraction of examples certified.
        clean_accuracy: fraction classified correctly at ``x``.
        eps, norm: the ball ``||delta|| <= eps`` (``"linf"`` or ``"l2"``) around ``x``,
            intersected with the box ``domain`` when one is given (``linf`` only).
        method, steps, t_end: the fixed-step solver the certificate covers.
        dtype: the floating-point type the bounds were computed in.
    """

    certified: Tensor
    margin_lower: Tensor
    margin: Tensor
    certified_accuracy: float
    clean_accuracy: float
    eps: float
    norm: str
    method: str
    steps: int
    t_end: float
    domain: Optional[tuple[float, float]]
    dtype: torch.dtype

    def describe(self) -> str:
        """One line stating what was certified."""
        ball = f"{self.norm} eps={self.eps:g}" + (f" within {self.domain}" if self.domain is not None else "")
        return (
            f"certified {100 * self.certified_accuracy:.1f}% (clean {100 * self.clean_accuracy:.1f}%) of "
            f"{self.certified.numel()} examples, {ball}, for the {self.method} solver with {self.steps} steps over "
            f"[0, {self.t_end:g}] (the discretised model, not the exact ODE flow)"
        )


# -- the model as a program on affine forms ------------------------------------------------


@dataclass
class _FieldInputs:
    """What the parts of a vector field can read besides the state: the data control
    (torchdyn ``DataControl``) and the time (``DepthCat``, ``MLPDynamics``)."""

    control: Optional[AffineForm]
    t: float


class _Interpreter:
    """Walks the modules of a model and applies them to affine forms."""

    def __init__(self, dtype: torch.dtype, differentiable: bool = False) -> None:
        self.dtype = dtype
        # Certified training (lyapunov_plugin.contraction) differentiates the bounds with
        # respect to the parameters; the certificate itself never does.
        self.differentiable = differentiable

    def detach(self, value: Tensor) -> Tensor:
        return value.to(self.dtype) if self.differentiable else value.detach().to(self.dtype)

    def param(self, value: Optional[Tensor]) -> Optional[Tensor]:
        return None if value is None else self.detach(value)

    def run(self, module: Any, form: AffineForm, inputs: Optional[_FieldInputs], path: str) -> AffineForm:
        kind = layer_type(module)
        if kind is nn.Sequential:
            # ``_modules``, as ``Sequential.forward`` runs them: ``named_children()`` lists a
            # module used at two positions (one ``nn.Tanh()`` reused) only once.
            for name, child in module._modules.items():
                if child is not None:
                    form = self.run(child, form, inputs, f"{path}.{name}")
            return form
        if kind is nn.Identity:
            return form
        if kind is nn.Linear:
            return form.linear(self._weight(module), self.param(module.bias))
        if kind is nn.Conv2d:
            if module.padding_mode != "zeros":
                raise NotImplementedError(
                    f"certify supports nn.Conv2d with padding_mode='zeros' only, got {module.padding_mode!r} at {path}"
                )
            return form.conv2d(module, self._weight(module), self.param(module.bias))
        if kind is nn.Flatten:
            start = module.start_dim if module.start_dim >= 0 else form.center.ndim + module.start_dim
            end = module.end_dim if module.end_dim >= 0 else form.center.ndim + module.end_dim
            if start < 1:
                raise NotImplementedError(f"certify cannot flatten the batch dimension (nn.Flatten at {path})")
            return form.flatten(start, end)
        if kind in _ACTIVATION_TYPES:
            if kind is nn.Softplus and (module.beta != 1.0):
                raise NotImplementedError(
                    f"certify supports nn.Softplus with beta=1 only, got beta={module.beta} at {path}"
                )
            return form.activation(_ACTIVATION_TYPES[kind])
        if kind is Standardize:
            std = self.param(module.std)
            mean = self.param(module.mean)
            assert std is not None and mean is not None  # buffers of Standardize, never None
            return form.elementwise_affine(1.0 / std, -mean / std)
        if kind is LipschitzMLP:
            flat = form.flatten(1, -1) if form.center.ndim > 2 else form
            return self.run(module.net, flat, inputs, f"{path}.net").scale(module.lipschitz)
        name = f"{kind.__module__}.{kind.__name__}"
        if name == "torchdyn.nn.node_layers.DataControl":
            if inputs is None or inputs.control is None:
                raise NotImplementedError(f"DataControl at {path} is only supported inside a torchdyn vector field")
            return AffineForm.cat([form, inputs.control], dim=1)
        if name == "torchdyn.nn.node_layers.DepthCat":
            if inputs is None or module.idx_cat != 1:
                raise NotImplementedError(
                    f"DepthCat at {path} is supported inside a torchdyn vector field with idx_cat=1 only"
                )
            return AffineForm.cat([form, self.time_column(form, inputs.t)], dim=1)
        raise NotImplementedError(
            f"certify does not support the layer {name} (at {path}); supported: {SUPPORTED_LAYERS}"
        )

    def _weight(self, module: nn.Linear | nn.Conv2d) -> Tensor:
        # A parametrised (spectral-norm) weight is computed on access, in eval mode without
        # a power-iteration update.
        return self.detach(module.weight)

    def time_column(self, like: AffineForm, t: float) -> AffineForm:
        column = like.center.new_full((like.center.shape[0], 1), t)
        return AffineForm.constant(column, like.space)


class _Program:
    """A supported model as three functions on affine forms (paper Eq. 1-3)."""

    def __init__(
        self,
        interpreter: _Interpreter,
        encode: Callable[[AffineForm], tuple[Optional[AffineForm], AffineForm]],
        field: Callable[[AffineForm, Optional[AffineForm], float], AffineForm],
        readout: Callable[[AffineForm], AffineForm],
    ) -> None:
        self.interpreter, self.encode, self.field, self.readout = interpreter, encode, field, readout


def _module(name: str, value: Any) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise TypeError(
            f"certify needs the model's {name} as an nn.Module of supported layers, got {type(value).__name__}"
        )
    return value


def _ode_model_program(model: ODEModel, interpreter: _Interpreter) -> _Program:
    encoder = _module("encoder", model.encoder)
    readout = _module("readout", model.readout_module)
    initial = None if model.initial_state is None else _module("initial_state", model.initial_state)
    dynamics = model.dynamics
    if type(dynamics) is not MLPDynamics:
        raise NotImplementedError(
            f"certify does not support the dynamics {type(dynamics).__module__}.{type(dynamics).__name__} of this "
            f"ODEModel (how it combines eta, context and t is unknown); supported: {SUPPORTED_LAYERS}"
        )
    state_shape = model.state_shape

    def encode(x: AffineForm) -> tuple[Optional[AffineForm], AffineForm]:
        context = interpreter.run(encoder, x, None, "encoder")
        if initial is None:
            assert state_shape is not None  # ODEModel requires it with the zero initial state
            zeros = x.center.new_zeros((x.center.shape[0], *state_shape))
            return context, AffineForm.constant(zeros, x.space)
        return context, interpreter.run(initial, context, None, "initial_state")

    def field(eta: AffineForm, context: Optional[AffineForm], t: float) -> AffineForm:
        if context is None or context.center.ndim != 2 or eta.center.ndim != 2:
            raise NotImplementedError("MLPDynamics needs a flat state and a flat context")
        parts = [eta, context]
        if dynamics.time_dependent:
            parts.append(interpreter.time_column(eta, t))
        return interpreter.run(dynamics.net, AffineForm.cat(parts, dim=1), None, "dynamics.net")

    return _Program(interpreter, encode, field, lambda eta: interpreter.run(readout, eta, None, "readout"))


def _torchdyn_program(model: nn.Module, interpreter: _Interpreter) -> Optional[_Program]:
    """A torchdyn ``NeuralODE`` (alone or in an ``nn.Sequential``), recognised by class
    name so that the core never imports torchdyn; ``None`` if ``model`` is not one."""
    parts = torchdyn_parts(model)
    if parts is None:
        return None
    before, node, after = parts
    try:
        field_module = torchdyn_field(node, "certify")
    except NotImplementedError as error:
        raise NotImplementedError(f"{error}; supported: {SUPPORTED_LAYERS}") from None
    encoder, readout = nn.Sequential(*before), nn.Sequential(*after)

    def encode(x: AffineForm) -> tuple[Optional[AffineForm], AffineForm]:
        eta0 = interpreter.run(encoder, x, None, "encoder")
        return eta0, eta0

    def field(eta: AffineForm, context: Optional[AffineForm], t: float) -> AffineForm:
        return interpreter.run(field_module, eta, _FieldInputs(context, t), "vf")

    return _Program(interpreter, encode, field, lambda eta: interpreter.run(readout, eta, None, "readout"))


def _program(model: Any, dtype: torch.dtype, differentiable: bool = False) -> _Program:
    interpreter = _Interpreter(dtype, differentiable)
    if isinstance(model, ODEModel):
        return _ode_model_program(model, interpreter)
    if isinstance(model, nn.Module):
        # The trainer's view of a torchdyn model certifies the model it wraps.
        model = unwrap_adapter(model)
        program = _torchdyn_program(model, interpreter)
        if program is not None:
            return program
    raise NotImplementedError(
        f"certify does not support models of type {type(model).__name__}: it needs an ODEModel or a torchdyn "
        f"NeuralODE (alone or in an nn.Sequential) built from {SUPPORTED_LAYERS}"
    )


# -- the unrolled solver --------------------------------------------------------------------


def _unrolled(program: _Program, x: AffineForm, solver: FixedStepSolver, t_end: float) -> AffineForm:
    """Affine-form enclosure of ``psi(eta_N)``: ``solver``'s steps of paper Eq. (2) from
    ``eta(0) = phi(x)``, each stage evaluated on forms, so the coupling of every stage to
    ``eta`` and to the input is kept (the Butcher tableau is applied to the forms)."""
    context, eta = program.encode(x)
    keep = x.space.total  # input symbols and the encoder's: the context uses them all step long
    h = t_end / solver.steps
    for k in range(solver.steps):
        t = k * h
        k1 = program.field(eta, context, t)
        if solver.method == "euler":
            eta = eta + k1.scale(h)
        elif solver.method == "midpoint":
            eta = eta + program.field(eta + k1.scale(h / 2), context, t + h / 2).scale(h)
        else:
            k2 = program.field(eta + k1.scale(h / 2), context, t + h / 2)
            k3 = program.field(eta + k2.scale(h / 2), context, t + h / 2)
            k4 = program.field(eta + k3.scale(h), context, t + h)
            eta = eta + (k1 + k2.scale(2.0) + k3.scale(2.0) + k4).scale(h / 6)
        eta = eta.reduce_errors(keep)
    return program.readout(eta)


def _input_form(x: Tensor, eps: float, norm: str, domain: Optional[tuple[float, float]]) -> AffineForm:
    b = x.shape[0]
    d = int(math.prod(x.shape[1:]))
    center, radius = x, torch.full_like(x, eps)
    if domain is not None:
        lo = torch.clamp(x - eps, min=domain[0])
        hi = torch.clamp(x + eps, max=domain[1])
        center, radius = (lo + hi) / 2, (hi - lo) / 2
    gens = torch.diag_embed(radius.reshape(b, d)).reshape(b, d, *x.shape[1:])
    return AffineForm(center, gens, SymbolSpace(num_input=d, norm=norm, total=d))


def _margin_lowers(logits: AffineForm, y: Tensor) -> Tensor:
    """``(B, C)``: the exact lower bound of each affine form ``logit_y - logit_j`` over the
    ball (``+inf`` at ``j = y``)."""
    index = y.reshape(-1, 1)
    c_y = logits.center.gather(1, index)
    g_y = logits.gens.gather(2, index.unsqueeze(1).expand(-1, logits.gens.shape[1], 1))
    lower = AffineForm(c_y - logits.center, g_y - logits.gens, logits.space).bounds()[0]
    other = torch.ones_like(lower, dtype=torch.bool).scatter(1, index, False)
    return torch.where(other, lower, torch.full_like(lower, math.inf))


def _margins(logits: AffineForm, y: Tensor) -> tuple[Tensor, Tensor]:
    """Lower bound of ``logit_y - max_{j != y} logit_j`` over the ball, and its value at the
    center, from the exact bounds of the affine forms ``logit_y - logit_j``."""
    index = y.reshape(-1, 1)
    c_y = logits.center.gather(1, index)
    g_y = logits.gens.gather(2, index.unsqueeze(1).expand(-1, logits.gens.shape[1], 1))
    diff = AffineForm(c_y - logits.center, g_y - logits.gens, logits.space)
    lower = diff.bounds()[0]
    other = torch.ones_like(lower, dtype=torch.bool).scatter(1, index, False)
    inf = torch.full_like(lower, math.inf)
    return torch.where(other, lower, inf).amin(dim=1), torch.where(other, diff.center, inf).amin(dim=1)


def margin_lower_bounds(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    solver: FixedStepSolver,
    norm: str = "linf",
    domain: Optional[tuple[float, float]] = None,
) -> Tensor:
    """``(B, C)`` lower bounds of ``logit_y - logit_j`` over the ball (``+inf`` at ``j = y``),
    *differentiable* with respect to the model's parameters: the bounds of :func:`certify`
    for certified training (:class:`~lyapunov_plugin.contraction.CertifiedMarginObjective`).
    Computed in ``x``'s dtype, on checked arguments (no validation, no self-check; the
    caller certifies with :func:`certify`)."""
    program = _program(model, x.dtype, differentiable=True)
    logits = _unrolled(program, _input_form(x, eps, norm, domain), solver, horizon(model))
    return _margin_lowers(logits, y.to(dtype=torch.long))


# -- the public entry point -------------------------------------------------------------------


def _resolve_solver(model: Any, solver: Any) -> FixedStepSolver:
    if solver is not None:
        if not isinstance(solver, FixedStepSolver):
            raise TypeError(
                "solver must be a lyapunov_plugin.FixedStepSolver (e.g. FixedStepSolver(method='rk4', steps=10)), "
                f"got {type(solver).__name__}: the certificate covers one fixed sequence of steps"
            )
        return solver
    own = getattr(model, "solver", None)
    if isinstance(own, FixedStepSolver):
        return own
    steps = getattr(model, "fixed_steps", None)
    what = (
        f"a fixed-step solver with {steps} step(s) that is not a lyapunov_plugin.FixedStepSolver"
        if steps is not None
        else "an adaptive (or unknown) solver"
    )
    raise ValueError(
        f"the model runs {what}; certify needs a fixed-step solver: pass solver=FixedStepSolver(method='rk4', "
        "steps=...) and use the same solver at inference. An adaptive solver's step sequence depends on the input, "
        "so no bound on one sequence of steps covers it"
    )


def _check_domain(domain: Any, norm: str, x: Tensor) -> Optional[tuple[float, float]]:
    if domain is None:
        return None
    if (
        not isinstance(domain, Sequence)
        or len(domain) != 2
        or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in domain)
        or not float(domain[0]) < float(domain[1])
    ):
        raise ValueError(f"domain must be None or a pair (low, high) of numbers with low < high, got {domain!r}")
    if norm != "linf":
        raise ValueError(f"domain is supported with norm='linf' only, got norm={norm!r}")
    low, high = float(domain[0]), float(domain[1])
    check_in_range("x", x, low, high, what=f"domain {domain!r}")
    return low, high


def certify(
    model: Any,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    solver: Optional[FixedStepSolver] = None,
    domain: Optional[tuple[float, float]] = None,
    dtype: torch.dtype = torch.float64,
    batch_size: int = 128,
) -> Certificate:
    """Certify that every input within ``eps`` of ``x`` is classified as ``y``.

    What is proven, per example: for every ``x'`` with ``||x' - x|| <= eps`` (and inside
    ``domain`` if given), the model as it runs at inference, ``psi(eta_N(x'))`` with
    ``eta_0 = phi(x')`` and ``eta_N`` the result of ``steps`` steps of ``solver`` on
    ``d eta/dt = f(eta, x', t)`` over ``[0, t_end]`` (paper Eq. 1-3), has its largest logit
    at ``y``, with margin at least ``margin_lower``. This is the *discretised* model: the
    exact ODE flow and adaptive solvers are not covered. Bounds are computed in ``dtype``
    arithmetic with round-off padding in the relaxations, not with directed rounding.

    Method: affine arithmetic (zonotopes; :mod:`lyapunov_plugin.bounds`) through the
    encoder, every Runge-Kutta stage of every step (the stages' shared dependence on
    ``eta`` and on the input is tracked) and the readout. Exact for affine models.
    Before bounds are trusted, the interpreted model is checked to reproduce the model's
    own output at ``x`` through ``solver``.

    Arguments:
        model: an :class:`~lyapunov_plugin.ODEModel` with
            :class:`~lyapunov_plugin.blocks.MLPDynamics`, or a torchdyn ``NeuralODE`` (alone
            or in an ``nn.Sequential``), built from :data:`SUPPORTED_LAYERS`.
        x: inputs ``(B, ...)``.
        y: labels ``(B,)``.
        eps: radius of the threat ball, ``>= 0``, in the units of ``x``.
        norm: ``"linf"`` or ``"l2"`` (the l2 ball is used exactly, not boxed).
        solver: a :class:`~lyapunov_plugin.FixedStepSolver`; default the model's own when
            it is one. Anything else raises: an adaptive solver's steps depend on the input.
        domain: ``(low, high)``: also restrict inputs to this box (e.g. ``(0, 1)`` for
            pixels; ``linf`` only).
        dtype: arithmetic of the bounds (float64 default).
        batch_size: examples bounded at once.

    Returns:
        A :class:`Certificate`.
    """
    protocol = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=2, floating=True)
    check_tensor("y", y, min_ndim=1)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must be integer class labels of shape ({x.shape[0]},), got {tuple(y.shape)} {y.dtype}")
    eps = check_non_negative("eps", eps)
    norm = check_choice("norm", norm, _NORMS)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    batch_size = check_positive_int("batch_size", batch_size)
    fixed = _resolve_solver(protocol, solver)
    bounds_domain = _check_domain(domain, norm, x)
    t_end = horizon(protocol)
    program = _program(model, dtype)

    lowers, nominals = [], []
    with torch.no_grad(), EvalMode(model):
        ts = torch.tensor([0.0, t_end], dtype=time_dtype(x), device=x.device)
        reference = protocol.readout(integrate(protocol, x, ts, solver=fixed)[-1])
        if reference.ndim != 2:
            raise ValueError(
                f"certify needs the model to output logits of shape (B, classes), got {tuple(reference.shape)}"
            )
        if bool((y < 0).any()) or bool((y >= reference.shape[1]).any()):
            raise ValueError(
                f"y must hold class indices in [0, {reference.shape[1]}), got [{int(y.min())}, {int(y.max())}]"
            )
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(dtype)
            yb = y[start : start + batch_size].to(device=x.device, dtype=torch.long)
            point = _unrolled(program, AffineForm.constant(xb, SymbolSpace(0, norm, 0)), fixed, t_end)
            expected = reference[start : start + batch_size].to(dtype)
            scale = 1.0 + float(expected.abs().max())
            if not torch.allclose(point.center, expected, rtol=0.0, atol=_SELF_CHECK_TOLERANCE * scale):
                gap = float((point.center - expected).abs().max())
                raise NotImplementedError(
                    f"certify's reading of the model does not reproduce its output through {fixed} (largest logit "
                    f"difference {gap:.3g}): the model computes something other than its modules in sequence; "
                    f"supported: {SUPPORTED_LAYERS}"
                )
            logits = _unrolled(program, _input_form(xb, eps, norm, bounds_domain), fixed, t_end)
            lower, _ = _margins(logits, yb)
            _, nominal = _margins(point, yb)
            lowers.append(torch.minimum(lower, nominal))
            nominals.append(nominal)
    margin_lower, margin = torch.cat(lowers), torch.cat(nominals)
    certified = margin_lower > 0
    return Certificate(
        certified=certified,
        margin_lower=margin_lower,
        margin=margin,
        certified_accuracy=float(certified.double().mean()),
        clean_accuracy=float((margin > 0).double().mean()),
        eps=eps,
        norm=norm,
        method=fixed.method,
        steps=fixed.steps,
        t_end=t_end,
        domain=bounds_domain,
        dtype=dtype,
    )
