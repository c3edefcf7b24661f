"""Regression with a torchdyn Neural ODE: LyaNet beside standard training.

The model is what a torchdyn user writes for tabular regression: ``Augmenter`` ->
``NeuralODE(f)`` (dopri5) -> ``nn.Linear`` to one output, wrapped unchanged. LyaNet is
``LyapunovTrainer(model, Recipe(potential=MSEPotential()))``: the default objective for the
model (here the path integral, Eq. 12, along 8 RK4 steps, ``MSEPotential.path_steps``) with
the squared error as ``V``. Standard training backpropagates the MSE at ``t = 1`` through the
model's dopri5 at lr 1e-2 with a constant schedule (the setting the suite's tuning chose for
this model on friedman1). Both see the same batches for the same epochs.

Prints, per method and mean over seeds: test MSE at ``t = 1`` and at ``t = 0.25`` (early
termination), dopri5 evaluations of one test solve, and training seconds. Writes
``regression.json``.

    python -m examples.regression                     # make_friedman1, 3 seeds
    python -m examples.regression --seeds 0 --epochs 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lyapunov_plugin import LyapunovTrainer, MSEPotential, Recipe, SupervisedObjective, nfe_to_end

from .common.data import friedman1
from .common.report import write_json

HIDDEN = 64
AUGMENT = 8


def torchdyn_regressor(features: int, hidden: int = HIDDEN, augment: int = AUGMENT) -> nn.Module:
    """``Augmenter(1, augment)`` -> ``NeuralODE`` (tanh MLP field, dopri5 at 1e-3) -> linear readout."""
    from torchdyn.core import NeuralODE
    from torchdyn.nn import Augmenter

    width = features + augment
    field = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, width))
    node = NeuralODE(field, solver="dopri5", atol=1e-3, rtol=1e-3, return_t_eval=False)
    return nn.Sequential(Augmenter(1, augment), node, nn.Linear(width, 1))


RECIPES = {
    "LyaNet": lambda: Recipe(potential=MSEPotential()),
    "standard": lambda: Recipe(objective=SupervisedObjective(potential=MSEPotential()), schedule="constant"),
}


def _mse(trainer: LyapunovTrainer, x: torch.Tensor, y: torch.Tensor, t_end: Optional[float] = None) -> float:
    with torch.no_grad():
        return float(((trainer.predict(x, t_end=t_end) - y) ** 2).mean())


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out-dir", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        raise ValueError(f"--epochs must be a positive integer, got {args.epochs}")
    data = friedman1()
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in RECIPES}
    for seed in args.seeds:
        for name, recipe in RECIPES.items():
            torch.manual_seed(seed)
            with contextlib.redirect_stdout(io.StringIO()):  # torchdyn's note that it wrapped the field
                model = torchdyn_regressor(data.x_train.shape[1])
            trainer = LyapunovTrainer(model, recipe(), progress=False, seed=seed)
            train, _ = data.loaders(args.batch_size, generator=torch.Generator().manual_seed(seed))
            started = time.perf_counter()
            trainer.fit(train, epochs=args.epochs)
            seconds = time.perf_counter() - started
            rows[name].append(
                {
                    "test_mse": _mse(trainer, data.x_test, data.y_test),
                    "test_mse_t0.25": _mse(trainer, data.x_test, data.y_test, t_end=0.25 * trainer.t_end),
                    "nfe": float(nfe_to_end(trainer.model, data.x_test, t_end=trainer.t_end)),
                    "train_seconds": seconds,
                }
            )
    summary = {name: {key: statistics.fmean(r[key] for r in runs) for key in runs[0]} for name, runs in rows.items()}
    print(f"{data.description}; {args.epochs} epochs, batch {args.batch_size}, seeds {args.seeds}")
    print(f"{'method':<9} {'test MSE':>9} {'MSE t=0.25':>11} {'dopri5 NFE':>11} {'train s':>8}")
    for name, s in summary.items():
        print(
            f"{name:<9} {s['test_mse']:>9.3f} {s['test_mse_t0.25']:>11.3f} {s['nfe']:>11.0f} {s['train_seconds']:>8.1f}"
        )
    payload = {"data": data.description, "epochs": args.epochs, "seeds": args.seeds, "runs": rows, "mean": summary}
    write_json(args.out_dir, "regression", payload)
    return payload


if __name__ == "__main__":
    main()
