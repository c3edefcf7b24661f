"""The trained model as a plain differentiable classifier ``x -> psi(eta(t_end))`` (paper Eq. 3).

Its own module (not ``model``), because it accepts any model the dispatcher wraps: the
dispatcher depends on the protocol in ``model``, so ``model`` cannot depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ._typing import Solver
from ._validation import check_positive, time_dtype
from .dispatch import as_lyapunov_model
from .model import horizon, integrate

__all__ = ["Classifier"]


class Classifier(nn.Module):
    """``x -> psi(eta(t_end))`` as a plain differentiable ``nn.Module`` (paper Eq. 3): the
    trained model as attack libraries and other tools expect a classifier.

    Unlike ``LyapunovTrainer.predict`` it keeps gradients, so torchattacks (PGD, APGD,
    AutoAttack, ...) can attack it. Attack through a fixed-step ``solver``
    (:class:`~lyapunov_plugin.FixedStepSolver`): adaptive step control masks gradients
    (docs/evaluation.md).

    Arguments:
        model: a :class:`LyapunovModel` (or a model the dispatcher wraps).
        solver: ``solver(func, y0, ts)``; ``None`` uses the model's own solver.
        t_end: prediction time (default the model's horizon); ``t_end < 1`` attacks the
            early-terminated prediction.
        input_shape: the shape of one example. When given, inputs are reshaped to
            ``(x.shape[0], *input_shape)``, so tabular data can travel through libraries
            that require image-shaped tensors: torchattacks' APGD / APGD-T add a leading
            dimension to anything that is not 4-D, so pass ``x.reshape(B, 1, 1, d)``
            with ``input_shape=(d,)``.
    """

    def __init__(
        self,
        model: Any,
        *,
        solver: Optional[Solver] = None,
        t_end: Optional[float] = None,
        input_shape: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        self.model = as_lyapunov_model(model)
        if solver is not None and not callable(solver):
            raise TypeError(f"solver must be callable as solver(func, y0, ts) or None, got {type(solver).__name__}")
        self.solver = solver
        self.t_end = check_positive("t_end", t_end) if t_end is not None else horizon(self.model)
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, Sequence) else None
            if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
                raise ValueError(f"input_shape must be a non-empty sequence of positive ints, got {input_shape!r}")
            self.input_shape: Optional[tuple[int, ...]] = shape
        else:
            self.input_shape = None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_shape is not None:
            per_example = 1
            for d in self.input_shape:
                per_example *= d
            if x.numel() != x.shape[0] * per_example:
                raise ValueError(
                    f"x must hold {per_example} values per example (input_shape={self.input_shape}), "
                    f"got shape {tuple(x.shape)}"
                )
            x = x.reshape(x.shape[0], *self.input_shape)
        ts = torch.tensor([0.0, self.t_end], dtype=time_dtype(x), device=x.device)
        if self.solver is None:
            final = self.model.trajectory(x, ts)[-1]
        else:
            final = integrate(self.model, x, ts, solver=self.solver)[-1]
        return self.model.readout(final)
