"""Tiny real torchdyn / torchdiffeq models and data shared by the integration tests."""

from __future__ import annotations

import torch
import torch.nn as nn


def blobs(n: int = 96, seed: int = 0, dim: int = 2, classes: int = 2):
    """Well-separated Gaussian blobs: a small problem every method should solve."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]])[:classes]
    y = torch.arange(n) % classes
    x = centers[y] + 0.5 * torch.randn(n, dim, generator=g)
    return x, y


def loader(x, y, batch_size=32, shuffle=True):
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def torchdyn_data_controlled(hidden: int = 16, classes: int = 2, solver: str = "rk4", sensitivity: str = "autograd"):
    """Encoder -> NeuralODE whose field sees the encoded input (DataControl) and time (DepthCat)."""
    from torchdyn.core import NeuralODE
    from torchdyn.nn import DataControl, DepthCat

    field = nn.Sequential(
        DataControl(), DepthCat(1), nn.Linear(2 * classes + 1, hidden), nn.Tanh(), nn.Linear(hidden, classes)
    )
    node = NeuralODE(field, solver=solver, sensitivity=sensitivity, return_t_eval=False)
    return nn.Sequential(nn.Linear(2, classes), node)


def torchdyn_plain(hidden: int = 16, solver: str = "rk4", sensitivity: str = "autograd"):
    """Augmenter -> NeuralODE (field does not see the input) -> linear readout."""
    from torchdyn.core import NeuralODE
    from torchdyn.nn import Augmenter

    field = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 4))
    node = NeuralODE(field, solver=solver, sensitivity=sensitivity, return_t_eval=False)
    return nn.Sequential(Augmenter(1, 2), node, nn.Linear(4, 2))


class ConditionedField(nn.Module):
    """torchdiffeq-style data-controlled field ``func(t, y, context)``."""

    def __init__(self, state: int = 2, context: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state + context + 1, hidden), nn.Tanh(), nn.Linear(hidden, state))

    def forward(self, t, y, context):
        tt = torch.as_tensor(t, dtype=y.dtype, device=y.device)
        tt = tt.reshape(-1, 1).expand(y.shape[0], 1) if tt.numel() > 1 else tt.reshape(1, 1).expand(y.shape[0], 1)
        return self.net(torch.cat([y, context, tt], dim=1))


class PlainField(nn.Module):
    """torchdiffeq-style autonomous field ``func(t, y)``."""

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y)


def assert_training_improves(trainer, train, test, *, epochs=8, max_error=0.1):
    """Fit ``trainer`` on the blobs ``train`` and check that its training loss and its test
    error on ``test`` both fall (the integration tests' "learns a separable problem")."""
    before = trainer.evaluate(loader(*test))["error"]
    trainer.fit(loader(*train), epochs=epochs)
    after = trainer.evaluate(loader(*test))["error"]
    assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"]
    assert after < max_error and after <= before


# -- torchdiffeq's ODE-block model shape (as in torchdiffeq's examples/odenet_mnist.py), tiny ---------

try:  # bound at module level, the way a torchdiffeq user imports the solvers
    from torchdiffeq import odeint, odeint_adjoint
except ImportError:  # pragma: no cover - the block tests skip without torchdiffeq
    odeint = odeint_adjoint = None


class TimeConcatConv(nn.Module):
    """A 3x3 convolution that sees the time as one extra constant input channel."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 1, channels_out, 3, padding=1)

    def forward(self, t, x):
        return self.conv(torch.cat([torch.ones_like(x[:, :1]) * t, x], dim=1))


class ConvODEFunc(nn.Module):
    """GroupNorm -> ReLU -> time-conv, twice: an odenet-style ``func(t, x)`` on feature maps."""

    def __init__(self, channels: int = 4, groups: int = 2):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, channels), TimeConcatConv(channels, channels)
        self.norm2, self.conv2 = nn.GroupNorm(groups, channels), TimeConcatConv(channels, channels)

    def forward(self, t, x):
        out = self.conv1(t, torch.relu(self.norm1(x)))
        return self.conv2(t, torch.relu(self.norm2(out)))


class ODEBlock(nn.Module):
    """``forward(x) = odeint(odefunc, x, [0, 1], rtol=tol, atol=tol)[1]`` (or the adjoint)."""

    def __init__(self, odefunc: nn.Module, *, tol: float = 1e-3, adjoint: bool = False, method=None):
        super().__init__()
        self.odefunc = odefunc
        self.integration_time = torch.tensor([0, 1]).float()
        self.tol, self.adjoint, self.method = tol, adjoint, method

    def forward(self, x):
        self.integration_time = self.integration_time.type_as(x)
        solve = odeint_adjoint if self.adjoint else odeint
        out = solve(self.odefunc, x, self.integration_time, rtol=self.tol, atol=self.tol, method=self.method)
        return out[1]


def odenet(channels: int = 4, classes: int = 2, **block_kwargs) -> nn.Sequential:
    """Conv downsampling (with GroupNorm) -> ODEBlock(ConvODEFunc) -> GroupNorm/pool/linear head,
    on 1 x 8 x 8 images."""
    downsampling = nn.Sequential(
        nn.Conv2d(1, channels, 3, 1, padding=1),
        nn.GroupNorm(2, channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )
    head = nn.Sequential(
        nn.GroupNorm(2, channels), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, classes)
    )
    return nn.Sequential(downsampling, ODEBlock(ConvODEFunc(channels), **block_kwargs), head)


def tiny_images(n: int = 32, seed: int = 0):
    """1 x 8 x 8 images whose class is which half (top or bottom) is bright, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    x[y == 0, :, :4] += 1.0
    x[y == 1, :, 4:] += 1.0
    return x, y


# -- torchode fields ------------------------------------------------------------------------------


class TorchodePlainField(nn.Module):
    """torchode-style autonomous field ``f(t, y)``, ``t`` of shape ``(B,)``."""

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y)


class TorchodeConditionedField(nn.Module):
    """torchode-style data-controlled field ``f(t, y, args)`` seeing the time per example."""

    def __init__(self, state: int = 2, context: int = 2, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state + context + 1, hidden), nn.Tanh(), nn.Linear(hidden, state))

    def forward(self, t, y, args):
        return self.net(torch.cat([y, args, t.reshape(-1, 1).expand(y.shape[0], 1).to(y.dtype)], dim=1))


def saturated_paper_model():
    """An ``ODEModel`` whose one tanh unit is driven to +-1 by the input: ``f = a sign(x)``
    with ``a = (2, 0, -1)``, whatever the state and the time (``eta(0) = 0``, identity readout).
    The gap between the predicted class and every other grows at exactly the global bound
    ``|a_c - a_j|``, and the field never changes along a solve (the local bound is exact)."""
    from lyapunov_plugin import ODEModel
    from lyapunov_plugin.blocks import MLPDynamics

    dynamics = MLPDynamics(3, 1, hidden=(1,), time_dependent=False).double()
    with torch.no_grad():
        dynamics.net[0].weight.zero_()
        dynamics.net[0].weight[0, 3] = 50.0  # tanh(+-50) == +-1 in float64
        dynamics.net[0].bias.zero_()
        dynamics.net[2].weight.copy_(torch.tensor([[2.0], [0.0], [-1.0]]))
        dynamics.net[2].bias.zero_()
    return ODEModel(dynamics, state_shape=(3,), encoder=nn.Identity(), readout=None)
