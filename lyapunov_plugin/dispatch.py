"""Choosing how ``LyapunovTrainer(model)`` reads a model (paper Eq. 1-3 protocol).

A model that implements :class:`~lyapunov_plugin.LyapunovModel` is used as it is; any other
model goes to the first adapter in :mod:`lyapunov_plugin.registry` that claims it. The core
names no ODE library: the builtin adapters register themselves in
``lyapunov_plugin.adapters``, each asked only once its library has been imported.
"""

from __future__ import annotations

from typing import Any

from .model import LyapunovModel, is_lyapunov_model
from .registry import registered_adapters

__all__ = ["as_lyapunov_model", "supported_models"]

_PROTOCOL = (
    "anything implementing the LyapunovModel protocol: encode(x) -> (context, eta0), "
    "vector_field(eta, context, t), readout(eta), trajectory(x, ts) "
    "(lyapunov_plugin.ODEModel builds one from plain PyTorch modules; "
    "lyapunov_plugin.NeuralODEAdapter is a base class for new adapters)"
)


def supported_models() -> str:
    """What ``as_lyapunov_model`` accepts (Eq. 1-3 models): one line per registered adapter,
    then the protocol; the text of the unsupported-model error."""
    lines = ["Supported models (registered adapters, asked in this order):"]
    for entry in registered_adapters():
        needs = f" [asked once {entry.requires} is imported]" if entry.requires else ""
        lines.append(f"  - {entry.name}: {entry.description or 'see its adapter'}{needs};")
    lines.append(f"  - {_PROTOCOL}.")
    lines.append("A new backend registers with lyapunov_plugin.register_adapter(name, matches=..., wrap=...).")
    return "\n".join(lines)


def as_lyapunov_model(model: Any) -> LyapunovModel:
    """Return ``model`` as a :class:`~lyapunov_plugin.LyapunovModel` (Eq. 1-3), wrapping it
    in the first registered adapter that claims it; raise ``TypeError`` listing the
    registered adapters otherwise."""
    if is_lyapunov_model(model):
        return model
    for entry in registered_adapters():
        if entry.applies() and entry.matches(model):
            return entry.wrap(model)
    raise TypeError(f"model of type {type(model).__name__} is not supported by LyapunovTrainer.\n{supported_models()}")
