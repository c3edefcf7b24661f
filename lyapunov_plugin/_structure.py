"""Recognising the parts of the models the library reads layer by layer.

:mod:`lyapunov_plugin.certify` (bound propagation) and :mod:`lyapunov_plugin.speed`
(a bound on how fast the outputs can move) both need the user's modules themselves, not
only the protocol's functions: the torchdyn ``NeuralODE`` inside a model and the
``nn.Module`` that is its vector field. torchdyn is recognised by class name so that the
core never imports it.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["layer_type", "is_torchdyn_node", "torchdyn_parts", "torchdyn_field", "unwrap_adapter"]


def layer_type(module: nn.Module) -> type:
    """The class of ``module`` as its user wrote it: ``torch.nn.utils.parametrize`` swaps
    the class for a subclass of the original (e.g. ``ParametrizedLinear`` of ``nn.Linear``),
    whose weight is computed on access."""
    kind = type(module)
    return kind.__bases__[0] if parametrize.is_parametrized(module) else kind


def is_torchdyn_node(module: Any) -> bool:
    return type(module).__name__ == "NeuralODE" and type(module).__module__.startswith("torchdyn")


def unwrap_adapter(model: Any) -> Any:
    """The model that the trainer's torchdyn view (``adapters.torchdyn.TorchdynModel``,
    recognised by name: the core never imports the adapters) wraps; ``model`` otherwise."""
    wrapped = getattr(model, "model", None)
    if type(model).__name__ == "TorchdynModel" and isinstance(wrapped, nn.Module):
        return wrapped
    return model


def torchdyn_parts(model: Any) -> Optional[tuple[list[nn.Module], Any, list[nn.Module]]]:
    """``(modules before, the NeuralODE, modules after)`` for a torchdyn ``NeuralODE`` alone
    or as the one ``NeuralODE`` of an ``nn.Sequential``; ``None`` for anything else."""
    if is_torchdyn_node(model):
        return [], model, []
    if type(model) is nn.Sequential:
        index = [i for i, m in enumerate(model) if is_torchdyn_node(m)]
        if len(index) == 1:
            return list(model[: index[0]]), model[index[0]], list(model[index[0] + 1 :])
    return None


def torchdyn_field(node: Any, who: str) -> nn.Module:
    """The user's vector-field module of a torchdyn ``NeuralODE``, called as ``module(x)``.

    Raises ``NotImplementedError`` (naming ``who``) for fields that take the time as an
    argument, carry an integral loss or are of second order: what they compute is not the
    module's output alone."""
    defunc = node.vf  # DEFunc -> DEFuncBase -> the user's module
    base = defunc.vf
    if (
        getattr(base, "has_time_arg", True)
        or getattr(defunc, "integral_loss", None) is not None
        or getattr(defunc, "order", 1) != 1
    ):
        raise NotImplementedError(
            f"{who} supports first-order torchdyn vector fields called as forward(x) (time through DepthCat), "
            "without integral losses"
        )
    return base.vf
