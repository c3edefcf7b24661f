"""torchdiffeq's ODE-block model shape as a :class:`~lyapunov_plugin.LyapunovModel` (paper Eq. 1-3).

A torchdiffeq user's ODE-Net (torchdiffeq's ``examples/odenet_mnist.py``) is
``nn.Sequential(downsampling, ODEBlock(odefunc), head)`` where ``ODEBlock.forward(x)``
returns ``odeint(self.odefunc, x, self.integration_time, rtol=..., atol=...)[1]`` (or
``odeint_adjoint``). The solver settings live inside that ``forward``, so they are read by
running it once: :func:`trace_ode_block` calls the block on a placeholder state while
``odeint``/``odeint_adjoint`` are replaced by a recorder, which notes ``func``, ``t``,
``method``, ``rtol``, ``atol``, ``options`` and whether the call was the adjoint, and
returns a fake solution whose ``k``-th entry is filled with ``k``. What the block returns
then tells which time it reads out (``out[1]``, ``out[-1]``, ...). The vector field is never
evaluated and nothing is trained by the trace.

:func:`from_ode_block` turns the result into the one-line conversion a user would write::

    TorchdiffeqModel(block.odefunc, encoder=model[:i], readout=model[i + 1:],
                     method=..., rtol=..., atol=..., options=..., adjoint=..., t_end=...)

and raises ``TypeError`` naming that line where a block cannot be understood (it transforms
``x`` before integrating, post-processes the solution, calls the solver twice, has
parameters outside ``func``, or uses settings ``TorchdiffeqModel`` has no place for).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional, cast

import torch
from torch import Tensor, nn

from lyapunov_plugin.adapter import NeuralODEAdapter, model_dtype

from .torchdiffeq import TorchdiffeqModel

try:
    import torchdiffeq
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "lyapunov_plugin.adapters.torchdiffeq_block needs torchdiffeq: pip install 'lyapunov-plugin[torchdiffeq]'"
    ) from err

__all__ = ["OdeintCall", "find_ode_block", "from_ode_block", "trace_ode_block"]

# odeint_adjoint settings TorchdiffeqModel does not take; a block may leave them only at None.
_ADJOINT_ONLY = ("adjoint_rtol", "adjoint_atol", "adjoint_method", "adjoint_options")


def _solvers() -> tuple[Callable[..., Any], Callable[..., Any]]:
    return torchdiffeq.odeint, torchdiffeq.odeint_adjoint


def calls_odeint(module: Any) -> bool:
    """True if ``type(module).forward`` refers to torchdiffeq's ``odeint``/``odeint_adjoint``
    (imported under any name, or as ``torchdiffeq.odeint``); read from its code, not run."""
    if not isinstance(module, nn.Module) or isinstance(module, NeuralODEAdapter):
        return False
    forward = inspect.unwrap(type(module).forward)
    code, namespace = getattr(forward, "__code__", None), getattr(forward, "__globals__", None)
    if code is None or namespace is None:
        return False
    solvers = _solvers()
    return any(namespace.get(n) is torchdiffeq or any(namespace.get(n) is s for s in solvers) for n in code.co_names)


def find_ode_block(model: Any) -> Optional[int]:
    """Index of the single ODE block in an ``nn.Sequential`` (``-1`` for a bare block), ``None``
    if there is none; ``ValueError`` for several."""
    if calls_odeint(model):
        return -1
    if isinstance(model, nn.Sequential):
        found = [i for i, layer in enumerate(model) if calls_odeint(layer)]
        if len(found) > 1:
            raise ValueError(
                f"model is an nn.Sequential with {len(found)} ODE blocks calling torchdiffeq's odeint (at "
                f"positions {found}); LyapunovTrainer supports exactly one ODE per model"
            )
        return found[0] if found else None
    return None


@dataclass
class OdeintCall:
    """What one call of a block's ``forward`` passed to ``odeint`` / ``odeint_adjoint``."""

    func: Any
    y0: Any
    t: Any
    settings: dict[str, Any]
    adjoint: bool
    returned: Any = None
    notes: list[str] = field(default_factory=list)


@contextmanager
def _recording(block: nn.Module, calls: list[OdeintCall]) -> Iterator[None]:
    """Replace torchdiffeq's solvers, in the package and in the block's module namespace, by
    recorders; restore them afterwards."""
    odeint, odeint_adjoint = _solvers()

    def recorder(real: Callable[..., Any], adjoint: bool) -> Callable[..., Any]:
        signature = inspect.signature(real)

        def record(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            settings = dict(bound.arguments)
            func, y0, t = settings.pop("func"), settings.pop("y0"), settings.pop("t")
            calls.append(OdeintCall(func, y0, t, settings, adjoint))
            if not isinstance(y0, Tensor) or not isinstance(t, Tensor) or t.ndim != 1:
                return y0
            # The k-th "state" is filled with k, so the block's return value says which time it reads.
            marks = torch.arange(t.shape[0], dtype=y0.dtype, device=y0.device)
            return marks.reshape(-1, *([1] * y0.ndim)).expand(t.shape[0], *y0.shape).clone()

        return record

    fakes = {id(odeint): recorder(odeint, False), id(odeint_adjoint): recorder(odeint_adjoint, True)}
    namespace = getattr(inspect.unwrap(type(block).forward), "__globals__", {})
    saved_names = {n: v for n, v in namespace.items() if v is odeint or v is odeint_adjoint}
    try:
        torchdiffeq.odeint, torchdiffeq.odeint_adjoint = fakes[id(odeint)], fakes[id(odeint_adjoint)]
        for n, v in saved_names.items():
            namespace[n] = fakes[id(v)]
        yield
    finally:
        torchdiffeq.odeint, torchdiffeq.odeint_adjoint = odeint, odeint_adjoint
        namespace.update(saved_names)


def trace_ode_block(block: nn.Module) -> OdeintCall:
    """Call ``block`` once on a placeholder state with ``odeint`` recorded (see the module
    docstring); return the recorded call and what the block returned. Eq. (2) is not solved."""
    reference: Optional[Tensor] = next(iter(block.parameters()), None)
    if reference is None:
        reference = next(iter(block.buffers()), None)
    dtype = model_dtype(block) or torch.get_default_dtype()
    device = reference.device if reference is not None else torch.device("cpu")
    probe = torch.zeros(2, 1, dtype=dtype, device=device)
    calls: list[OdeintCall] = []
    with torch.no_grad(), _recording(block, calls):
        try:
            returned = block(probe)
        except Exception as err:  # any failure of the user's forward means "cannot be understood"
            if not calls:
                raise _Unreadable(f"its forward raised {type(err).__name__} on a placeholder state: {err}") from err
            returned = None
    if len(calls) != 1:
        raise _Unreadable(f"its forward called odeint {len(calls)} times (one call is understood)")
    call = calls[0]
    call.returned = returned
    if call.y0 is not probe:
        raise _Unreadable("its forward does not integrate its input x unchanged")
    return call


class _Unreadable(Exception):
    """An ODE block whose ``forward`` is not ``odeint(func, x, t, ...)[k]``."""


def _settings(call: OdeintCall) -> dict[str, Any]:
    """``TorchdiffeqModel`` keyword arguments from a recorded call."""
    settings = {k: v for k, v in call.settings.items() if k not in ("rtol", "atol", "method", "options")}
    if settings.pop("event_fn", None) is not None:
        raise _Unreadable("it integrates until an event (event_fn), which has no fixed horizon")
    for name in _ADJOINT_ONLY:
        if settings.pop(name, None) is not None:
            raise _Unreadable(f"it sets {name}, which TorchdiffeqModel does not take")
    adjoint_params = settings.pop("adjoint_params", None)
    if adjoint_params is not None:
        own = {id(p) for p in call.func.parameters()} if isinstance(call.func, nn.Module) else set()
        if {id(p) for p in adjoint_params} != own:
            raise _Unreadable("it passes adjoint_params other than its vector field's parameters")
    if settings:
        raise _Unreadable(f"it passes settings TorchdiffeqModel does not take: {sorted(settings)}")
    out: dict[str, Any] = {
        "method": call.settings.get("method") or "dopri5",  # torchdiffeq's default method
        "rtol": call.settings["rtol"],
        "atol": call.settings["atol"],
        "adjoint": call.adjoint,
    }
    if call.settings.get("options") is not None:
        out["options"] = dict(call.settings["options"])
    for name in ("rtol", "atol"):
        if isinstance(out[name], Tensor):
            if out[name].numel() != 1:
                raise _Unreadable(f"it passes a per-component {name}, which TorchdiffeqModel does not take")
            out[name] = float(out[name])
    return out


def _read_horizon(call: OdeintCall) -> float:
    t, returned = call.t, call.returned
    if not isinstance(t, Tensor) or t.ndim != 1 or t.shape[0] < 2:
        raise _Unreadable(f"its integration times are not a 1-D tensor of at least 2 times (got {t!r})")
    times = [float(v) for v in t.detach().cpu()]
    if times[0] != 0.0:
        raise _Unreadable(f"it integrates from t = {times[0]:g}; LyapunovTrainer integrates from t = 0")
    if not isinstance(returned, Tensor) or returned.shape != call.y0.shape:
        got = tuple(returned.shape) if isinstance(returned, Tensor) else type(returned).__name__
        raise _Unreadable(f"it does not return one state of the solution (got {got} for states {tuple(call.y0.shape)})")
    k = float(returned.reshape(-1)[0])
    if not bool((returned == k).all()) or k != int(k) or not 0 < k < len(times):
        raise _Unreadable("it post-processes the solution instead of returning out[k] for one time k > 0")
    t_end = times[int(k)]
    if any(b <= a for a, b in zip(times[: int(k)], times[1 : int(k) + 1], strict=True)):
        raise _Unreadable(f"its integration times are not increasing: {times}")
    return t_end


def _func_name(block: nn.Module, func: Any) -> str:
    for name, child in block.named_children():
        if child is func:
            return f"block.{name}"
    return "func"


def _conversion(index: int, block: nn.Module, call: Optional[OdeintCall]) -> str:
    func = _func_name(block, call.func) if call is not None else "block.<vector field>"
    parts = [func]
    if index >= 0:
        parts += [f"encoder=model[:{index}]", f"readout=model[{index + 1}:]"]
    settings = call.settings if call is not None else {}
    parts.append(f"method={settings.get('method') or 'dopri5'!r}")
    parts += [f"{name}={settings[name]!r}" if name in settings else f"{name}=..." for name in ("rtol", "atol")]
    if call is not None and call.adjoint:
        parts.append("adjoint=True")
    return f"TorchdiffeqModel({', '.join(parts)})"


def from_ode_block(model: nn.Module) -> TorchdiffeqModel:
    """Present ``model`` (an ODE block, alone or in an ``nn.Sequential``; see the module
    docstring) as a :class:`TorchdiffeqModel` with the block's own solver settings (Eq. 1-3).

    The returned model shares the user's layers: training it trains ``model``.
    """
    index = find_ode_block(model)
    if index is None:
        raise TypeError(f"model must be an ODE block calling torchdiffeq's odeint, got {type(model).__name__}")
    sequential = cast(nn.Sequential, model)
    block: nn.Module = model if index == -1 else sequential[index]
    call: Optional[OdeintCall] = None
    try:
        call = trace_ode_block(block)
        settings = _settings(call)
        t_end = _read_horizon(call)
        func = call.func
        func_params = {id(p) for p in func.parameters()} if isinstance(func, nn.Module) else set()
        if any(id(p) not in func_params for p in block.parameters()):
            raise _Unreadable("it has trainable parameters outside the vector field it integrates")
        if not callable(func):
            raise _Unreadable(f"it integrates a {type(func).__name__}, not a callable func(t, y)")
    except _Unreadable as err:
        where = "" if index == -1 else f" at position {index} of the nn.Sequential"
        raise TypeError(
            f"could not read the ODE block {type(block).__name__}{where}: {err}. Build the model explicitly "
            f"instead (lyapunov_plugin.adapters.torchdiffeq.TorchdiffeqModel):\n  {_conversion(index, block, call)}"
        ) from err
    encoder = None if index <= 0 else sequential[:index]
    readout = None if index == -1 or index == len(sequential) - 1 else sequential[index + 1 :]
    return TorchdiffeqModel(func, encoder=encoder, readout=readout, t_end=t_end, **settings)
