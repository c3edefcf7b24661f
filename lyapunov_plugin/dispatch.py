"""Choosing how ``LyapunovTrainer(model)`` reads a model (paper Eq. 1-3 protocol).

The core never imports an ODE library: a torchdyn model can only exist if the user
already imported torchdyn, so its adapter is only looked up then; likewise for a
torchdiffeq vector field, recognised by its ``forward(t, y, ...)`` signature.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from torch import nn

from .model import LyapunovModel, is_lyapunov_model

__all__ = ["as_lyapunov_model", "SUPPORTED_MODELS"]

SUPPORTED_MODELS = """\
Supported models:
  - a torchdyn NeuralODE, alone or inside an nn.Sequential (layers before it form the
    input layer phi, layers after it the readout psi), with or without DataControl/DepthCat;
  - a torchdiffeq vector field: an nn.Module with forward(t, y) or forward(t, y, context)
    (wrap it in lyapunov_plugin.adapters.torchdiffeq.TorchdiffeqModel to add an encoder,
    readout, solver settings or the adjoint);
  - anything implementing the LyapunovModel protocol: encode(x) -> (context, eta0),
    vector_field(eta, context, t), readout(eta), trajectory(x, ts)
    (lyapunov_plugin.ODEModel builds one from plain PyTorch modules)."""


def _looks_like_torchdiffeq_func(model: Any) -> bool:
    if not isinstance(model, nn.Module):
        return False
    params = list(inspect.signature(model.forward).parameters)
    return len(params) >= 2 and params[0] == "t"


def as_lyapunov_model(model: Any) -> LyapunovModel:
    """Return ``model`` as a :class:`~lyapunov_plugin.LyapunovModel` (Eq. 1-3), wrapping it
    in the matching adapter; raise ``TypeError`` listing what is supported otherwise."""
    if is_lyapunov_model(model):
        return model
    if "torchdyn" in sys.modules and isinstance(model, nn.Module):
        from lyapunov_plugin.adapters.torchdyn import TorchdynModel, is_torchdyn_model

        if is_torchdyn_model(model):
            return TorchdynModel(model)
    if _looks_like_torchdiffeq_func(model):
        from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

        return TorchdiffeqModel(model)
    raise TypeError(f"model of type {type(model).__name__} is not supported by LyapunovTrainer.\n{SUPPORTED_MODELS}")
