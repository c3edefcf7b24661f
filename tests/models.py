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
