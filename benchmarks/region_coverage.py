"""Does the sampling region contain the states inference visits? (Appendix B's requirement)

Trains the digits LyaNet model per seed with three state samplers: the fixed Appendix-B
hypercube ``[-s, s]^m`` (``s = s(kappa, m)``), the covering hypercube (the default of issue 4,
grown to twice the rollouts' extent) and the rollout sampler (today's default), each with
that study's settings otherwise (Adam 1e-3, 32 samples), and measures on the test set's RK4
trajectories (21 time points):

- the largest ``|eta|`` coordinate reached, and ``s`` for comparison;
- the share of trajectory states outside ``[-s, s]^m``;
- the number of cross-entropy increases between grid points (violations of monotone
  decay) on correctly classified points, and how many of them happen at states outside
  ``[-s, s]^m``;
- the share of correctly classified test points whose cross entropy decreases monotonically.

Writes ``region_coverage.{json,md}``.

    python -m benchmarks.region_coverage
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from examples.common.data import digits
from examples.common.models import TRAIN_SOLVER, digits_node
from examples.common.report import mean_std, write_outputs
from lyapunov_plugin import (
    CrossEntropyPotential,
    HypercubeSampler,
    LyapunovTrainer,
    MonteCarloObjective,
    Recipe,
    RolloutSampler,
    UniformTimeSampler,
    appendix_b_half_width,
    integrate,
)

LIPSCHITZ = 2.0
GRID = 21
#: A rise of V by more than this between grid points counts as a monotonicity violation.
INCREASE_TOLERANCE = 1e-6


def coverage(trainer: LyapunovTrainer, x: torch.Tensor, y: torch.Tensor, half_width: float) -> dict[str, float]:
    """The four measurements of the module docstring for one trained model."""
    model = trainer.model
    ts = torch.linspace(0.0, 1.0, GRID)
    with torch.no_grad():
        states = integrate(model, x, ts, solver=TRAIN_SOLVER)
        steps, batch = states.shape[:2]
        v = CrossEntropyPotential().value(states.reshape(steps * batch, -1), y.repeat(steps)).reshape(steps, batch)
    outside = (states.abs() > half_width).any(-1)
    correct = states[-1].argmax(-1) == y
    increase = (v[1:] - v[:-1]) > INCREASE_TOLERANCE
    events = increase[:, correct]
    events_outside = (events & outside[1:][:, correct]).sum()
    return {
        "max |eta|": float(states.abs().max()),
        "Appendix-B half-width s": half_width,
        "trajectory states outside [-s, s]^m (%)": 100 * float(outside.double().mean()),
        "V increases (count)": float(events.sum()),
        "... of them outside [-s, s]^m": float(events_outside),
        "V monotone on correct points (%)": 100 * float((~events).all(0).double().mean()),
    }


def main(
    *,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 60,
    kappa: float = 10.0,
    out_dir: Path | str = "benchmarks/results",
    quick: bool = False,
) -> dict[str, Any]:
    """Train both region choices per seed and write the table."""
    torch.set_num_threads(1)
    split = digits(limit=120 if quick else None)
    half_width = appendix_b_half_width(kappa, 10)
    # That study's settings: 32 samples per example (uniform times for the fixed-region
    # samplers, which pair no time with a state), Adam at 1e-3 with a constant rate.
    recipe = Recipe(lr=1e-3, schedule="constant")
    regions = {
        "fixed Appendix-B cube": lambda: MonteCarloObjective(
            state_sampler=HypercubeSampler(half_width=half_width), time_sampler=UniformTimeSampler(), num_samples=32
        ),
        "covering cube (issue-4 default)": lambda: MonteCarloObjective(
            state_sampler=HypercubeSampler(half_width=half_width, cover=2.0),
            time_sampler=UniformTimeSampler(),
            num_samples=32,
        ),
        "rollout sampler (default sampler)": lambda: MonteCarloObjective(
            state_sampler=RolloutSampler(), num_samples=32
        ),
    }
    rows: dict[str, dict[str, Any]] = {}
    runs = []
    for name, objective in regions.items():
        per_seed = []
        for seed in seeds:
            torch.manual_seed(seed)
            model = digits_node(split.x_train, lipschitz=LIPSCHITZ, solver=TRAIN_SOLVER)
            trainer = LyapunovTrainer(model, recipe, objective=objective(), kappa=kappa, seed=seed, progress=False)
            trainer.fit(split.loaders(64, generator=torch.Generator().manual_seed(seed))[0], epochs=epochs)
            per_seed.append(coverage(trainer, split.x_test, split.y_test, half_width))
            runs.append({"region": name, "seed": seed, **per_seed[-1]})
        rows[name] = {k: mean_std([m[k] for m in per_seed]) for k in per_seed[0]}
    metrics = list(next(iter(rows.values())))
    lines = ["| region | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for name, cells in rows.items():
        lines.append(
            f"| {name} | " + " | ".join(f"{cells[m]['mean']:.1f} ± {cells[m]['std']:.1f}" for m in metrics) + " |"
        )
    markdown = "\n".join(lines) + (
        f"\n\nLyaNet, kappa = {kappa}, Lipschitz encoder; mean ± std over seeds "
        f"{list(seeds)}; {split.description}; {epochs} epochs; test trajectories "
        f"through RK4 on {GRID} time points.\n"
    )
    payload = {
        "data": split.description,
        "epochs": epochs,
        "seeds": list(seeds),
        "kappa": kappa,
        "summary": rows,
        "runs": runs,
    }
    write_outputs(Path(out_dir), "region_coverage", payload, markdown)
    print(markdown)
    return payload


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out-dir", default="benchmarks/results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(seeds=args.seeds, epochs=args.epochs, out_dir=args.out_dir)
