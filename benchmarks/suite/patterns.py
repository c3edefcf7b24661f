"""The model patterns users already have (issue 7), each built as its own library would.

Every builder returns the *user's* model, not a protocol object: the suite hands it to
``LyapunovTrainer`` unchanged, exactly as a user would. Construction is seeded, so both
training methods start from the same weights.

- ``dc``: torchdyn ``NeuralODE`` whose field starts with ``DataControl`` (``eta(0) = x``),
  followed by a linear readout;
- ``plain``: torchdyn ``NeuralODE(f)`` on the input itself, linear readout;
- ``augmented``: ``nn.Sequential(Augmenter(1, 8), NeuralODE(f), nn.Linear)`` (ANODE);
- ``enc_dc``: ``nn.Sequential(nn.Linear, NeuralODE(DataControl field), nn.Linear)``;
- ``torchdiffeq``: a torchdiffeq ``func(t, y)`` between a linear encoder and readout;
- ``paper``: the paper's data-controlled model (``ODEModel``): MLP encoder, MLP dynamics
  ``f(eta, c, t)``, ``eta(0) = 0``, identity readout (state = logits);
- ``bare``: torchdyn's quick-start model, a bare ``NeuralODE(f)`` with no readout: ``eta(0) = x``
  and the state is the logits (or the regression output), so it applies only where the input
  dimension equals the output's (:func:`applies`).

torchdyn and torchdiffeq models integrate with dopri5 (rtol = atol = 1e-3), the
``ODEModel`` with its default RK4 (20 steps).

On an image problem (issue 13) the input layer is a small convolutional encoder
(:func:`conv_encoder`, the shape of torchdiffeq's ``odenet_mnist`` downsampling, narrower)
into ``LATENT`` features: it replaces the linear encoder of ``enc_dc``, ``torchdiffeq`` and
``paper`` and is put in front of ``plain`` and ``augmented`` (``IMAGE_PATTERNS``; ``dc`` on
conv features is ``enc_dc``, and ``bare`` has no input layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

HIDDEN = 64
LATENT = 32
AUGMENT = 8
TOLERANCE = 1e-3


def _mlp(n_in: int, n_out: int, hidden: int = HIDDEN) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, n_out))


def _node(field: nn.Module):
    from torchdyn.core import NeuralODE

    return NeuralODE(field, solver="dopri5", atol=TOLERANCE, rtol=TOLERANCE, return_t_eval=False)


def data_control(d: int, m: int) -> nn.Module:
    from torchdyn.nn import DataControl

    field = nn.Sequential(DataControl(), _mlp(2 * d, d))
    return nn.Sequential(_node(field), nn.Linear(d, m))


def plain(d: int, m: int) -> nn.Module:
    return nn.Sequential(_node(_mlp(d, d)), nn.Linear(d, m))


def augmented(d: int, m: int) -> nn.Module:
    from torchdyn.nn import Augmenter

    width = d + AUGMENT
    return nn.Sequential(Augmenter(1, AUGMENT), _node(_mlp(width, width)), nn.Linear(width, m))


def encoder_data_control(d: int, m: int, encoder: Optional[nn.Module] = None) -> nn.Module:
    from torchdyn.nn import DataControl

    field = nn.Sequential(DataControl(), _mlp(2 * LATENT, LATENT))
    encoder = nn.Linear(d, LATENT) if encoder is None else encoder
    return nn.Sequential(encoder, _node(field), nn.Linear(LATENT, m))


class _Func(nn.Module):
    """A torchdiffeq vector field, ``forward(t, y)``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = _mlp(width, width)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def torchdiffeq_func(d: int, m: int, encoder: Optional[nn.Module] = None) -> nn.Module:
    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

    return TorchdiffeqModel(
        _Func(LATENT),
        encoder=nn.Linear(d, LATENT) if encoder is None else encoder,
        readout=nn.Linear(LATENT, m),
        method="dopri5",
        rtol=TOLERANCE,
        atol=TOLERANCE,
    )


def paper(d: int, m: int, encoder: Optional[nn.Module] = None) -> nn.Module:
    from lyapunov_plugin import ODEModel
    from lyapunov_plugin.blocks import MLPDynamics

    if encoder is None:
        encoder = nn.Sequential(nn.Linear(d, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, LATENT))
    return ODEModel(MLPDynamics(m, LATENT, hidden=(HIDDEN,)), state_shape=(m,), encoder=encoder)


def bare(d: int, m: int) -> nn.Module:
    if d != m:
        raise ValueError(f"the bare pattern needs as many features as outputs (state = logits), got d={d}, m={m}")
    return _node(_mlp(d, d))


BUILDERS: dict[str, Callable[[int, int], nn.Module]] = {
    "dc": data_control,
    "plain": plain,
    "augmented": augmented,
    "enc_dc": encoder_data_control,
    "torchdiffeq": torchdiffeq_func,
    "paper": paper,
    "bare": bare,
}
PATTERNS: tuple[str, ...] = tuple(BUILDERS)
IMAGE_PATTERNS: tuple[str, ...] = ("enc_dc", "plain", "augmented", "torchdiffeq", "paper")


def conv_encoder(image_shape: tuple[int, int, int], width: int = LATENT) -> nn.Sequential:
    """Flattened ``(C, H, W)`` images -> ``width`` features: two stride-2 3x3 convolutions
    (16 and 32 channels, ReLU) and a linear layer."""
    c, h, w = image_shape
    return nn.Sequential(
        nn.Unflatten(1, image_shape),
        nn.Conv2d(c, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * -(-h // 4) * -(-w // 4), width),
    )


def _image_model(pattern: str, image_shape: tuple[int, int, int], m: int) -> nn.Module:
    encoder = conv_encoder(image_shape)
    if pattern in ("plain", "augmented"):
        return nn.Sequential(encoder, *BUILDERS[pattern](LATENT, m))
    encoded: dict[str, Callable[..., nn.Module]] = {
        "enc_dc": encoder_data_control,
        "torchdiffeq": torchdiffeq_func,
        "paper": paper,
    }
    return encoded[pattern](LATENT, m, encoder)


def applies(pattern: str, d: int, m: int, *, image: bool = False) -> bool:
    """Whether ``pattern`` can be built for ``d`` features and ``m`` outputs: every pattern
    ends in a layer of width ``m`` except ``bare``, whose output is its ``d``-dimensional state;
    an image problem takes the ``IMAGE_PATTERNS``."""
    if image:
        return pattern in IMAGE_PATTERNS
    return pattern != "bare" or d == m


def build(pattern: str, d: int, m: int, *, seed: int, image_shape: Optional[tuple[int, int, int]] = None) -> nn.Module:
    """The user's model for ``pattern`` on ``d`` features and ``m`` classes, seeded; with
    ``image_shape`` (the features are flattened images) the convolutional variant."""
    if pattern not in BUILDERS:
        raise ValueError(f"pattern must be one of {list(PATTERNS)}, got {pattern!r}")
    if image_shape is not None and pattern not in IMAGE_PATTERNS:
        raise ValueError(f"pattern must be one of {list(IMAGE_PATTERNS)} on an image problem, got {pattern!r}")
    torch.manual_seed(seed)
    if image_shape is not None:
        return _image_model(pattern, image_shape, m)
    return BUILDERS[pattern](d, m)
