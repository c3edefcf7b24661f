"""torchdyn's quick-start model, trained bare: why the default path integral collapses on it (issue 13).

    python -m benchmarks.bare_torchdyn                      # writes benchmarks/results/bare_torchdyn.{json,md}
    python -m benchmarks.bare_torchdyn --problems moons --methods default standard_1e-2 --seeds 0 1
    python -m benchmarks.bare_torchdyn --from-json benchmarks/results/bare_torchdyn.json   # re-render only

The model is the one of torchdyn's tutorial: ``NeuralODE(nn.Sequential(nn.Linear(d, 64), nn.Tanh(),
nn.Linear(64, d)), solver="dopri5", sensitivity="adjoint")``, no readout layer, ``eta(0) = x`` and
the ``d``-dimensional state read directly as the logits, on problems whose input dimension equals
the number of classes (two moons, two circles, a 2-D Gaussian XOR, 3-class 3-D
``make_classification``). 1,000 training and 400 test points, 30 epochs, batch 64, every method
through ``LyapunovTrainer`` (Adam with the cosine schedule), mean ± std over seeds.

Rows: the default recipe (continuous Eq. 12 on the 5 states of an RK4-4 rollout, ``kappa = 10``),
the levers tried on it, and standard training at lr 1e-2 and 3e-3. Eq. (10) at ``t = 0`` asks for
``|f(x)| >= kappa V(x) / |grad V(x)|`` (about 13 on moons) at data the field cannot move, and for
opposite labels a short distance apart, so the field the loss asks for is stiff for a 4-step RK4
grid; the continuous loss is then met at grid states that are not on the flow, while the flow
itself collapses onto the decision boundary. The discrete loss, Eq. (16)-(17), compares the
states themselves and cannot be met that way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lyapunov_plugin import (
    CrossEntropyPotential,
    LyapunovLossOutput,
    LyapunovModel,
    LyapunovTrainer,
    Objective,
    PathIntegralObjective,
    Recipe,
    SupervisedObjective,
)

RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS = ("moons", "circles", "xor", "blobs3")
TRAIN_SIZE, TEST_SIZE, EPOCHS, BATCH = 1000, 400, 30, 64


@dataclass(frozen=True, kw_only=True)
class PathAfterFirstState(Objective):
    """Lever (e): Eq. (12) on the RK4 grid states with ``t > 0`` only. For this model
    ``eta(0) = x`` is data the field cannot move, so the condition at ``t = 0`` constrains only
    ``f(x)``; this drops it."""

    steps: int = 4
    name: ClassVar[str] = "path_integral"

    def compute(
        self, model: LyapunovModel, x: Tensor, y: Tensor, *, kappa: float, generator: Optional[torch.Generator] = None
    ) -> LyapunovLossOutput:
        out = PathIntegralObjective(steps=self.steps).compute(model, x, y, kappa=kappa, generator=generator)
        later = out.pointwise.reshape(self.steps + 1, x.shape[0])[1:]
        return LyapunovLossOutput(later.mean(), later.reshape(-1), out.v, out.v_dot)


#: label -> (description, recipe). ``None``: ``LyapunovTrainer(model)`` with nothing else.
METHODS: dict[str, tuple[str, Callable[[], Optional[Recipe]]]] = {
    "default": ("default recipe (continuous Eq. 12, RK4-4 grid, kappa 10)", lambda: None),
    "kappa_1": ("default, kappa = 1", lambda: Recipe(kappa=1.0)),
    "after_t0": ("continuous Eq. 12 at grid states t > 0 only", lambda: Recipe(objective=PathAfterFirstState())),
    "discrete_rk4_4": (
        "discrete Eq. 16-17, RK4-4 rollout",
        lambda: Recipe(objective=PathIntegralObjective(form="discrete")),
    ),
    "discrete_rk4_8": (
        "discrete Eq. 16-17, RK4-8 rollout",
        lambda: Recipe(objective=PathIntegralObjective(form="discrete", steps=8)),
    ),
    "discrete_rk4_16": (
        "discrete Eq. 16-17, RK4-16 rollout",
        lambda: Recipe(objective=PathIntegralObjective(form="discrete", steps=16)),
    ),
    "discrete_model": (
        "discrete Eq. 16-17, 4 intervals of the model's dopri5",
        lambda: Recipe(objective=PathIntegralObjective(form="discrete", solver="model")),
    ),
    "smooth_0.05": (
        "discrete Eq. 16-17, RK4-8 rollout, label-smoothed potential s = 0.05",
        lambda: Recipe(
            objective=PathIntegralObjective(form="discrete", steps=8, potential=CrossEntropyPotential(smoothing=0.05))
        ),
    ),
    "smooth_0.2": (
        "discrete Eq. 16-17, RK4-8 rollout, label-smoothed potential s = 0.2",
        lambda: Recipe(
            objective=PathIntegralObjective(form="discrete", steps=8, potential=CrossEntropyPotential(smoothing=0.2))
        ),
    ),
    "standard_1e-2": ("standard, lr 1e-2", lambda: Recipe(objective=SupervisedObjective(), lr=1e-2)),
    "standard_3e-3": ("standard, lr 3e-3", lambda: Recipe(objective=SupervisedObjective(), lr=3e-3)),
}


def load(problem: str, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Train and test split of one problem (fixed data seed): inputs as logits-sized states."""
    from sklearn.datasets import make_circles, make_classification, make_moons

    n = TRAIN_SIZE + TEST_SIZE
    rng = np.random.default_rng(seed)
    if problem == "moons":
        x, y = make_moons(n, noise=0.1, random_state=seed)
    elif problem == "circles":
        x, y = make_circles(n, noise=0.1, factor=0.5, random_state=seed)
    elif problem == "blobs3":
        x, y = make_classification(
            n, n_features=3, n_informative=3, n_redundant=0, n_classes=3, n_clusters_per_class=1, random_state=seed
        )
    elif problem == "xor":
        x = rng.normal(size=(n, 2))
        y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
    else:
        raise ValueError(f"problem must be one of {list(PROBLEMS)}, got {problem!r}")
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    return xt[:TRAIN_SIZE], yt[:TRAIN_SIZE], xt[TRAIN_SIZE:], yt[TRAIN_SIZE:]


def bare_model(dim: int, seed: int) -> nn.Module:
    """torchdyn's quick-start model on a ``dim``-dimensional state (the logits)."""
    from torchdyn.core import NeuralODE

    torch.manual_seed(seed)
    field = nn.Sequential(nn.Linear(dim, 64), nn.Tanh(), nn.Linear(64, dim))
    return NeuralODE(field, solver="dopri5", sensitivity="adjoint")


def run(problem: str, method: str, seed: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """One training run: test accuracy at ``t = 1`` with the model's own dopri5."""
    x, y, x_test, y_test = load(problem)
    loader = DataLoader(
        TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    recipe = METHODS[method][1]()
    trainer = LyapunovTrainer(bare_model(x.shape[1], seed), recipe, seed=seed, progress=False)
    started = time.process_time()
    history = trainer.fit(loader, epochs=epochs)
    with torch.no_grad():
        accuracy = float((trainer.predict(x_test).argmax(-1) == y_test).float().mean())
    return {
        "problem": problem,
        "method": method,
        "seed": seed,
        "accuracy": 100 * accuracy,
        "cpu_seconds": time.process_time() - started,
        "objective": type(trainer.recipe.objective).__name__,
        "ref_violation": history[-1].get("ref_violation"),
        "train_violation": history[-1].get("train_violation"),
    }


def render(runs: list[dict[str, Any]], seeds: Sequence[int], epochs: int) -> str:
    problems = [p for p in PROBLEMS if any(r["problem"] == p for r in runs)]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]

    def cell(problem: str, method: str) -> str:
        values = [r["accuracy"] for r in runs if r["problem"] == problem and r["method"] == method]
        if not values:
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f}"

    lines = ["| method | " + " | ".join(problems) + " |", "|---|" + "---:|" * len(problems)]
    lines += [f"| {METHODS[m][0]} | " + " | ".join(cell(p, m) for p in problems) + " |" for m in methods]
    lines += [
        "",
        f"Test accuracy (%) at t = 1 with the model's own dopri5; torchdyn's quick-start NeuralODE (no readout, "
        f"eta(0) = x, state = logits); {TRAIN_SIZE} training / {TEST_SIZE} test points, {epochs} epochs, batch "
        f"{BATCH}, Adam with the cosine schedule (lr 1e-2 unless stated); mean ± std over seeds {list(seeds)}; "
        "one intra-op thread.",
    ]
    return "\n".join(lines)


def main(
    *,
    problems: Sequence[str] = PROBLEMS,
    methods: Sequence[str] = tuple(METHODS),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = EPOCHS,
    out_dir: Path = RESULTS,
) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    runs = []
    for problem in problems:
        for method in methods:
            for seed in seeds:
                runs.append(run(problem, method, seed, epochs))
                print(json.dumps(runs[-1]), flush=True)
    write(runs, seeds, epochs, out_dir)
    return runs


def write(runs: list[dict[str, Any]], seeds: Sequence[int], epochs: int, out_dir: Path) -> None:
    markdown = render(runs, seeds, epochs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bare_torchdyn.json").write_text(
        json.dumps({"seeds": list(seeds), "epochs": epochs, "runs": runs}, indent=1)
    )
    (out_dir / "bare_torchdyn.md").write_text(markdown + "\n")
    print(markdown)


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, default=list(PROBLEMS))
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--from-json", type=Path, default=None, help="re-render an earlier run (no training)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    if args.from_json is not None:
        saved = json.loads(args.from_json.read_text())
        write(saved["runs"], saved["seeds"], saved["epochs"], args.out_dir)
    else:
        main(problems=args.problems, methods=args.methods, seeds=args.seeds, epochs=args.epochs, out_dir=args.out_dir)
