"""Adapters that present existing Neural ODE models as a :class:`~lyapunov_plugin.LyapunovModel`.

Installed as ``lyapunov_plugin.adapters``. This package is the only place that imports
torchdyn, torchdiffeq or torchode; each submodule imports its library on first use only.
Importing the package registers the builtin adapters with :mod:`lyapunov_plugin.registry`
(the dispatcher imports it on its first lookup). Each ``matches`` below imports its
submodule only when the adapter is asked, i.e. once the user has imported the library.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from lyapunov_plugin.model import LyapunovModel
from lyapunov_plugin.registry import register_adapter


def _is_torchdyn(model: Any) -> bool:
    from .torchdyn import is_torchdyn_model

    return is_torchdyn_model(model)


def _wrap_torchdyn(model: Any) -> LyapunovModel:
    from .torchdyn import TorchdynModel

    return TorchdynModel(model)


def _has_ode_block(model: Any) -> bool:
    from .torchdiffeq_block import find_ode_block

    return find_ode_block(model) is not None


def _wrap_ode_block(model: Any) -> LyapunovModel:
    from .torchdiffeq_block import from_ode_block

    return from_ode_block(model)


def _is_torchode(model: Any) -> bool:
    from .torchode import is_torchode_model

    return is_torchode_model(model)


def _wrap_torchode(model: Any) -> LyapunovModel:
    from .torchode import TorchodeModel

    return TorchodeModel(model)


def _looks_like_torchdiffeq_func(model: Any) -> bool:
    """An ``nn.Module`` whose ``forward`` takes ``(t, y, ...)``: torchdiffeq's vector-field
    convention. Needs no library, so it is asked even before torchdiffeq is imported."""
    if not isinstance(model, nn.Module):
        return False
    params = list(inspect.signature(model.forward).parameters)
    return len(params) >= 2 and params[0] == "t"


def _wrap_torchdiffeq_func(model: Any) -> LyapunovModel:
    from .torchdiffeq import TorchdiffeqModel

    return TorchdiffeqModel(model)


register_adapter(
    "torchdyn",
    matches=_is_torchdyn,
    wrap=_wrap_torchdyn,
    requires="torchdyn",
    description="a torchdyn NeuralODE, alone or inside an nn.Sequential (layers before it form the input "
    "layer phi, layers after it the readout psi), with or without DataControl/DepthCat",
    fallback=True,
    replace=True,
)
register_adapter(
    "torchdiffeq-block",
    matches=_has_ode_block,
    wrap=_wrap_ode_block,
    requires="torchdiffeq",
    description="an ODE block whose forward(x) calls torchdiffeq's odeint/odeint_adjoint(func, x, t, ...), "
    "alone or inside an nn.Sequential (layers before it: input layer, after it: readout), as in "
    "torchdiffeq's odenet_mnist example",
    fallback=True,
    replace=True,
)
register_adapter(
    "torchode",
    matches=_is_torchode,
    wrap=_wrap_torchode,
    requires="torchode",
    description="a torchode AutoDiffAdjoint solver or ODETerm (wrap it in "
    "lyapunov_plugin.adapters.torchode.TorchodeModel to add an encoder or readout)",
    fallback=True,
    replace=True,
)
register_adapter(
    "torchdiffeq",
    matches=_looks_like_torchdiffeq_func,
    wrap=_wrap_torchdiffeq_func,
    description="a torchdiffeq vector field: an nn.Module with forward(t, y) or forward(t, y, context) "
    "(wrap it in lyapunov_plugin.adapters.torchdiffeq.TorchdiffeqModel to add an encoder, readout, "
    "solver settings or the adjoint)",
    fallback=True,
    replace=True,
)
