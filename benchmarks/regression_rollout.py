"""Why the regression path integral rolls out with eight RK4 steps (issue 13, regression).

With ``V = |psi(eta) - y|^2`` (``MSEPotential``), Eq. (10) asks the residual itself to shrink at
rate ``kappa / 2`` at every state, so the field must contract towards the target with a speed
that grows with the residual. Such a field can be too stiff for the default path integral's
four RK4 steps over ``[0, 1]``: the rollout the loss is evaluated on then leaves the flow, the
condition is met at states inference never visits, and the flow the model computes at
inference (its own dopri5) is not the one that was trained.

For each cell, the default recipe is trained with the path integral along 4 RK4 steps (the
objective's own default, the regression recipe before ``MSEPotential.path_steps``) and along 8
(the default now), as ``python -m benchmarks.suite --regression`` trains it, and each trained
model's *training-set* MSE at ``t = 1`` is measured along

- the training rollout (RK4 with the steps it was trained on),
- the model's own solver (dopri5, rtol = atol = 1e-3: inference),
- an accurate solve of the same ODE (dopri5 at rtol = atol = 1e-7, ``lyapunov_plugin.integrate``),

with the test MSE (own solver). A training-rollout MSE far from the accurate one is a rollout
that does not follow the flow.

    python -m benchmarks.regression_rollout                  # the cells below, 3 seeds
    python -m benchmarks.regression_rollout --cells friedman1/augmented --seeds 0

Writes ``regression_rollout.{json,md}`` to ``benchmarks/results``.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any, Optional

import torch

from examples.common.report import mean_std
from lyapunov_plugin import FixedStepSolver

from .solver_fidelity import ACCURATE_TOLERANCE, accurate_prediction, cell_benchmark
from .suite.problems import load_problem
from .suite.runner import run
from .suite.variants import DEFAULT, VARIANTS

#: Regression cells with and without an encoder in front of the flow (development problems).
CELLS: tuple[str, ...] = (
    "friedman1/dc",
    "friedman1/plain",
    "friedman1/augmented",
    "diabetes/augmented",
    "friedman1/enc_dc",
    "sine/torchdiffeq",
)
#: The two recipes compared: the path integral along 4 steps (a suite variant) and the default.
RECIPES: tuple[tuple[str, Any, int], ...] = (("4 steps", VARIANTS["path_steps_4"], 4), ("8 steps", DEFAULT, 8))


def mse_along(trainer: Any, x: torch.Tensor, y: torch.Tensor, steps: int) -> dict[str, float]:
    """Training-set MSE at ``t_end`` along the RK4 training grid, the model's own solver and an
    accurate dopri5 solve."""
    with torch.no_grad():
        rollout = trainer.predict(x, solver=FixedStepSolver(method="rk4", steps=steps))
        own = trainer.predict(x)
    fine = accurate_prediction(trainer, x)
    return {
        "train_rollout": float(((rollout - y) ** 2).mean()),
        "train_own": float(((own - y) ** 2).mean()),
        "train_accurate": float(((fine - y) ** 2).mean()),
    }


def measure(cells: Sequence[str], seeds: Sequence[int], epochs: Optional[int] = None) -> dict[str, Any]:
    rows = []
    for cell in cells:
        problem_name, pattern = cell.split("/")
        problem = load_problem(problem_name)
        if not problem.is_regression:
            raise ValueError(f"cells must be regression cells of the suite, got {cell!r}")
        row: dict[str, Any] = {"problem": problem_name, "pattern": pattern}
        for label, method, steps in RECIPES:
            per_seed = []
            for seed in seeds:
                keep: dict[str, Any] = {}
                with contextlib.redirect_stdout(io.StringIO()):  # torchdyn prints a note per model
                    result = run(problem, pattern, method, seed=seed, keep=keep, epochs=epochs)
                trainer = keep["trainer"]
                objective = trainer.recipe.objective
                if getattr(objective, "steps", steps) != steps:
                    raise RuntimeError(f"{label}: the trained objective rolls out with {objective.steps} steps")
                scores = mse_along(trainer, problem.x_train, problem.y_train, steps)
                scores["test_own"] = float(result["test_mse"])
                per_seed.append(scores)
            row[label] = {name: mean_std([r[name] for r in per_seed]) for name in per_seed[0]}
        rows.append(row)
        print(
            f"{cell}: "
            + ", ".join(
                f"{label}: train MSE rollout {row[label]['train_rollout']['mean']:.3f} / accurate "
                f"{row[label]['train_accurate']['mean']:.3f}, test {row[label]['test_own']['mean']:.3f}"
                for label, _, _ in RECIPES
            ),
            flush=True,
        )
    return {"cells": list(cells), "seeds": list(seeds), "rows": rows, "tolerance": ACCURATE_TOLERANCE}


def _cell(value: dict[str, float]) -> str:
    return f"{value['mean']:.3f} ± {value['std']:.3f}"


def markdown(payload: dict[str, Any]) -> str:
    head = "| cell |"
    rule = "|---|"
    for label, _, _ in RECIPES:
        head += (
            f" {label}: train MSE, rollout | {label}: train MSE, own dopri5 | {label}: train MSE, accurate "
            f"| {label}: test MSE |"
        )
        rule += "---:|---:|---:|---:|"
    lines = [head, rule]
    for row in payload["rows"]:
        line = f"| {row['problem']}/{row['pattern']} |"
        for label, _, _ in RECIPES:
            r = row[label]
            line += (
                f" {_cell(r['train_rollout'])} | {_cell(r['train_own'])} | {_cell(r['train_accurate'])} "
                f"| {_cell(r['test_own'])} |"
            )
        lines.append(line)
    lines += [
        "",
        f"Mean ± std over seeds {payload['seeds']}. The default recipe (`Recipe(potential=MSEPotential())`) trained "
        "as `python -m benchmarks.suite --regression` trains it, with the path integral along 4 RK4 steps (suite "
        "variant `path_steps_4`) or 8 (the default, `MSEPotential.path_steps`). MSE of standardised targets at t = 1 "
        "on the training set along: the RK4 grid the model was trained on ('rollout'), the model's own dopri5 at "
        "rtol = atol = 1e-3 ('own dopri5', inference), and torchdiffeq dopri5 at rtol = atol = "
        f"{payload['tolerance']:g} ('accurate'); test MSE with the model's own solver. "
        f"Machine: {payload['machine']}; wall clock {payload['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    return cell_benchmark(
        argv, description=__doc__ or "", cells=CELLS, name="regression_rollout", measure=measure, markdown=markdown
    )


if __name__ == "__main__":
    main()
