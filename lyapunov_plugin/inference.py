"""Inference with a trained model (paper Eq. 3): predictions at ``t_end`` (``t_end < 1`` is
early termination) and their error and loss on a data set. The trainer's ``predict`` and
``evaluate`` call these; they work on any :class:`~lyapunov_plugin.LyapunovModel`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._typing import Solver
from ._validation import as_labels, as_model_dtype, check_tensor, floating_dtype_of, parameter_device
from .diagnostics import iter_batches, states_along
from .model import LyapunovModel
from .potentials import Potential

__all__ = ["EvalMode", "explain_integer_input", "model_input", "predict", "evaluate"]


class EvalMode:
    """Context manager: the model in eval mode inside the block (rollouts and predictions
    must not update BatchNorm statistics or draw dropout masks), then every module's own
    mode restored: a model trained with some layers frozen in eval mode (a BatchNorm kept
    at its running statistics, say) keeps them so. A model that is not an ``nn.Module`` is
    left alone. An instance may be entered again inside its own block.

    Cheap on the training path (the Monte Carlo rollout enters it every step): a model
    already in eval mode is not touched, and where no module overrides ``train`` (on its
    class or on the instance) the flags are set directly instead of through ``train()``'s
    recursion. A model with an override gets ``eval()`` on entry and ``train(mode)`` on exit,
    so the override runs both ways, and then each module's recorded flag is put back."""

    def __init__(self, model: Any) -> None:
        self.model = model if isinstance(model, nn.Module) else None
        self._saved: list[tuple[list[tuple[nn.Module, bool]], bool]] = []

    def __enter__(self) -> None:
        if self.model is None:
            return
        modules = list(self.model.modules())
        flags = [(m, m.training) for m in modules]
        if not any(flag for _, flag in flags):
            self._saved.append((flags, False))  # already in eval mode: nothing to set or undo
            return
        overridden = any(type(m).train is not nn.Module.train or "train" in vars(m) for m in modules)
        self._saved.append((flags, overridden))
        if overridden:
            self.model.eval()
        else:
            for m in modules:
                m.training = False

    def __exit__(self, *exc: Any) -> None:
        if not self._saved:
            return
        flags, overridden = self._saved.pop()
        if overridden and self.model is not None:
            self.model.train(flags[0][1])  # the root's mode, through the override
        for module, flag in flags:
            if module.training != flag:
                module.training = flag


@contextlib.contextmanager
def explain_integer_input(x: Tensor) -> Iterator[None]:
    """Integer inputs are legitimate for an embedding input layer, so they are passed on; if
    the model then fails on them, say that the dtype of ``x`` is the likely cause."""
    try:
        yield
    except RuntimeError as err:
        if x.is_floating_point():
            raise
        raise TypeError(
            f"x has dtype {x.dtype} and the model failed on it ({err}); pass floating-point inputs "
            "(e.g. x.float(), or x.float() / 255 for uint8 images)"
        ) from err


def model_input(model: Any, x: Tensor, device: Optional[torch.device] = None) -> Tensor:
    """``x`` on ``device`` (default: the model's), floating inputs in the model's floating
    dtype (numpy arrays become float64 tensors; a float32 model would fail deep inside)."""
    x = as_model_dtype(x, floating_dtype_of(model))
    device = device if device is not None else parameter_device(model)
    return x.to(device) if device is not None else x


def predict(model: LyapunovModel, x: Tensor, *, t_end: float, solver: Optional[Solver] = None) -> Tensor:
    """``psi(eta(t_end))`` without gradients (eval mode): the model's own solver, or
    ``solver`` through the protocol. ``x`` must already be on the model's device and dtype
    (:func:`model_input`)."""
    ts = torch.tensor(
        [0.0, t_end], device=x.device, dtype=x.dtype if x.is_floating_point() else torch.get_default_dtype()
    )
    with EvalMode(model), torch.no_grad(), explain_integer_input(x):
        return model.readout(states_along(model, x, ts, solver=solver)[-1])


def evaluate(
    model: LyapunovModel,
    loader: Any,
    *,
    potential: Potential,
    t_end: float,
    solver: Optional[Solver] = None,
    device: Optional[torch.device] = None,
) -> dict[str, float]:
    """Mean potential (the supervised loss) of :func:`predict` over a loader, and the error
    rate when the targets are class labels."""
    if loader is None or isinstance(loader, (str, bytes, Tensor)):
        raise TypeError(
            f"loader must be an (x, y) pair of tensors or an iterable of (x, y) batches, got {type(loader).__name__}"
        )
    errors, loss, count = 0.0, 0.0, 0
    classes = True
    for x, y in iter_batches(loader):
        check_tensor("x", x, min_ndim=1)
        check_tensor("y", y, min_ndim=1)
        y = as_labels(y).to(device) if device is not None else as_labels(y)
        out = predict(model, model_input(model, x, device), t_end=t_end, solver=solver)
        if y.is_floating_point() and out.is_floating_point():
            y = y.to(out.dtype)  # regression targets in the model's precision
        potential.validate(out, y)  # labels in range, shapes: a clear error
        if y.is_floating_point():
            classes = False
        else:
            errors += float((out.argmax(-1) != y).sum())
        loss += float(potential.value(out, y).sum())
        count += int(y.shape[0])
    if count == 0:
        raise ValueError("loader yielded no batches; evaluate needs at least one (x, y) batch")
    result = {"loss": loss / count}
    if classes:
        result = {"error": errors / count, **result}
    return result
