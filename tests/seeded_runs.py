"""Seeded training runs whose final parameters were recorded before the trainer was split
into recipe / loop / reporting modules (tests/data/seeded_runs.pt): the refactor must
leave what a seeded run learns unchanged. ``python -m tests.seeded_runs --record``
rewrites the file (only do that for a deliberate change of the numbers)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

DATA = Path(__file__).resolve().parent / "data" / "seeded_runs.pt"


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    centers = torch.tensor([[1.5, 1.5], [-1.5, -1.5]])
    return centers[y] + 0.6 * torch.randn(64, 2, generator=g), y


def _loader() -> torch.utils.data.DataLoader:
    x, y = _data()
    g = torch.Generator().manual_seed(1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


def _paper_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    return _PaperModel(net)


class _Field(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, eta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([eta, x], dim=-1))


def _PaperModel(net: nn.Module) -> nn.Module:  # noqa: N802 - a factory named like the model it builds
    from lyapunov_plugin import ODEModel

    return ODEModel(_Field(net), state_shape=(2,))


def _torchdyn_model() -> nn.Module:
    from tests.models import torchdyn_data_controlled

    torch.manual_seed(0)
    return torchdyn_data_controlled(hidden=8)


def runs() -> dict[str, Callable[[], nn.Module]]:
    """Each run builds its model and returns the trained model (3 epochs, seed 0)."""
    from lyapunov_plugin import LyapunovTrainer, SupervisedObjective

    def paper_default() -> nn.Module:
        model = _paper_model()
        LyapunovTrainer(model, seed=0, progress=False).fit(_loader(), epochs=3)
        return model

    def torchdyn_default() -> nn.Module:
        model = _torchdyn_model()
        LyapunovTrainer(model, seed=0, progress=False).fit(_loader(), epochs=3)
        return model

    def torchdyn_standard() -> nn.Module:
        model = _torchdyn_model()
        LyapunovTrainer(model, objective=SupervisedObjective(), seed=0, progress=False).fit(_loader(), epochs=3)
        return model

    def paper_kappa1() -> nn.Module:
        model = _paper_model()
        LyapunovTrainer(model, kappa=1.0, seed=0, progress=False).fit(_loader(), epochs=3)
        return model

    return {
        "paper_default": paper_default,
        "torchdyn_default": torchdyn_default,
        "torchdyn_standard": torchdyn_standard,
        "paper_kappa1": paper_kappa1,
    }


def trained_parameters() -> dict[str, dict[str, torch.Tensor]]:
    torch.set_num_threads(1)
    out = {}
    for name, run in runs().items():
        model = run()
        out[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    params = trained_parameters()
    if args.record:
        DATA.parent.mkdir(exist_ok=True)
        torch.save(params, DATA)
        print(f"recorded {len(params)} runs in {DATA}")
    else:
        saved = torch.load(DATA, weights_only=True)
        for name, state in params.items():
            worst = max(float((state[k] - saved[name][k]).abs().max()) for k in state)
            print(f"{name}: max |delta| {worst:.3g}")
