"""What bounds the unconditioned-field gap? The flow, or the solver? (issue 13, item 5)

In the suite, LyaNet trails tuned standard training most on models whose vector field does not
see the input (``plain``, ``augmented``, ``torchdiffeq``) on problems such a flow separates
poorly (nested circles, Gaussian quantiles, a noisy 5-class problem). An exact flow of an
unconditioned field is a homeomorphism of the state space: it cannot move the inner circle of
``circles`` out of the outer ring, so no linear readout of ``eta(1)`` separates them (the
argument of the augmented Neural ODE paper). A model trained *through* a coarse adaptive solver
(dopri5 at rtol = atol = 1e-3) may fit the data anyway with trajectories that cross, which only
the solver's error allows.

For each cell, both methods are trained as the suite trains them (standard training at the lr
and schedule the suite's tuning chose, LyaNet with ``LyapunovTrainer(model)`` defaults, same
seeds), and each trained model's test accuracy is measured

- with the model's own solver (dopri5, rtol = atol = 1e-3: what the suite reports),
- with an accurate solve of the same ODE (dopri5 at rtol = atol = 1e-7, through
  ``lyapunov_plugin.integrate``),

with the share of test points whose predicted class differs between the two, and the value of
LyaNet's own training objective (the LyaNet trainer's objective at its final kappa, on the
whole training set) for both trained models. A gap that
disappears under the accurate solve is the standard model exploiting its solver's error: the
model is then not the continuous flow it claims to be, and no objective that trains the flow
(LyaNet's Eq. 10 is a statement about the continuous dynamics) can reach it. A gap that
stays, with the standard model scoring *worse* on LyaNet's objective than LyaNet's own model,
is the objective's: where Eq. 10 cannot hold at most states, the model that violates it least
is not the most accurate one, and a better optimiser of the same objective would not close it.

    python -m benchmarks.solver_fidelity                 # the cells below, 3 seeds
    python -m benchmarks.solver_fidelity --cells circles/plain --seeds 0

Writes ``solver_fidelity.{json,md}`` to ``benchmarks/results``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from examples.common.report import mean_std, write_outputs
from lyapunov_plugin import as_lyapunov_model, integrate
from lyapunov_plugin.inference import EvalMode

from .suite.problems import load_problem
from .suite.report import machine
from .suite.runner import run
from .suite.variants import DEFAULT, STANDARD

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: The cells with the largest gaps of fields that do not see the input (development and
#: held-out), and two data-controlled / parity cells as controls.
CELLS: tuple[str, ...] = (
    "circles/plain",
    "circles/augmented",
    "quantiles/plain",
    "quantiles/augmented",
    "classif5/plain",
    "classif5/torchdiffeq",
    "moons/plain",
    "blobs10/plain",
    "circles/dc",
)
ACCURATE_TOLERANCE = 1e-7


@functools.cache
def _suite_cells() -> tuple[dict[str, Any], ...]:
    """The cells of the suite's development and held-out runs (read once)."""
    paths = [RESULTS / name for name in ("suite.json", "suite_held_out.json")]
    return tuple(cell for path in paths if path.exists() for cell in json.loads(path.read_text())["cells"])


def tuned_standard(problem: str, pattern: str) -> tuple[float, str]:
    """The lr and schedule the suite's tuning chose for standard training of the cell."""
    for cell in _suite_cells():
        if cell["problem"] == problem and cell["pattern"] == pattern:
            return float(cell["standard"]["lr"]), str(cell["standard"]["schedule"])
    raise ValueError(f"cell {problem}/{pattern} is in neither suite.json nor suite_held_out.json; run the suite first")


def accurate_prediction(trainer: Any, x: torch.Tensor) -> torch.Tensor:
    """The trained model's readout at ``t_end`` for the same ODE solved accurately (torchdiffeq
    dopri5 at rtol = atol = ``ACCURATE_TOLERANCE`` through ``lyapunov_plugin.integrate``)."""
    from torchdiffeq import odeint

    model = as_lyapunov_model(trainer.model)
    accurate = functools.partial(odeint, method="dopri5", rtol=ACCURATE_TOLERANCE, atol=ACCURATE_TOLERANCE)
    ts = torch.tensor([0.0, float(trainer.t_end)])
    with torch.no_grad():
        return model.readout(integrate(model, x, ts, solver=accurate)[-1])


def accuracies(trainer: Any, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Test accuracy with the model's own solver and with an accurate dopri5 solve, and the
    share of points whose predicted class differs between them."""
    with torch.no_grad():
        own = trainer.predict(x).argmax(-1)
    fine = accurate_prediction(trainer, x).argmax(-1)
    return {
        "acc_own_solver": float((own == y).float().mean()),
        "acc_accurate": float((fine == y).float().mean()),
        "disagreement": float((own != fine).float().mean()),
    }


def lyanet_objective(lyanet: Any, trainer: Any, problem: Any) -> float:
    """LyaNet's training objective (the LyaNet trainer's, at its final kappa) for the model
    ``trainer`` trained, on the whole training set, in eval mode."""
    x, y = problem.x_train, problem.y_train
    objective = lyanet.resolve_objective(x)
    with EvalMode(trainer.model):
        out = objective.compute(
            trainer.model, x, y, kappa=lyanet.kappa_schedule.final, generator=torch.Generator().manual_seed(0)
        )
    return float(out.loss.detach())


def measure(cells: Sequence[str], seeds: Sequence[int], epochs: Optional[int] = None) -> dict[str, Any]:
    rows = []
    for cell in cells:
        problem_name, pattern = cell.split("/")
        problem = load_problem(problem_name)
        lr, schedule = tuned_standard(problem_name, pattern)
        row: dict[str, Any] = {"problem": problem_name, "pattern": pattern, "standard_lr": lr, "schedule": schedule}
        per_seed: dict[str, list[dict[str, float]]] = {"standard": [], "lyanet": []}
        for seed in seeds:
            trainers = {}
            for key, method in (("standard", STANDARD), ("lyanet", DEFAULT)):
                keep: dict[str, Any] = {}
                overrides: dict[str, Any] = {"lr": lr, "schedule": schedule} if method is STANDARD else {}
                with contextlib.redirect_stdout(io.StringIO()):  # torchdyn prints a note per model
                    run(problem, pattern, method, seed=seed, keep=keep, epochs=epochs, **overrides)
                trainers[key] = keep["trainer"]
            for key, trainer in trainers.items():
                scores = accuracies(trainer, problem.x_test, problem.y_test)
                scores["lyanet_objective"] = lyanet_objective(trainers["lyanet"], trainer, problem)
                per_seed[key].append(scores)
        for key, values in per_seed.items():
            row[key] = {name: mean_std([r[name] for r in values]) for name in values[0]}
        rows.append(row)
        s, ly = row["standard"], row["lyanet"]
        print(
            f"{cell}: standard {100 * s['acc_own_solver']['mean']:.1f} -> {100 * s['acc_accurate']['mean']:.1f}, "
            f"LyaNet {100 * ly['acc_own_solver']['mean']:.1f} -> {100 * ly['acc_accurate']['mean']:.1f}",
            flush=True,
        )
    return {"cells": list(cells), "seeds": list(seeds), "rows": rows, "tolerance": ACCURATE_TOLERANCE}


def _pct(cell: dict[str, Any]) -> str:
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "| cell | standard, own solver (%) | standard, accurate solve (%) | standard, predictions changed (%) "
        "| LyaNet, own solver (%) | LyaNet, accurate solve (%) | LyaNet, predictions changed (%) "
        "| gap, own solver (pt) | gap, accurate solve (pt) | LyaNet objective, standard / LyaNet model |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in payload["rows"]:
        s, ly = row["standard"], row["lyanet"]
        gap_own = 100 * (ly["acc_own_solver"]["mean"] - s["acc_own_solver"]["mean"])
        gap_fine = 100 * (ly["acc_accurate"]["mean"] - s["acc_accurate"]["mean"])
        lines.append(
            f"| {row['problem']}/{row['pattern']} | {_pct(s['acc_own_solver'])} | {_pct(s['acc_accurate'])} "
            f"| {_pct(s['disagreement'])} | {_pct(ly['acc_own_solver'])} | {_pct(ly['acc_accurate'])} "
            f"| {_pct(ly['disagreement'])} | {gap_own:+.1f} | {gap_fine:+.1f} "
            f"| {s['lyanet_objective']['mean']:.3g} / {ly['lyanet_objective']['mean']:.3g} |"
        )
    tol = payload["tolerance"]
    lines += [
        "",
        f"Mean ± std over seeds {payload['seeds']}. Both methods trained as `python -m benchmarks.suite` trains them "
        "(standard at the lr and schedule its tuning chose, LyaNet with `LyapunovTrainer(model)` defaults). "
        "'own solver': the model's dopri5 at rtol = atol = 1e-3 (the suite's number); 'accurate solve': the same "
        f"ODE with torchdiffeq dopri5 at rtol = atol = {tol:g} through `lyapunov_plugin.integrate`; 'predictions "
        "changed': test points whose class differs between the two. gap = LyaNet - standard. LyaNet objective: "
        "the LyaNet trainer's own objective at its final kappa on the whole training set, for each trained model "
        "(lower = Eq. 10 violated less). "
        f"Machine: {payload['machine']}; wall clock {payload['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def cell_benchmark(
    argv: Optional[Sequence[str]],
    *,
    description: str,
    cells: Sequence[str],
    name: str,
    measure: Callable[[Sequence[str], Sequence[int], Optional[int]], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """The command line of a benchmark over suite cells (this one, ``benchmarks.regression_rollout``):
    ``--cells``, ``--seeds``, ``--out``, ``--name``, ``--epochs``; ``measure(cells, seeds, epochs)``
    then ``markdown(payload)``, written as ``<name>.{json,md}`` and printed."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", nargs="+", default=list(cells), help="problem/pattern cells of the suite")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=name)
    parser.add_argument("--epochs", type=int, help="override the suite's budget (smoke runs)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    payload = measure(args.cells, args.seeds, args.epochs)
    payload.update(machine=machine(), wall_seconds=time.perf_counter() - started)
    text = markdown(payload)
    write_outputs(args.out, args.name, payload, text + "\n")
    print(text)
    return payload


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    return cell_benchmark(
        argv, description=__doc__ or "", cells=CELLS, name="solver_fidelity", measure=measure, markdown=markdown
    )


if __name__ == "__main__":
    main()
