"""Before/after: CPU time of ``anytime_predict`` at an older revision against the working tree.

The older ``lyapunov_plugin/anytime.py`` and ``lyapunov_plugin/adaptive.py`` are read from
git (``--before``, default ``HEAD``) and loaded beside the current ones in the same process;
the same trained models (seed 0, the anytime benchmark's training) and the same level
(validation point estimate, as the older benchmark chose it) are timed interleaved, as the
fastest of ``--repeats`` process-CPU times of one test batch (robust to other load on a
shared machine), against the standard model's batched torchdiffeq dopri5. Both versions
must give the same per-example NFE (checked).

    python -m benchmarks.anytime_speedup [--before REV] [--problems ...] [--patterns ...] [--update-docs]

Output: ``benchmarks/results/anytime_speedup.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from lyapunov_plugin.anytime import anytime_predict, choose_level

from .anytime import MAX_FALSE_STOP_RATE, PATTERNS, PROBLEMS, RESULTS, _batched_dopri5, _problem, _train

ROOT = Path(__file__).resolve().parents[1]


def _load_revision(revision: str) -> types.ModuleType:
    """``lyapunov_plugin.anytime`` as of ``revision``, with its own copy of ``adaptive``."""

    def source(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{revision}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout

    def load(name: str, text: str) -> types.ModuleType:
        module = types.ModuleType(f"lyapunov_plugin.{name}")
        module.__package__ = "lyapunov_plugin"
        sys.modules[module.__name__] = module
        exec(compile(text, f"{revision}:{name}", "exec"), module.__dict__)  # noqa: S102 - our own file at a revision
        return module

    load("_before_adaptive", source("lyapunov_plugin/adaptive.py"))
    text = source("lyapunov_plugin/anytime.py").replace("from .adaptive import", "from ._before_adaptive import")
    return load("_before_anytime", text)


def _cpu_seconds(fn: Any) -> float:
    started = time.process_time()
    fn()
    return time.process_time() - started


def main(
    *,
    before: str = "HEAD",
    problems: Sequence[str] = PROBLEMS,
    patterns: Sequence[str] = PATTERNS,
    repeats: int = 15,
    out_dir: Path = RESULTS,
    update_docs: bool = False,
) -> str:
    torch.set_num_threads(1)
    old = _load_revision(before)
    rows: list[dict[str, Any]] = []
    for name in problems:
        problem = _problem(name)
        for pattern in patterns:
            lyanet = _train(problem, pattern, "lyanet", 0, None)
            standard = _train(problem, pattern, "standard", 0, None)
            x = problem.x_test
            level = choose_level(lyanet, problem.x_val, max_false_stop_rate=MAX_FALSE_STOP_RATE, solver="dopri5").level
            after_result = anytime_predict(lyanet, x, level=level, solver="dopri5")
            before_result = old.anytime_predict(lyanet, x, level=level, solver="dopri5")
            jobs = {
                "before": partial(old.anytime_predict, lyanet, x, level=level, solver="dopri5"),
                "after": partial(anytime_predict, lyanet, x, level=level, solver="dopri5"),
                "before_full": partial(old.anytime_predict, lyanet, x, level=0.0, solver="dopri5"),
                "after_full": partial(anytime_predict, lyanet, x, level=0.0, solver="dopri5"),
                "standard": partial(_batched_dopri5, standard, x),
            }
            seconds: dict[str, list[float]] = {job: [] for job in jobs}
            for fn in jobs.values():
                fn()
            for _ in range(repeats):
                for job, fn in jobs.items():
                    seconds[job].append(_cpu_seconds(fn))
            best = {job: min(values) for job, values in seconds.items()}
            rows.append(
                {
                    "problem": name,
                    "pattern": pattern,
                    "level": level,
                    "mean_nfe": after_result.mean_nfe,
                    "field_calls": after_result.field_calls,
                    "nfe_equal": bool(torch.equal(after_result.nfe, before_result.nfe)),
                    "nfe_differs_rows": int((after_result.nfe != before_result.nfe).sum()),
                    "cpu_seconds": best,
                }
            )
            print(f"{name}/{pattern}: " + ", ".join(f"{j} {v * 1e3:.1f} ms" for j, v in best.items()), flush=True)
    lines = [
        "| problem | pattern | level | mean NFE | field calls | CPU ms before / after | after / before | "
        "anytime / standard, before / after | rule off, before / after (ms) | same NFE per example |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        s = row["cpu_seconds"]
        same = "yes" if row["nfe_equal"] else f"no ({row['nfe_differs_rows']} rows)"
        lines.append(
            f"| {row['problem']} | {row['pattern']} | {row['level']:.3g} | {row['mean_nfe']:.1f} | "
            f"{row['field_calls']} | "
            f"{s['before'] * 1e3:.1f} / {s['after'] * 1e3:.1f} | {s['after'] / s['before']:.2f} | "
            f"{s['before'] / s['standard']:.2f} / {s['after'] / s['standard']:.2f} | "
            f"{s['before_full'] * 1e3:.1f} / {s['after_full'] * 1e3:.1f} | "
            f"{same} |"
        )

    def median(key: str) -> float:
        return statistics.median(r["cpu_seconds"][key] / r["cpu_seconds"]["standard"] for r in rows)

    speedup = statistics.median(r["cpu_seconds"]["after"] / r["cpu_seconds"]["before"] for r in rows)
    lines += [
        "",
        f"Median over cells: anytime CPU time after / before {speedup:.2f}; anytime / standard batched dopri5 "
        f"before {median('before'):.2f}, after {median('after'):.2f}.",
        "",
        f"Before = `git show {before}` of lyapunov_plugin/anytime.py and adaptive.py, after = the working tree; seed 0 "
        "models of the anytime benchmark, level = validation point estimate (<= 0.5% false stops), one test batch, "
        f"fastest of {repeats} interleaved repeats of process CPU time, 1 thread.",
    ]
    table = "\n".join(lines)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "anytime_speedup.json").write_text(json.dumps({"before": before, "rows": rows}, indent=1))
    (out_dir / "anytime_speedup.md").write_text(table + "\n")
    if update_docs:
        from examples.common.report import embed_markdown

        from .anytime import DOCS

        embed_markdown(DOCS, "anytime-speedup", table)
    print(table)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD")
    parser.add_argument("--problems", nargs="+", default=list(PROBLEMS))
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--update-docs", action="store_true", help="embed the table in docs/anytime.md")
    args = parser.parse_args()
    main(
        before=args.before,
        problems=args.problems,
        patterns=args.patterns,
        repeats=args.repeats,
        out_dir=args.out_dir,
        update_docs=args.update_docs,
    )
