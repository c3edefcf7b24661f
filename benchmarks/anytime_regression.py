"""Anytime inference for regression (issue 14 item 1): the label-free rule of
:func:`lyapunov_plugin.anytime_predict` with ``potential=MSEPotential()``.

For each regression cell of the suite (problem x model pattern) and seed, the suite trains
one model with the LyaNet default regression recipe and one with standard training, both at
the defaults' Adam 1e-2 with the cosine schedule (``benchmarks.suite.runner.run``). Then, per
model:

1. ``level`` is chosen on the **validation** split with
   :func:`lyapunov_plugin.anytime.choose_level` (``tolerance`` = ``TOLERANCE`` in units of the
   standardised target: a stop is false when the stopped output differs from the one at
   ``t_end`` by more; fixed-sequence testing with a one-sided Clopper-Pearson bound at
   ``CONFIDENCE`` on a false-stop rate of at most ``MAX_FALSE_STOP_RATE``); the rule's
   ``kappa`` is the one LyaNet trains with (10: the bound ``2 RMS(dpsi/dt) / kappa`` is what
   Eq. 10 at that rate justifies), for both models;
2. on the **test** split: the per-example dopri5 full solve and the anytime prediction
   (test MSE, mean NFE per example, false stops), and torchdiffeq's batched dopri5 NFE to
   ``t_end`` of the standard model (docs/evaluation.md's protocol).

    python -m benchmarks.anytime_regression          # 3 problems x 2 patterns x 3 seeds
    python -m benchmarks.anytime_regression --quick  # smoke run (CI)

Output: ``benchmarks/results/anytime_regression.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from lyapunov_plugin import MSEPotential, anytime_predict
from lyapunov_plugin.anytime import anytime_trace, choose_level

from .anytime import _batched_dopri5
from .suite.problems import load_problem
from .suite.runner import run
from .suite.variants import DEFAULT, STANDARD

RESULTS = Path(__file__).resolve().parent / "results"
PROBLEMS = ("diabetes", "friedman1", "sine")
PATTERNS = ("enc_dc", "paper")
SEEDS = (0, 1, 2)
#: Deviation from the output at t_end that counts as a false stop (standardised targets).
TOLERANCE = 0.05
MAX_FALSE_STOP_RATE = 0.05
CONFIDENCE = 0.8
#: The rule's rate: LyaNet's training kappa (the default recipe's).
RULE_KAPPA = 10.0


def _mse(prediction: torch.Tensor, y: torch.Tensor) -> float:
    return float((prediction.double() - y.double()).pow(2).mean())


def _evaluate(model: Any, problem: Any) -> dict[str, Any]:
    potential = MSEPotential()
    val = anytime_trace(model, problem.x_val, potential=potential, solver="dopri5")
    choice = choose_level(
        None,
        None,
        trace=val,
        tolerance=TOLERANCE,
        max_false_stop_rate=MAX_FALSE_STOP_RATE,
        confidence=CONFIDENCE,
        kappa=RULE_KAPPA,
    )
    x, y = problem.x_test, problem.y_test
    full = anytime_predict(model, x, level=0.0, potential=potential, solver="dopri5")
    anytime = anytime_predict(model, x, level=choice.level, kappa=RULE_KAPPA, potential=potential, solver="dopri5")
    _, batched_nfe = _batched_dopri5(model, x)
    return {
        "level": choice.level,
        "mse_full": _mse(full.logits, y),
        "mse_anytime": _mse(anytime.logits, y),
        "false_stop_rate": float(anytime.false_stops(full.logits, TOLERANCE).double().mean()),
        "mean_nfe_anytime": anytime.mean_nfe,
        "mean_nfe_full": full.mean_nfe,
        "nfe_batched_dopri5": batched_nfe,
        "converged_fraction": anytime.converged_fraction,
    }


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _table(rows: list[dict[str, Any]]) -> str:
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["problem"], row["pattern"]), []).append(row)
    lines = [
        "| problem | pattern | test MSE full / anytime L | false stops L (%) | NFE anytime L | NFE full L "
        "(per example) | NFE anytime L / batched S | test MSE full / anytime S | false stops S (%) | "
        "NFE anytime S / its full | level L / S |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ratios, losses, worst, own = [], [], 0.0, {"lyanet": [], "standard": []}
    for (problem, pattern), runs in cells.items():
        L = [r["lyanet"] for r in runs]  # noqa: N806
        S = [r["standard"] for r in runs]  # noqa: N806

        def m(side: list[dict[str, Any]], key: str) -> float:
            return _mean([s[key] for s in side])

        ratio = _mean([a["mean_nfe_anytime"] / b["nfe_batched_dopri5"] for a, b in zip(L, S, strict=True)])
        ratios.append(ratio)
        own["lyanet"].append(_mean([r["mean_nfe_anytime"] / r["mean_nfe_full"] for r in L]))
        own["standard"].append(_mean([r["mean_nfe_anytime"] / r["mean_nfe_full"] for r in S]))
        losses.append(m(L, "mse_anytime") / m(L, "mse_full"))
        worst = max(worst, m(L, "false_stop_rate"))
        lines.append(
            f"| {problem} | {pattern} | {m(L, 'mse_full'):.3f} / {m(L, 'mse_anytime'):.3f} | "
            f"{100 * m(L, 'false_stop_rate'):.1f} | {m(L, 'mean_nfe_anytime'):.1f} | {m(L, 'mean_nfe_full'):.1f} | "
            f"{ratio:.2f} | {m(S, 'mse_full'):.3f} / {m(S, 'mse_anytime'):.3f} | "
            f"{100 * m(S, 'false_stop_rate'):.1f} | "
            f"{_mean([s['mean_nfe_anytime'] / s['mean_nfe_full'] for s in S]):.2f} | "
            f"{m(L, 'level'):.3g} / {m(S, 'level'):.3g} |"
        )
    lines += [
        "",
        f"- median over cells of LyaNet anytime NFE / standard batched dopri5 NFE: {statistics.median(ratios):.2f}",
        "- anytime NFE / the same model's per-example full solve, median over cells: LyaNet "
        f"{statistics.median(own['lyanet']):.2f}, standard {statistics.median(own['standard']):.2f}",
        f"- LyaNet test MSE, anytime / full solve: worst cell {max(losses):.3f}x",
        f"- LyaNet false stops (deviation > {TOLERANCE:g} from the output at t_end), mean over seeds: worst cell "
        f"{100 * worst:.1f}% (target <= {100 * MAX_FALSE_STOP_RATE:.0f}%)",
    ]
    return "\n".join(lines)


def main(
    *,
    problems: Sequence[str] = PROBLEMS,
    patterns: Sequence[str] = PATTERNS,
    seeds: Sequence[int] = SEEDS,
    epochs: Optional[int] = None,
    stem: str = "anytime_regression",
    out_dir: Path = RESULTS,
) -> dict[str, Any]:
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = []
    for name in problems:
        problem = load_problem(name)
        for pattern in patterns:
            for seed in seeds:
                row: dict[str, Any] = {"problem": name, "pattern": pattern, "seed": seed}
                for key, method in (("lyanet", DEFAULT), ("standard", STANDARD)):
                    keep: dict[str, Any] = {}
                    run(problem, pattern, method, seed=seed, epochs=epochs, keep=keep)
                    row[key] = _evaluate(keep["trainer"].model, problem)
                print(
                    f"{name}/{pattern}/seed {seed}: LyaNet MSE {row['lyanet']['mse_full']:.3f} -> "
                    f"{row['lyanet']['mse_anytime']:.3f}, NFE {row['lyanet']['mean_nfe_anytime']:.1f} "
                    f"(full {row['lyanet']['mean_nfe_full']:.1f}), false stops {row['lyanet']['false_stop_rate']:.3f}",
                    flush=True,
                )
                rows.append(row)
    descriptions = "; ".join(load_problem(n).description for n in problems)
    description = (
        f"Mean over seeds {list(seeds)}. {descriptions}. L = LyaNet (`LyapunovTrainer(model, "
        "Recipe(potential=MSEPotential()))`), S = standard (`SupervisedObjective(MSEPotential())`), both Adam "
        f"lr 1e-2 cosine, the suite's epochs and batches{'' if epochs is None else f' (here {epochs} epochs)'}. "
        f"Rule: stop where 2 RMS(dpsi/dt) / kappa < level, kappa = {RULE_KAPPA:g} for both models; level chosen on "
        f"the validation split by `choose_level(tolerance={TOLERANCE:g})` (fixed-sequence testing, one-sided "
        f"Clopper-Pearson {CONFIDENCE:g}-confidence bound on the false-stop rate <= {MAX_FALSE_STOP_RATE:.0%}). "
        "False stop: the anytime output differs from the per-example full solve's at t_end by more than the "
        "tolerance (RMS). Per-example dopri5 rtol = atol = 1e-3; 'batched S': torchdiffeq dopri5 on the whole "
        f"test batch. Machine: {platform.machine()}, 1 thread, torch {torch.__version__}; wall clock "
        f"{time.perf_counter() - started:.0f} s."
    )
    markdown = _table(rows) + "\n\n" + description + "\n"
    out_dir.mkdir(parents=True, exist_ok=True)
    import json

    (out_dir / f"{stem}.json").write_text(json.dumps({"meta": {"description": description}, "rows": rows}, indent=1))
    (out_dir / f"{stem}.md").write_text(markdown)
    print(markdown)
    return {"rows": rows, "markdown": markdown}


def cli(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one cell, one seed, 2 epochs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        main(
            problems=("sine",),
            patterns=("enc_dc",),
            seeds=(0,),
            epochs=2,
            stem="anytime_regression_quick",
            out_dir=args.out,
        )
    else:
        main(out_dir=args.out)


if __name__ == "__main__":
    cli()
