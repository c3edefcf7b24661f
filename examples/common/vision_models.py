"""The three model classes of paper Table 1 (Section 5.1) for MNIST-5k / FashionMNIST / CIFAR.

- ``resnet18``: ResNet-18 (He et al., 2015) adapted to small images (3x3 stride-1 stem,
  no max-pool), a plain classifier, the reference row;
- ``node``: a data-controlled Neural ODE (the paper's "Neural ODE" / "LyaNet" rows): a
  ResNet-18 trunk maps the image to a context vector, the dynamics
  ``f(eta, x, t) = MLP([eta, context, t])`` act on a state with one dimension per class,
  ``eta(0) = 0`` and the readout is the identity (paper Eq. 1-3);
- ``continuous``: a continuous-in-depth network (Queiruga et al., 2020; the paper's
  "Continuous" / "Continuous LyaNet" rows): convolutional stem, one ODE block whose
  state is a feature map and whose dynamics are a small convolutional net with a time
  channel, then average pooling to a coarse grid and a linear readout.

Every model takes images in [0, 1]; per-dataset channel normalisation is its first layer
(:class:`~lyapunov_plugin.blocks.Standardize`), so attacks are measured in pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torchvision.models import resnet18 as torchvision_resnet18
from torchvision.models.resnet import BasicBlock

from lyapunov_plugin import FixedStepSolver, ODEModel, Solution
from lyapunov_plugin.blocks import MLPDynamics, Standardize

__all__ = [
    "CHANNEL_STATS",
    "CONTINUOUS_READOUT_GRID",
    "RESNET18_WIDTH",
    "TRAIN_STEPS",
    "ConvDynamics",
    "FlowParts",
    "StaticFlow",
    "assemble",
    "continuous_parts",
    "node_parts",
    "resnet18",
    "resnet18_classifier",
    "standardize",
]

#: Per-channel mean and standard deviation of the training images in [0, 1] (the usual
#: published constants of each training set).
CHANNEL_STATS = {
    "fashionmnist": ((0.2860,), (0.3530,)),
    # MNIST's published constants; MNIST-5k's 4,000 training digits give 0.131 / 0.308.
    "mnist5k": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
#: Channels of ResNet-18's first stage; the stages have 1, 2, 4 and 8 times this many.
RESNET18_WIDTH = 64
#: ResNet-18 has two basic blocks in each of its four stages.
_RESNET18_BLOCKS = 2
_RESNET18_STAGES = 4
#: Fixed RK4 steps over [0, 1] for training (backpropagation through the solver) and
#: for evaluation: the robustness protocol attacks through this solver.
TRAIN_STEPS = 10
#: The continuous net's stem halves the resolution, so that the 4 * TRAIN_STEPS
#: evaluations of its convolutional dynamics per RK4 solve work on 16x16 (CIFAR) or
#: 14x14 (FashionMNIST) feature maps.
CONTINUOUS_STEM_STRIDE = 2
#: The continuous net's readout average-pools its final feature map to this grid (per
#: side) before the linear layer. Its stem is two convolutions deep, so each feature sees a
#: small patch; global pooling (grid 1) would keep only *how much* of each local pattern an
#: image has, not *where*, and left the MNIST-5k net near chance after a few epochs
#: (docs/vision.md, ``benchmarks/results/vision_mnist5k_val_*``).
CONTINUOUS_READOUT_GRID = 4


def standardize(dataset: str) -> Standardize:
    """``(x - mean) / std`` with the dataset's channel statistics shaped ``(1, C, 1, 1)``."""
    if dataset not in CHANNEL_STATS:
        raise ValueError(f"dataset must be one of {sorted(CHANNEL_STATS)}, got {dataset!r}")
    mean, std = CHANNEL_STATS[dataset]
    return Standardize(torch.tensor(mean).reshape(1, -1, 1, 1), torch.tensor(std).reshape(1, -1, 1, 1))


def _small_image_stem(in_channels: int, width: int) -> nn.Conv2d:
    """3x3 stride-1 convolution: the CIFAR variant of ResNet's first layer (He et al., 2015)."""
    return nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)


def narrow_resnet18(in_channels: int, num_classes: int, width: int) -> nn.Module:
    """ResNet-18's topology (torchvision ``BasicBlock``, stages of ``width * (1, 2, 4, 8)``
    channels) with a small-image stem, for widths other than 64 (smoke tests, CPUs).

    At ``width = 64`` it has exactly the parameter shapes of :func:`resnet18`; the
    convolutions are initialised like torchvision's.
    """
    layers: list[nn.Module] = [_small_image_stem(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    inplanes = width
    for stage in range(_RESNET18_STAGES):
        planes = width * 2**stage
        for block in range(_RESNET18_BLOCKS):
            stride = 2 if stage > 0 and block == 0 else 1
            downsample = None
            if stride != 1 or inplanes != planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            layers.append(BasicBlock(inplanes, planes, stride, downsample))
            inplanes = planes
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inplanes, num_classes)]
    net = nn.Sequential(*layers)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return net


def resnet18(in_channels: int, num_classes: int, *, width: int = RESNET18_WIDTH) -> nn.Module:
    """``torchvision.models.resnet18`` for small images: 3x3 stride-1 stem with
    ``in_channels`` inputs, no max-pool. Other widths: :func:`narrow_resnet18`."""
    if width != RESNET18_WIDTH:
        return narrow_resnet18(in_channels, num_classes, width)
    net = torchvision_resnet18(num_classes=num_classes)
    net.conv1 = _small_image_stem(in_channels, RESNET18_WIDTH)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return net


def resnet18_classifier(dataset: str, in_channels: int, num_classes: int, *, width: int = RESNET18_WIDTH) -> nn.Module:
    """The ResNet-18 reference row of Table 1: standardisation, then :func:`resnet18`."""
    return nn.Sequential(standardize(dataset), resnet18(in_channels, num_classes, width=width))


class ConvDynamics(nn.Module):
    """``f(eta, t) = conv([tanh(conv([eta, t])), t])`` on feature maps ``(B, C, H, W)``:
    the time enters as a constant extra channel (Queiruga et al., 2020; torchdiffeq's
    ``ConcatConv2d``). No normalisation layer, so ``f`` of one state does not depend
    on the other states in the batch. The context is ignored: the input reaches the
    dynamics only through ``eta(0)``.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(channels + 1, hidden, kernel_size=3, padding=1)
        self.activation = nn.Tanh()
        self.conv_out = nn.Conv2d(hidden + 1, channels, kernel_size=3, padding=1)

    def forward(self, eta: Tensor, context: Any, t: Tensor) -> Tensor:
        time = t.reshape(-1, 1, 1, 1).to(eta.dtype).expand(eta.shape[0], 1, *eta.shape[2:])
        hidden = self.activation(self.conv_in(torch.cat([eta, time], dim=1)))
        return self.conv_out(torch.cat([hidden, time], dim=1))


@dataclass
class FlowParts:
    """The modules of a Neural ODE (paper Eq. 1-3), before choosing how it is integrated.

    Attributes:
        encoder: ``x -> context``.
        dynamics: ``f(eta, context, t)``.
        readout: ``psi``.
        state_shape: with a shape, ``eta(0) = 0`` and ``f`` is data-controlled (sees the
            context); ``None``: ``eta(0) = encoder(x)`` and ``f`` ignores the context.
    """

    encoder: nn.Module
    dynamics: nn.Module
    readout: nn.Module
    state_shape: Optional[tuple[int, ...]]

    @property
    def data_controlled(self) -> bool:
        return self.state_shape is not None


def node_parts(
    dataset: str,
    in_channels: int,
    num_classes: int,
    *,
    width: int = RESNET18_WIDTH,
    context_dim: int = 64,
    hidden: int = 64,
) -> FlowParts:
    """Data-controlled Neural ODE (Section 5.1): ResNet-18 trunk -> context vector,
    :class:`~lyapunov_plugin.blocks.MLPDynamics` over ``[eta, context, t]``, a state of
    ``num_classes`` dimensions, ``eta(0) = 0``, identity readout."""
    encoder = nn.Sequential(standardize(dataset), resnet18(in_channels, context_dim, width=width))
    dynamics = MLPDynamics(num_classes, context_dim, (hidden, hidden))
    return FlowParts(encoder, dynamics, nn.Identity(), (num_classes,))


def continuous_parts(
    dataset: str,
    in_channels: int,
    num_classes: int,
    *,
    width: int = RESNET18_WIDTH,
    hidden: int = RESNET18_WIDTH,
    readout_grid: int = CONTINUOUS_READOUT_GRID,
) -> FlowParts:
    """Continuous-in-depth network (Queiruga et al., 2020): stem -> ODE block over a
    ``(width, H/2, W/2)`` feature map with :class:`ConvDynamics` -> average pool to a
    ``readout_grid x readout_grid`` grid (1: global pooling) -> linear readout;
    ``eta(0)`` is the stem's output."""
    if isinstance(readout_grid, bool) or not isinstance(readout_grid, int) or readout_grid < 1:
        raise ValueError(f"readout_grid must be an int >= 1, got {readout_grid!r}")
    stem = nn.Sequential(
        standardize(dataset),
        nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, kernel_size=3, stride=CONTINUOUS_STEM_STRIDE, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    )
    readout = nn.Sequential(
        nn.AdaptiveAvgPool2d(readout_grid), nn.Flatten(), nn.Linear(width * readout_grid**2, num_classes)
    )
    return FlowParts(stem, ConvDynamics(width, hidden), readout, None)


class _ContextField(nn.Module):
    """``dynamics(eta, context, t)`` as a torchdiffeq ``func(t, y, context)``."""

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, t: Tensor, y: Tensor, context: Tensor) -> Tensor:
        return self.dynamics(y, context, _batch_times(t, y))


class _StateField(nn.Module):
    """Context-free ``dynamics(eta, None, t)`` as a torchdiffeq ``func(t, y)``."""

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.dynamics(y, None, _batch_times(t, y))


def _batch_times(t: Tensor, y: Tensor) -> Tensor:
    """A scalar or per-sample time as shape ``(B,)``."""
    t = t.reshape(-1)
    return t.expand(y.shape[0]) if t.numel() == 1 else t


def assemble(parts: FlowParts, *, adjoint: bool = False) -> nn.Module:
    """A :class:`~lyapunov_plugin.LyapunovModel` from ``parts``.

    Default: :class:`~lyapunov_plugin.ODEModel` with fixed-step RK4 (``TRAIN_STEPS``), so
    standard training backpropagates through the solver. ``adjoint=True``: a
    :class:`~lyapunov_plugin.adapters.torchdiffeq.TorchdiffeqModel` over the same modules,
    integrated with torchdiffeq's fixed-step RK4 of the same step size and differentiated
    with ``odeint_adjoint`` (the paper's "Neural ODE" and "Continuous" rows, Section 5.1).
    """
    if adjoint:
        from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

        field = _ContextField(parts.dynamics) if parts.data_controlled else _StateField(parts.dynamics)
        return TorchdiffeqModel(
            field,
            encoder=parts.encoder,
            readout=parts.readout,
            state_shape=parts.state_shape,
            method="rk4",
            options={"step_size": 1.0 / TRAIN_STEPS},
            adjoint=True,
        )
    model = ODEModel(
        parts.dynamics,
        state_shape=parts.state_shape,
        encoder=parts.encoder,
        initial_state=None if parts.data_controlled else nn.Identity(),
        readout=parts.readout,
        solver=FixedStepSolver(method="rk4", steps=TRAIN_STEPS),
    )
    # ODEModel declares every model data-controlled; this one's dynamics see the input
    # only through eta(0) (the attribute the LyapunovModel protocol reads).
    model.conditioned_on_input = parts.data_controlled
    return model


class StaticFlow(nn.Module):
    """A plain classifier seen through the LyapunovModel protocol, so the robustness
    protocol (:func:`examples.common.robustness.evaluate_robustness`) can score the
    ResNet-18 reference row exactly like the ODE models.

    The state is the logits and does not move: ``eta(0) = classifier(x)``, ``f = 0``,
    identity readout; any solver therefore returns the classifier's prediction at every
    time, and gradients reach the input through ``eta(0)``.
    """

    conditioned_on_input = True

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def encode(self, x: Tensor) -> tuple[None, Tensor]:
        return None, self.classifier(x)

    def vector_field(self, eta: Tensor, context: Any, t: Tensor) -> Tensor:
        return torch.zeros_like(eta)

    def readout(self, eta: Tensor) -> Tensor:
        return eta

    def trajectory(self, x: Tensor, ts: Tensor) -> Tensor:
        _, logits = self.encode(x)
        return logits.unsqueeze(0).expand(ts.shape[0], *logits.shape)

    def solution(self, x: Tensor, ts: Tensor) -> Solution:
        return Solution(states=self.trajectory(x, ts), ts=ts, nfe=0)  # no vector field is evaluated

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(x)
