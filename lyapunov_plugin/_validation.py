"""Input checks shared by every public entry point.

Each check raises a ``TypeError`` (wrong kind of object) or ``ValueError`` (right kind,
wrong value) whose message names the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"Tensor(shape={tuple(value.shape)}, dtype={value.dtype}, device={value.device})"
    shape = getattr(value, "shape", None)
    if isinstance(shape, tuple):  # an array (numpy, ...): its shape, not its whole repr
        return f"{type(value).__name__} of shape {shape} (convert it with torch.as_tensor)"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 200 else text[:200] + '...'}"


def check_real(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``TypeError`` if it is not a real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    as_float = float(value)
    if not math.isfinite(as_float):
        raise ValueError(f"{name} must be finite, got {as_float}")
    return as_float


def check_positive(name: str, value: Any) -> float:
    """A finite real number > 0."""
    as_float = check_real(name, value)
    if as_float <= 0:
        raise ValueError(f"{name} must be > 0, got {as_float}")
    return as_float


def check_non_negative(name: str, value: Any) -> float:
    """A finite real number >= 0."""
    as_float = check_real(name, value)
    if as_float < 0:
        raise ValueError(f"{name} must be >= 0, got {as_float}")
    return as_float


def check_open_unit(name: str, value: Any) -> float:
    """A real number in the open interval (0, 1)."""
    as_float = check_real(name, value)
    if not 0.0 < as_float < 1.0:
        raise ValueError(f"{name} must lie in the open interval (0, 1), got {as_float}")
    return as_float


_INT64_LIMIT = 2**63


def check_positive_int(name: str, value: Any) -> int:
    """An ``int`` >= 1 (``bool`` is rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if int(value) >= _INT64_LIMIT:
        # torch counts in int64: a larger count would fail inside torch without naming it.
        raise ValueError(f"{name} must be < 2**63 (an int64 count), got {value}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """One of a fixed set of strings; the error lists the valid choices."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {list(choices)}, got {_describe(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_tensor(name: str, value: Any, *, min_ndim: int = 0, floating: bool = False) -> Tensor:
    """A tensor with at least ``min_ndim`` dimensions and a non-empty batch dimension."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {_describe(value)}")
    if value.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(value.shape)}")
    if min_ndim >= 1 and value.shape[0] == 0:
        raise ValueError(f"{name} must have a non-empty batch dimension, got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {value.dtype}")
    return value


def check_time_grid(name: str, ts: Any) -> Tensor:
    """Times to report a trajectory at: a finite, strictly increasing, floating-point 1-D
    tensor with at least two entries (the first is where integration starts)."""
    check_tensor(name, ts, min_ndim=1, floating=True)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 times, got shape {tuple(ts.shape)}")
    check_finite(name, ts)
    if not bool((ts[1:] > ts[:-1]).all()):
        raise ValueError(f"{name} must be strictly increasing, got {ts.tolist() if ts.numel() <= 8 else ts}")
    return ts


def check_finite(name: str, value: Tensor) -> Tensor:
    """Reject NaN or infinite entries (checked without building an autograd graph)."""
    if value.is_floating_point() or value.is_complex():
        with torch.no_grad():
            finite = bool(torch.isfinite(value).all())
        if not finite:
            bad = int((~torch.isfinite(value.detach())).sum())
            raise ValueError(f"{name} must be finite, got {bad} NaN/Inf entr{'y' if bad == 1 else 'ies'}")
    return value


def check_batch(name: str, value: Tensor, reference_name: str, batch: int) -> None:
    """``value.shape[0]`` must equal ``batch``."""
    if value.ndim == 0 or value.shape[0] != batch:
        raise ValueError(
            f"{name} must have batch size {batch} (the batch size of {reference_name}), got shape {tuple(value.shape)}"
        )


def check_shape(name: str, value: Tensor, expected: Sequence[int], expected_from: str) -> None:
    """``value.shape`` must equal ``expected``."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({expected_from}), got {tuple(value.shape)}")


def check_like(name: str, value: Tensor, reference_name: str, reference: Tensor) -> None:
    """Same dtype and device as ``reference``."""
    if value.dtype != reference.dtype:
        raise TypeError(f"{name} must have dtype {reference.dtype} (like {reference_name}), got {value.dtype}")
    if value.device != reference.device:
        raise ValueError(f"{name} must be on device {reference.device} (like {reference_name}), got {value.device}")


def as_labels(y: Tensor) -> Tensor:
    """Integer class labels as ``int64`` (``uint8``/``int16`` labels are common for image
    datasets; ``gather`` and ``cross_entropy`` need ``int64``); other targets unchanged."""
    if not y.is_floating_point() and not y.is_complex() and y.dtype not in (torch.int64, torch.bool):
        return y.long()
    return y


def check_class_labels(name: str, target: Any, batch: int, num_classes: int) -> Tensor:
    """Integer class labels of shape ``(batch,)`` in ``[0, num_classes)``."""
    target = check_tensor(name, target, min_ndim=1)
    if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"{name} must hold integer class labels, got dtype {target.dtype}")
    if target.ndim != 1:
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(target.shape)}")
    check_batch(name, target, "the output", batch)
    bounds = torch.aminmax(target)  # one reduction for both ends (check_tensor refused an empty batch)
    lo, hi = int(bounds.min), int(bounds.max)
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"{name} must lie in [0, {num_classes - 1}] for {num_classes} classes, got values in [{lo}, {hi}]"
        )
    return target


def check_bool(name: str, value: Any) -> bool:
    """A ``bool`` (``0``/``1`` and strings such as ``"false"`` are refused: ``"false"`` is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return value


def check_readout(name: str, readout: Any) -> Any:
    """``None`` (the identity readout) or a callable ``psi(eta)``."""
    if readout is not None and not callable(readout):
        raise TypeError(
            f"{name} must be None (the identity) or a callable psi(eta) -> output, got {_describe(readout)}"
        )
    return readout


def check_generator(name: str, generator: Any) -> Any:
    """``None`` or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator or None, got {_describe(generator)}")
    return generator


def floating_dtype_of(model: Any) -> Any:
    """The dtype of the first floating-point parameter of ``model`` (``None`` when it has none
    or is not an ``nn.Module``): the dtype its layers compute in."""
    parameters = getattr(model, "parameters", None)
    if not isinstance(model, torch.nn.Module) or not callable(parameters):
        return None
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def check_in_range(name: str, x: Tensor, low: float, high: float, *, what: str, advice: str = "") -> None:
    """Every entry of ``x`` in ``[low, high]`` (``what`` names the range in the message, and
    ``advice`` says what to do instead)."""
    lo, hi = (float(v) for v in torch.aminmax(x.detach()))
    if lo < low or hi > high:
        raise ValueError(
            f"{name} must lie in {what}, got values in [{lo:.4g}, {hi:.4g}]" + (f"; {advice}" if advice else "")
        )


def time_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype of a time grid for inputs ``x``: theirs when floating (a float64 model's
    ``t_end`` is not rounded to float32), the default otherwise (``None``)."""
    return x.dtype if x.is_floating_point() else None


def parameter_device(model: Any) -> Optional[torch.device]:
    """The device of the first parameter of ``model`` (``None`` when it has none or is not an
    ``nn.Module``): where its inputs must be."""
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
    return None


def as_model_dtype(value: Tensor, dtype: Any) -> Tensor:
    """A floating-point ``value`` in ``dtype`` (float64 features, numpy's default, for a
    float32 model); integer tensors (class labels) and ``dtype=None`` leave it unchanged."""
    if dtype is not None and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value
