"""A torchdyn model with a fixed-step solver: train it on its own step, not on a finer grid.

    python -m benchmarks.fixed_step            # writes benchmarks/results/fixed_step.{json,md}

The model is a common torchdyn pattern the suite does not have: a convolutional input layer,
a ``NeuralODE`` over the feature map with ``solver="rk4"``, a linear readout, on digits.
torchdyn's fixed-step solvers step from one ``t_span`` point to the next, so this model
integrates ``[0, 1]`` in a single RK4 step. Trained with the path integral on a 4-step RK4
rollout, the field learns a flow that a finer solver integrates well but that the model's
own single step does not; ``default_objective`` therefore trains such a model with the
discrete path loss along its own steps. Rows: that default, the 4-step continuous path
integral it replaced for such models, and standard training, all at lr 1e-2 with the cosine
schedule; test error with the model's own solver and with a 10-step RK4.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lyapunov_plugin import FixedStepSolver, LyapunovTrainer, Objective, PathIntegralObjective, SupervisedObjective

RESULTS = Path(__file__).resolve().parent / "results"
#: Each method's objective (``None``: the trainer's default for the model).
METHODS: dict[str, Optional[Objective]] = {
    "default objective (discrete path loss on the model's own step)": None,
    "path integral on a 4-step RK4 rollout (the previous default for this model)": PathIntegralObjective(),
    "standard (SupervisedObjective())": SupervisedObjective(),
}


def conv_model() -> nn.Module:
    from torchdyn.core import NeuralODE

    field = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1))
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        NeuralODE(field, solver="rk4", return_t_eval=False),
        nn.Flatten(),
        nn.Linear(8 * 64, 10),
    )


def main(
    *, seeds: Sequence[int] = (0, 1, 2), epochs: int = 10, out_dir: Path = RESULTS, train_size: int = 1200
) -> dict[str, Any]:
    from sklearn.datasets import load_digits

    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    x_test, y_test = x[train_size:], y[train_size:]
    rows: dict[str, dict[str, list[float]]] = {}
    for label, objective in METHODS.items():
        own, fine = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            loader = DataLoader(
                TensorDataset(x[:train_size], y[:train_size]),
                batch_size=64,
                shuffle=True,
                generator=torch.Generator().manual_seed(seed),
            )
            trainer = LyapunovTrainer(conv_model(), objective=objective, progress=False, seed=seed)
            trainer.fit(loader, epochs=epochs)
            own.append(100 * float((trainer.predict(x_test).argmax(-1) != y_test).float().mean()))
            rk4 = trainer.predict(x_test, solver=FixedStepSolver(method="rk4", steps=10))
            fine.append(100 * float((rk4.argmax(-1) != y_test).float().mean()))
            print(f"{label} seed {seed}: {own[-1]:.1f}% (own solver), {fine[-1]:.1f}% (RK4-10)", flush=True)
        rows[label] = {"own_solver": own, "rk4_10": fine}

    def cell(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f}"

    lines = ["| method | test error, the model's own solver (%) | test error, RK4-10 (%) |", "|---|---:|---:|"]
    lines += [f"| {label} | {cell(r['own_solver'])} | {cell(r['rk4_10'])} |" for label, r in rows.items()]
    lines += [
        "",
        f"scikit-learn digits, pixels/16, first {train_size} images for training, the rest "
        f"({len(y_test)}) for testing; conv -> torchdyn NeuralODE(conv field, solver='rk4') -> linear; "
        f"{epochs} epochs, batch 64, Adam lr 1e-2 with the cosine schedule; mean ± std over seeds "
        f"{list(seeds)}; one intra-op thread.",
    ]
    markdown = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fixed_step.json").write_text(
        json.dumps({"seeds": list(seeds), "epochs": epochs, "rows": rows}, indent=1)
    )
    (out_dir / "fixed_step.md").write_text(markdown + "\n")
    print(markdown)
    return rows


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(seeds=args.seeds, epochs=args.epochs, out_dir=args.out_dir)
