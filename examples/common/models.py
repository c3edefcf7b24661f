"""Model builders shared by the examples and benchmarks (paper Eq. 1-3).

The digits models follow the setting of the LyaNet-on-real-data study: a data-controlled
Neural ODE with an MLP encoder, a 10-dimensional state (one per class), ``eta(0) = 0`` and
the identity readout. Normalisation is the first layer of the encoder, so the model's
input is the [0, 1] image (the robustness protocol's threat model).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from lyapunov_plugin import FixedStepSolver, ODEModel, appendix_b_half_width
from lyapunov_plugin.blocks import LipschitzMLP, MLPDynamics, SimplexDynamics, Standardize

TRAIN_SOLVER = FixedStepSolver(method="rk4", steps=10)


def dopri5(rtol: float = 1e-3, atol: float = 1e-3, first_step: Optional[float] = None) -> Any:
    """torchdiffeq's dopri5 with the protocol's tolerances, as a ``solver(func, y0, ts)``.

    ``first_step``: torchdiffeq picks the first step from the initial state; from
    ``eta(0) = 0`` it starts at 1e-6 and may grow the step only tenfold per step, which
    alone costs about 32 evaluations to reach ``t = 1`` for any vector field. Setting it
    shows the part of the NFE that the dynamics themselves cause.
    """
    import torchdiffeq

    options = {"first_step": first_step} if first_step is not None else None
    return partial(torchdiffeq.odeint, method="dopri5", rtol=rtol, atol=atol, options=options)


def image_encoder(
    x_train: torch.Tensor,
    *,
    out_dim: int,
    hidden: int = 64,
    lipschitz: Optional[float] = None,
    activation: str = "relu",
) -> nn.Module:
    """Flatten -> standardise (training statistics) -> 2-layer MLP; spectrally normalised
    with overall scale ``lipschitz`` if given."""
    in_dim = int(x_train[0].numel())
    standardize = Standardize.fit(x_train.flatten(1))
    if lipschitz is not None:
        mlp: nn.Module = LipschitzMLP([in_dim, hidden, out_dim], lipschitz=lipschitz, activation=activation)
    else:
        act = {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        mlp = nn.Sequential(nn.Linear(in_dim, hidden), act(), nn.Linear(hidden, out_dim))
    return nn.Sequential(nn.Flatten(), standardize, mlp)


def digits_node(
    x_train: torch.Tensor,
    *,
    num_classes: int = 10,
    context_dim: int = 32,
    hidden: int = 64,
    dynamics: str = "mlp",
    lipschitz: Optional[float] = None,
    kappa: float = 5.0,
    gain: Optional[float] = None,
    solver: Any = TRAIN_SOLVER,
) -> ODEModel:
    """Data-controlled Neural ODE for image classification, ``eta(0) = 0``, identity readout.

    Arguments:
        dynamics: ``"mlp"`` (:class:`~lyapunov_plugin.blocks.MLPDynamics`) or ``"simplex"``
            (:class:`~lyapunov_plugin.blocks.SimplexDynamics` with Appendix-B corners for ``kappa``).
        lipschitz: spectrally normalise the encoder to this l2 scale (``None``: plain MLP).
        gain: simplex contraction rate (default ``2 * kappa``).
    """
    encoder = image_encoder(x_train, out_dim=context_dim, hidden=hidden, lipschitz=lipschitz)
    if dynamics == "mlp":
        field: nn.Module = MLPDynamics(num_classes, context_dim, (hidden,))
    elif dynamics == "simplex":
        field = SimplexDynamics(
            num_classes,
            context_dim,
            half_width=appendix_b_half_width(kappa, num_classes),
            gain=gain if gain is not None else 2.0 * kappa,
            hidden=(hidden,),
        )
    else:
        raise ValueError(f"dynamics must be 'mlp' or 'simplex', got {dynamics!r}")
    return ODEModel(field, state_shape=(num_classes,), encoder=encoder, solver=solver)
