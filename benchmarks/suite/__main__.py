"""``python -m benchmarks.suite``: LyaNet's defaults against tuned standard training on
many small problems and every model pattern users have (docs/defaults.md).

    python -m benchmarks.suite                       # development problems, 3 seeds
    python -m benchmarks.suite --held-out            # the held-out problems only
    python -m benchmarks.suite --variants lr_1e-3 kappa_1 ...   # the lever study
    python -m benchmarks.suite --quick               # smoke run (CI)
    python -m benchmarks.suite --regression          # regression problems (MSEPotential), suite_regression.*
    python -m benchmarks.suite --patterns bare       # torchdyn's bare NeuralODE(f), state = logits, suite_bare.*
    python -m benchmarks.suite --regression --held-out   # (and --patterns bare --held-out): held-out problems
    python -m benchmarks.suite --image               # MNIST-5k, models with a conv encoder, suite_image.*

Writes ``suite.json`` (every run, every cell) and ``suite.md`` (the table the README embeds)
to ``--out``; with ``--update-readme`` also replaces the README's table (the regression and
bare tables go to docs/defaults.md only).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from examples.common.report import embed_markdown

from . import report
from .patterns import PATTERNS, applies
from .problems import (
    BARE_EXTRA,
    DEVELOPMENT,
    HELD_OUT,
    HELD_OUT_BARE,
    HELD_OUT_REGRESSION,
    IMAGE,
    PROBLEMS,
    REGRESSION,
    Problem,
    load_problem,
)
from .runner import run
from .variants import DEFAULT, STANDARD, VARIANTS

#: Learning rates and schedules the standard baseline is tuned over (on the validation split).
BASELINE_LRS = (1e-3, 3e-3, 1e-2)
BASELINE_SCHEDULES = ("cosine", "constant")
ROOT = Path(__file__).resolve().parents[2]

_PROBLEM_CACHE: dict[str, Problem] = {}


def _problem(name: str) -> Problem:
    if name not in _PROBLEM_CACHE:
        _PROBLEM_CACHE[name] = load_problem(name)
    return _PROBLEM_CACHE[name]


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


def _job(args: tuple[str, str, str, int, dict[str, Any], Optional[int]]) -> dict[str, Any]:
    problem, pattern, method_name, seed, overrides, epochs = args
    method = STANDARD if method_name == STANDARD.name else VARIANTS[method_name]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # torchdyn prints a note per model
        return run(_problem(problem), pattern, method, seed=seed, epochs=epochs, **overrides)


class _Pool:
    """A process pool (or the current process for ``jobs == 1``) that reports progress."""

    def __init__(self, jobs: int, total: int) -> None:
        self.jobs, self.total, self.done = jobs, total, 0
        self.pool = multiprocessing.get_context("fork").Pool(jobs, initializer=_worker_init) if jobs > 1 else None
        if self.pool is None:
            _worker_init()
        self.started = time.perf_counter()

    def map(self, tasks: list[tuple]) -> list[dict[str, Any]]:
        results: list[Optional[dict[str, Any]]] = [None] * len(tasks)
        iterator = (
            self.pool.imap_unordered(_indexed, list(enumerate(tasks)))
            if self.pool is not None
            else (_indexed(item) for item in enumerate(tasks))
        )
        for index, result in iterator:
            results[index] = result
            self.done += 1
            print(
                f"[{self.done}/{self.total} {time.perf_counter() - self.started:6.0f}s] {result['problem']}/"
                f"{result['pattern']} {result['method']} lr={result['lr']:g} seed {result['seed']}: "
                f"{result['schedule']}: {_score(result)} ({result['objective']}), "
                f"{result['train_seconds']:.1f}s",
                file=sys.stderr,
                flush=True,
            )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _score(result: dict[str, Any]) -> str:
    if result.get("task") == "regression":
        return f"test MSE {result['test_mse']:.3f}"
    return f"acc {100 * result['test_acc']:.1f}%"


def _indexed(item: tuple[int, tuple]) -> tuple[int, dict[str, Any]]:
    index, task = item
    return index, _job(task)


def _majority(problem: Problem) -> float:
    return max(Counter(problem.y_test.tolist()).values()) / len(problem.y_test)


def _applies(problem: str, pattern: str) -> bool:
    p = _problem(problem)
    return applies(pattern, p.num_features, p.num_classes, image=p.image_shape is not None)


def _selection_key(run_: dict[str, Any]) -> tuple[float, ...]:
    """Higher is better: validation accuracy then loss (classification), validation MSE (regression)."""
    if run_.get("task") == "regression":
        return (-run_["val_loss"],)
    return (run_["val_acc"], -run_["val_loss"])


def run_suite(
    problems: Sequence[str],
    patterns: Sequence[str],
    seeds: Sequence[int],
    variants: Sequence[str],
    *,
    jobs: int,
    epochs: Optional[int] = None,
    lrs: Sequence[float] = BASELINE_LRS,
    schedules: Sequence[str] = BASELINE_SCHEDULES,
    baseline: Optional[dict[str, Any]] = None,
    rerun_default: bool = False,
) -> dict[str, Any]:
    """Run standard training (lr and schedule tuned on seed ``seeds[0]``) and each variant
    on every cell; ``baseline`` (the ``runs`` of an earlier suite JSON) reuses its standard
    runs instead of training them again, and its default LyaNet runs unless
    ``rerun_default`` (after a change of the default recipe)."""
    cells = [(p, q) for p in problems for q in patterns if _applies(p, q)]
    first, rest = seeds[0], list(seeds[1:])
    if baseline is not None:
        keep = {(p, q) for p, q in cells}
        held = {(r["problem"], r["pattern"], r["seed"]) for r in baseline["standard"]}
        if not rerun_default:
            held &= {(r["problem"], r["pattern"], r["seed"]) for r in baseline["lyanet"] if r["method"] == DEFAULT.name}
        missing = sorted(f"{p}/{q} seed {s}" for p, q in cells for s in seeds if (p, q, s) not in held)
        if missing:
            raise ValueError(
                f"--baseline-from must hold the standard{'' if rerun_default else ' and default LyaNet'} runs of "
                f"every cell and seed of this run; missing: {', '.join(missing)}"
            )

        def reused(kind: str, method: Optional[str] = None) -> list[dict[str, Any]]:
            return [
                r
                for r in baseline[kind]
                if (r["problem"], r["pattern"]) in keep
                and r["seed"] in seeds
                and (method is None or r["method"] == method)
            ]

        tasks = [
            (p, q, name, s, {}, epochs)
            for name in variants
            if rerun_default or name != DEFAULT.name
            for p, q in cells
            for s in seeds
            if VARIANTS[name].patterns is None or q in VARIANTS[name].patterns
        ]
        pool = _Pool(jobs, len(tasks))
        try:
            lyanet_runs = pool.map(tasks)
        finally:
            pool.close()
        return {
            "search": [r for r in baseline["search"] if (r["problem"], r["pattern"]) in keep],
            "standard": reused("standard"),
            "lyanet": ([] if rerun_default else reused("lyanet", DEFAULT.name)) + lyanet_runs,
        }
    search = [
        (p, q, STANDARD.name, first, {"lr": lr, "schedule": sched}, epochs)
        for p, q in cells
        for lr in lrs
        for sched in schedules
    ]
    lyanet = []
    for name in variants:
        method = VARIANTS[name]
        lyanet += [
            (p, q, name, s, {}, epochs)
            for p, q in cells
            for s in seeds
            if name == DEFAULT.name or method.patterns is None or q in method.patterns
        ]
    pool = _Pool(jobs, len(search) + len(lyanet) + len(cells) * len(rest))
    try:
        phase_one = pool.map(search + lyanet)
        searched, lyanet_runs = phase_one[: len(search)], phase_one[len(search) :]
        chosen: dict[tuple[str, str], dict[str, Any]] = {}
        for r in searched:
            key = (r["problem"], r["pattern"])
            best = chosen.get(key)
            if best is None or _selection_key(r) > _selection_key(best):
                chosen[key] = r
        standard_runs = list(chosen.values())
        standard_runs += pool.map(
            [
                (p, q, STANDARD.name, s, {"lr": chosen[(p, q)]["lr"], "schedule": chosen[(p, q)]["schedule"]}, epochs)
                for p, q in cells
                for s in rest
            ]
        )
    finally:
        pool.close()
    return {"search": searched, "standard": standard_runs, "lyanet": lyanet_runs}


def cells_of(runs: dict[str, Any], variant: str, problems: Sequence[str], patterns: Sequence[str]) -> list[dict]:
    """Cells of ``variant`` (falling back on the default runs where the variant equals it)."""
    out = []
    for p in problems:
        for q in patterns:
            if not _applies(p, q):
                continue
            mine = [r for r in runs["lyanet"] if r["method"] == variant and (r["problem"], r["pattern"]) == (p, q)]
            if not mine:
                mine = [
                    dict(r, method=variant)
                    for r in runs["lyanet"]
                    if r["method"] == DEFAULT.name and (r["problem"], r["pattern"]) == (p, q)
                ]
            standard = [r for r in runs["standard"] if (r["problem"], r["pattern"]) == (p, q)]
            if _problem(p).is_regression:
                out.append(report.summarise_regression_cell(mine, standard))
            else:
                out.append(report.summarise_cell(mine, standard, chance=_majority(_problem(p))))
    return out


#: The model pattern drawn for each 2-D problem: its state is the 2-D input itself.
PICTURE_PATTERN = "dc"


def pictures(runs: dict[str, Any], problems: Sequence[str], out: Path, stem: str) -> list[Path]:
    """Per 2-D classification problem: LyaNet beside standard training of the ``dc`` pattern (seed of the
    first run), decision boundary, phase portrait and error against inference time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lyapunov_plugin.plot import compare

    written = []
    for name in problems:
        problem = _problem(name)
        if not problem.is_2d or problem.is_regression:  # decision-boundary pictures: classes only
            continue
        standard = next((r for r in runs["standard"] if (r["problem"], r["pattern"]) == (name, PICTURE_PATTERN)), None)
        if standard is None:
            continue
        trained = {}
        for label, method, overrides in (
            ("LyaNet (defaults)", DEFAULT, {}),
            ("standard", STANDARD, {"lr": standard["lr"], "schedule": standard["schedule"]}),
        ):
            keep: dict[str, Any] = {}
            run(
                problem,
                PICTURE_PATTERN,
                method,
                seed=standard["seed"],
                epochs=standard["epochs"],
                keep=keep,
                **overrides,
            )
            trained[label] = keep["trainer"].model
        path = out / f"{stem}_{name}.png"
        fig = compare(
            trained,
            problem.x_test,
            problem.y_test,
            path=path,
            suptitle=f"{name}, torchdyn DataControl NeuralODE + linear readout (seed {standard['seed']})",
        )
        plt.close(fig)
        written.append(path)
    return written


def _loaded(value: Any) -> Any:
    """Inverse of :func:`_jsonable`: ``"inf"`` back to ``math.inf``."""
    if value == "inf":
        return math.inf
    if isinstance(value, dict):
        return {k: _loaded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_loaded(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """JSON-safe (``inf`` as a string) and compact (floats to 6 significant digits)."""
    if isinstance(value, float):
        return "inf" if math.isinf(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", nargs="+", choices=PROBLEMS, help="default: the development problems")
    parser.add_argument("--held-out", action="store_true", help="run the held-out problems instead")
    parser.add_argument(
        "--regression", action="store_true", help="the regression problems (MSEPotential), every pattern that applies"
    )
    parser.add_argument(
        "--image", action="store_true", help="the image problem (MNIST-5k), every pattern with a conv encoder"
    )
    parser.add_argument("--patterns", nargs="+", choices=PATTERNS, default=list(PATTERNS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        choices=sorted(set(VARIANTS) - {DEFAULT.name}),
        help="levers to run besides the defaults (the lever study)",
    )
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel runs")
    parser.add_argument("--epochs", type=int, help="override the per-problem budget")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 problems, 2 patterns, 1 seed, 2 epochs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default=None, help="output file stem (default suite / suite_held_out)")
    parser.add_argument(
        "--update-readme", action="store_true", help="embed the tables in README.md and docs/defaults.md"
    )
    parser.add_argument("--no-pictures", action="store_true", help="skip the per-problem pictures")
    parser.add_argument("--from-json", type=Path, help="re-render the markdown of an earlier run (no training)")
    parser.add_argument(
        "--baseline-from",
        type=Path,
        help="reuse the standard runs of an earlier suite JSON (same problems, patterns, seeds)",
    )
    parser.add_argument(
        "--rerun-default",
        action="store_true",
        help="with --baseline-from: train the default LyaNet runs again instead of reusing them",
    )
    args = parser.parse_args(argv)
    if args.rerun_default and args.baseline_from is None:
        parser.error("--rerun-default needs --baseline-from (without it every run is trained anyway)")
    if args.from_json is not None:
        payload = _loaded(json.loads(args.from_json.read_text()))
        markdown, levers = render(payload)
        stem = args.from_json.with_suffix("")
        stem.with_suffix(".md").write_text(markdown + "\n")
        if levers:
            Path(f"{stem}_levers.md").write_text(levers + "\n")
        print(markdown + ("\n\n" + levers if levers else ""))
        if args.update_readme:
            publish(payload, markdown, levers)
        return payload

    bare_only = list(args.patterns) == ["bare"]
    if args.problems:
        problems = list(args.problems)
    elif args.image:
        problems = list(IMAGE)
    elif args.regression:
        problems = list(HELD_OUT_REGRESSION if args.held_out else REGRESSION)
    elif bare_only:
        problems = [p for p in (HELD_OUT + HELD_OUT_BARE if args.held_out else DEVELOPMENT + BARE_EXTRA)]
        problems = [p for p in problems if _applies(p, "bare")]
    else:
        problems = list(HELD_OUT if args.held_out else DEVELOPMENT)
    patterns, seeds, epochs, lrs = list(args.patterns), list(args.seeds), args.epochs, BASELINE_LRS
    if args.quick:
        problems = problems if (args.problems or args.regression or args.image or bare_only) else ["circles", "iris"]
        patterns = patterns if args.patterns != list(PATTERNS) else ["dc", "paper"]
        seeds, epochs, lrs = [0], 2, (1e-2,)
    # Which subset this run is, in the order the problems were chosen above: it names the
    # output files and the report's label.
    kind = "image" if args.image else ("regression" if args.regression else ("bare" if bare_only else "classification"))
    stem = "suite" if kind == "classification" else f"suite_{kind}"
    name = args.name or (stem + ("_held_out" if args.held_out else "") + ("_quick" if args.quick else ""))
    variants = [DEFAULT.name, *args.variants]
    started = time.perf_counter()
    baseline = _loaded(json.loads(args.baseline_from.read_text()))["runs"] if args.baseline_from else None
    runs = run_suite(
        problems,
        patterns,
        seeds,
        variants,
        jobs=args.jobs,
        epochs=epochs,
        lrs=lrs,
        schedules=("cosine",) if args.quick else BASELINE_SCHEDULES,
        baseline=baseline,
        rerun_default=args.rerun_default,
    )
    wall = time.perf_counter() - started

    cells = cells_of(runs, DEFAULT.name, problems, patterns)
    lever_rows: list[dict[str, Any]] = []
    payload = {
        "kind": kind,
        "problems": problems,
        "patterns": patterns,
        "seeds": seeds,
        "variants": variants,
        "held_out": bool(args.held_out),
        "jobs": args.jobs,
        "machine": report.machine(),
        "wall_seconds": wall,
        # Which runs came from an earlier JSON (--baseline-from) instead of this run's clock.
        "reused": (
            None if args.baseline_from is None else {"from": args.baseline_from.name, "default": not args.rerun_default}
        ),
        "cells": cells,
        "targets": _targets(cells),
        "levers": lever_rows,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    # The runs are saved before anything else can fail (the lever rows, the pictures, which
    # retrain two models); --from-json renders a saved run again.
    (args.out / f"{name}.json").write_text(json.dumps(_jsonable(payload), separators=(",", ":")))
    if args.variants:
        for variant in variants:
            vcells = cells_of(runs, variant, problems, patterns)
            lever_rows.append(_lever_row(variant, vcells, regression=kind == "regression"))
        (args.out / f"{name}.json").write_text(json.dumps(_jsonable(payload), separators=(",", ":")))
    if not args.no_pictures and not args.quick:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload["pictures"] = [
                str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
                for p in pictures(runs, problems, args.out, name)
            ]
        (args.out / f"{name}.json").write_text(json.dumps(_jsonable(payload), separators=(",", ":")))
    markdown, levers = render(payload)
    (args.out / f"{name}.md").write_text(markdown + "\n")
    if levers:
        (args.out / f"{name}_levers.md").write_text(levers + "\n")
    print(markdown + ("\n\n" + levers if levers else ""))
    if args.update_readme:
        publish(payload, markdown, levers)
    return payload


def _lever_row(variant: str, cells: list[dict[str, Any]], *, regression: bool) -> dict[str, Any]:
    """One row of the lever study: the variant's targets over its cells, and per cell the
    accuracy delta (classification) or the MSE ratio to standard training (regression)."""
    if regression:
        return {
            "name": variant,
            "targets": report.regression_targets(cells),
            "ratios": [c["mse_ratio"] for c in cells],
            "cells": [{"problem": c["problem"], "pattern": c["pattern"], "mse_ratio": c["mse_ratio"]} for c in cells],
        }
    return {
        "name": variant,
        "targets": report.targets(cells),
        "deltas": [c["delta"] for c in cells],
        "cells": [
            {
                "problem": c["problem"],
                "pattern": c["pattern"],
                "delta": c["delta"],
                "acc": c["lyanet"]["acc"],
                "time_ratio": c["time_ratio"],
            }
            for c in cells
        ],
    }


def _targets(cells: list[dict[str, Any]]) -> dict[str, Any]:
    regression = [c for c in cells if c.get("task") == "regression"]
    classification = [c for c in cells if c.get("task") != "regression"]
    out = report.targets(classification) if classification else {}
    if regression:
        out["regression"] = report.regression_targets(regression)
    return out


def publish(payload: dict[str, Any], markdown: str, levers: str) -> None:
    """Embed the tables in README.md and docs/defaults.md (``suite`` / ``suite-held-out``
    blocks, and the lever table in the write-up); the regression and bare subsets go to
    docs/defaults.md only (``suite-regression``, ``suite-bare``, ``-held-out`` suffixed)."""
    kind = payload.get("kind", "classification")
    if kind != "classification":
        marker = f"suite-{kind}" + ("-held-out" if payload.get("held_out") else "")
        embed_markdown(ROOT / "docs" / "defaults.md", marker, markdown)
        return
    marker = "suite-held-out" if payload.get("held_out") else "suite"
    embed_markdown(ROOT / "README.md", marker, markdown)
    embed_markdown(ROOT / "docs" / "defaults.md", marker, markdown)
    if levers:
        embed_markdown(ROOT / "docs" / "defaults.md", "levers", levers)


def render(payload: dict[str, Any]) -> tuple[str, str]:
    """The suite's markdown (cells, targets, setup) and the lever table, from its JSON."""
    runs = payload["runs"]
    count = len(runs["search"]) + len(runs["standard"]) - len(payload["cells"]) + len(runs["lyanet"])
    reused = payload.get("reused")
    runs_line = f"{count} training runs, {payload.get('jobs', 2)} in parallel, wall clock "
    runs_line += f"{payload['wall_seconds']:.0f} s"
    if reused:
        runs_line += (
            f" (the standard{' and default LyaNet' if reused['default'] else ''} runs reused from "
            f"`{reused['from']}`; the clock counts the others)"
        )
    label = "held-out problems" if payload.get("held_out") else "development problems"
    if payload.get("kind") == "bare":
        label += ", bare pattern"
    if payload.get("kind") == "image":
        label = "image problem (convolutional encoder), " + label
    if payload.get("kind") == "regression":
        label = "regression, " + label
        problems = "; ".join(f"{p.name}: {p.description}" for p in (_problem(n) for n in payload["problems"]))
        note = (
            f"{problems}. Seeds {payload['seeds']}; standard training (`SupervisedObjective(MSEPotential())`) at "
            "the best of lr 1e-3, 3e-3, 1e-2 and a cosine or constant schedule by validation MSE (seed "
            f"{payload['seeds'][0]}), Adam; LyaNet: `LyapunovTrainer(model, Recipe(potential=MSEPotential()))` "
            "(the default objective for the model, its path integral along 8 RK4 steps, "
            f"`MSEPotential.path_steps`; Adam, lr 1e-2, cosine schedule). {runs_line}; MSE of "
            "standardised targets at t = 1 with the model's own solver (1 = predicting the training mean); "
            "'L / S' = LyaNet / standard; time to target = median over seeds of the training CPU seconds until "
            "the test MSE first falls to 1.05x the baseline's mean final MSE; Eq. 10 and V monotone with "
            f"V = MSE, kappa = 10. Machine: {payload['machine']}."
        )
        markdown = "\n\n".join(
            [
                report.regression_table(payload["cells"]),
                report.regression_targets_markdown(payload["targets"]["regression"], label=label),
                note,
            ]
        )
        return markdown, report.regression_variant_table(payload["levers"]) if payload.get("levers") else ""
    note = report.note(
        [_problem(p) for p in payload["problems"]],
        payload["seeds"],
        f"{runs_line}; 'L / S' = LyaNet / standard; time to target = median over "
        "seeds of the training seconds until test accuracy first reaches the baseline's mean final "
        "accuracy - 1 pt (training CPU seconds: runs share the machine, so the wall clock would depend on "
        "what ran beside them)",
        machine_line=payload["machine"],
    )
    markdown = "\n\n".join(
        [report.cells_table(payload["cells"]), report.targets_markdown(payload["targets"], label=label), note]
    )
    levers = (
        "\n\n".join(
            [
                report.variant_table(payload["levers"]),
                "By cell group (the levers that apply to one objective change only its cells):",
                report.variant_groups_table(payload["levers"]),
            ]
        )
        if payload.get("levers")
        else ""
    )
    return markdown, levers


if __name__ == "__main__":
    main()
