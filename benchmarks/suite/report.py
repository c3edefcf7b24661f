"""Aggregating suite runs into cells and writing the markdown tables (numbers come only
from runs; nothing here is typed by hand)."""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Sequence
from typing import Any, Optional

import torch

from .runner import EARLY_TIMES, time_to

#: Accuracy margin of the targets (issue 7): LyaNet >= baseline - 1 point, and so on.
MARGIN = 0.01


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(finite) if finite else math.nan


def _std(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.stdev(finite) if len(finite) > 1 else 0.0


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def summarise_cell(lyanet: list[dict[str, Any]], standard: list[dict[str, Any]], *, chance: float) -> dict[str, Any]:
    """One (problem, pattern) cell: LyaNet runs against the tuned standard runs."""

    def side(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
        acc = [r["test_acc"] for r in runs]
        times = [time_to(r["curve"], target) for r in runs]
        out: dict[str, Any] = {
            "acc": _mean(acc),
            "acc_std": _std(acc),
            "seeds": [r["seed"] for r in runs],
            "time_to_target": _median(times),
            "train_seconds": _mean([r["train_seconds"] for r in runs]),
            "seconds_per_epoch": _mean([r["train_seconds"] / r["epochs"] for r in runs]),
            "nfe": _mean([r["nfe"] for r in runs]),
            "v_monotone": _mean([r["v_monotone"] for r in runs]),
            "test_violation": _mean([r["test_violation"] for r in runs]),
            "objective": runs[0]["objective"],
            "lr": runs[0]["lr"],
            "schedule": runs[0]["schedule"],
        }
        for t in EARLY_TIMES:
            out[f"err_t{t}"] = 1.0 - _mean([r[f"test_acc_t{t}"] for r in runs])
        out["err_t1"] = 1.0 - out["acc"]
        return out

    baseline = _mean([r["test_acc"] for r in standard])
    target = baseline - MARGIN
    ly, st = side(lyanet, target), side(standard, target)
    ratio = ly["time_to_target"] / st["time_to_target"] if math.isfinite(ly["time_to_target"]) else math.inf
    return {
        "problem": lyanet[0]["problem"],
        "pattern": lyanet[0]["pattern"],
        "method": lyanet[0]["method"],
        "lyanet": ly,
        "standard": st,
        "target": target,
        "chance": chance,
        "delta": ly["acc"] - st["acc"],
        "time_ratio": ratio,
        "meets_accuracy": ly["acc"] >= st["acc"] - MARGIN - 1e-12,
        "at_chance": ly["acc"] <= chance + 0.02,
        "meets_early": abs(ly["err_t0.25"] - ly["err_t1"]) <= MARGIN + 1e-12,
        "meets_speed": ratio <= 1.0,
    }


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def _seconds(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.1f}"


def _ratio(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:.2f}"


def cells_table(cells: list[dict[str, Any]]) -> str:
    """The suite's main table: one row per (problem, pattern) cell."""
    lines = [
        "| problem | pattern | LyaNet objective | test acc LyaNet (%) | standard (%), lr, schedule | Δ (pt) "
        "| err t=0.25 L / S (%) | err t=0.5 L / S (%) | CPU s to target L / S | ratio "
        "| NFE L / S | V monotone L / S (%) | Eq. 10 violated L / S (%) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        ly, st = c["lyanet"], c["standard"]
        flag = "" if c["meets_accuracy"] else " ✗"
        lines.append(
            f"| {c['problem']} | {c['pattern']} | {ly['objective']} "
            f"| {_pct(ly['acc'])} ± {_pct(ly['acc_std'])}{flag} "
            f"| {_pct(st['acc'])} ± {_pct(st['acc_std'])}, {st['lr']:g}, "
            f"{st['schedule']} "
            f"| {100 * c['delta']:+.1f} "
            f"| {_pct(ly['err_t0.25'])} / {_pct(st['err_t0.25'])} | {_pct(ly['err_t0.5'])} / {_pct(st['err_t0.5'])} "
            f"| {_seconds(ly['time_to_target'])} / {_seconds(st['time_to_target'])} | {_ratio(c['time_ratio'])} "
            f"| {ly['nfe']:.0f} / {st['nfe']:.0f} | {_pct(ly['v_monotone'], 0)} / {_pct(st['v_monotone'], 0)} "
            f"| {_pct(ly['test_violation'], 0)} / {_pct(st['test_violation'], 0)} |"
        )
    return "\n".join(lines)


def targets(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-7 targets over a set of cells."""
    mc = [c["time_ratio"] for c in cells if c["lyanet"]["objective"] == "monte_carlo"]
    per_epoch = [
        c["lyanet"]["seconds_per_epoch"] / c["standard"]["seconds_per_epoch"]
        for c in cells
        if c["lyanet"]["objective"] == "path_integral"
    ]
    return {
        "cells": len(cells),
        "accuracy_met": sum(c["meets_accuracy"] for c in cells),
        "at_chance": [f"{c['problem']}/{c['pattern']}" for c in cells if c["at_chance"]],
        "accuracy_missed": {
            f"{c['problem']}/{c['pattern']}": round(100 * c["delta"], 1) for c in cells if not c["meets_accuracy"]
        },
        "mean_delta": _mean([c["delta"] for c in cells]),
        "early_met": sum(c["meets_early"] for c in cells),
        "early_met_standard": sum(
            abs(c["standard"]["err_t0.25"] - c["standard"]["err_t1"]) <= MARGIN + 1e-12 for c in cells
        ),
        "speed_met": sum(c["meets_speed"] for c in cells),
        "median_ratio": _median([c["time_ratio"] for c in cells]),
        "median_ratio_monte_carlo": _median(mc) if mc else math.nan,
        "monte_carlo_cells": len(mc),
        "median_epoch_cost_path_integral": _median(per_epoch) if per_epoch else math.nan,
    }


def targets_markdown(t: dict[str, Any], *, label: str) -> str:
    def names(items: Any) -> str:
        return ", ".join(items) if items else "none"

    missed = ", ".join(f"{k} ({v:+.1f} pt)" for k, v in t["accuracy_missed"].items()) or "none"
    return "\n".join(
        [
            f"**{label}** ({t['cells']} cells):",
            f"- accuracy within 1 point of tuned standard training: {t['accuracy_met']}/{t['cells']} cells "
            f"(mean Δ {100 * t['mean_delta']:+.1f} pt); missed: {missed}",
            f"- cells at chance: {names(t['at_chance'])}",
            f"- error at t=0.25 within 1 point of t=1: LyaNet {t['early_met']}/{t['cells']}, "
            f"standard {t['early_met_standard']}/{t['cells']}",
            f"- reaches the baseline's accuracy - 1 pt no later than standard training: {t['speed_met']}/{t['cells']} "
            f"(median time ratio {_ratio(t['median_ratio'])}; Monte Carlo cells: {t['monte_carlo_cells']}, "
            f"median ratio {_ratio(t['median_ratio_monte_carlo'])})",
            f"- path-integral cost per epoch relative to standard training of the same model (median): "
            f"{_ratio(t['median_epoch_cost_path_integral'])}",
        ]
    )


def machine(threads_per_run: int = 1) -> str:
    return (
        f"{platform.machine()} ({platform.platform()}), {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{threads_per_run} intra-op thread(s) per run"
    )


def variant_table(rows: list[dict[str, Any]]) -> str:
    """Lever study: one row per variant, its targets over the cells."""
    lines = [
        "| variant | cells within 1 pt | mean Δ (pt) | worst Δ (pt) | at chance | early-termination met "
        "| speed met | median time ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        t = row["targets"]
        worst = min(row["deltas"]) if row["deltas"] else math.nan
        lines.append(
            f"| {row['name']} | {t['accuracy_met']}/{t['cells']} | {100 * t['mean_delta']:+.1f} "
            f"| {100 * worst:+.1f} | {len(t['at_chance'])} | {t['early_met']}/{t['cells']} "
            f"| {t['speed_met']}/{t['cells']} | {_ratio(t['median_ratio'])} |"
        )
    return "\n".join(lines)


#: The two groups of cells the levers differ on: the paper's model (Monte Carlo by default)
#: and every other pattern (the path integral by default).
CELL_GROUPS = {"paper cells": lambda pattern: pattern == "paper", "path cells": lambda pattern: pattern != "paper"}


def variant_groups_table(rows: list[dict[str, Any]]) -> str:
    """Lever study per cell group: within 1 pt, mean and worst Δ, median time ratio and the
    cells that never reach the target, for the paper cells and the other (path) cells."""
    lines = [
        "| variant | cells | within 1 pt | mean Δ (pt) | worst Δ (pt) | median time ratio | never |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        for group, member in CELL_GROUPS.items():
            cells = [c for c in row["cells"] if member(c["pattern"])]
            if not cells:
                continue
            deltas = [c["delta"] for c in cells]
            ratios = [c["time_ratio"] for c in cells]  # inf: never reaches the target
            within = sum(d >= -MARGIN - 1e-12 for d in deltas)
            never = sum(not math.isfinite(r) for r in ratios)
            lines.append(
                f"| {row['name']} | {group} ({len(cells)}) | {within}/{len(cells)} | "
                f"{100 * _mean(deltas):+.1f} | {100 * min(deltas):+.1f} | {_ratio(_median(ratios))} | "
                f"{never} |"
            )
    return "\n".join(lines)


def note(
    problems: Sequence[Any], seeds: Sequence[int], extra: Optional[str] = None, *, machine_line: Optional[str] = None
) -> str:
    parts = ["; ".join(f"{p.name}: {p.description}" for p in problems)]
    parts.append(
        f"seeds {list(seeds)}; standard training (`objective=SupervisedObjective()`) at the best of "
        f"lr 1e-3, 3e-3, 1e-2 and a cosine or constant schedule by validation accuracy (seed {seeds[0]}), Adam; "
        "LyaNet: `LyapunovTrainer(model)` defaults (Adam, lr 1e-2, cosine schedule, kappa 10; on the bare "
        "pattern the bare flow's lr 3e-2 and kappa 3)"
    )
    if extra:
        parts.append(extra)
    parts.append(f"machine: {machine_line if machine_line is not None else machine()}")
    return ". ".join(parts) + "."


#: Regression target (issue 13): LyaNet's test MSE at most this multiple of standard's.
MSE_RATIO = 1.05


def summarise_regression_cell(lyanet: list[dict[str, Any]], standard: list[dict[str, Any]]) -> dict[str, Any]:
    """One regression cell: LyaNet's test MSE (standardised targets) against the tuned standard runs'."""

    def side(runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
        mse = [r["test_mse"] for r in runs]
        out: dict[str, Any] = {
            "mse": _mean(mse),
            "mse_std": _std(mse),
            "seeds": [r["seed"] for r in runs],
            "time_to_target": _median([time_to(r["curve"], target, lower_is_better=True) for r in runs]),
            "train_seconds": _mean([r["train_seconds"] for r in runs]),
            "seconds_per_epoch": _mean([r["train_seconds"] / r["epochs"] for r in runs]),
            "nfe": _mean([r["nfe"] for r in runs]),
            "v_monotone": _mean([r["v_monotone"] for r in runs]),
            "test_violation": _mean([r["test_violation"] for r in runs]),
            "objective": runs[0]["objective"],
            "lr": runs[0]["lr"],
            "schedule": runs[0]["schedule"],
        }
        for t in EARLY_TIMES:
            out[f"mse_t{t}"] = _mean([r[f"test_mse_t{t}"] for r in runs])
        return out

    baseline = _mean([r["test_mse"] for r in standard])
    target = MSE_RATIO * baseline
    ly, st = side(lyanet, target), side(standard, target)
    ratio = ly["mse"] / st["mse"]
    time_ratio = ly["time_to_target"] / st["time_to_target"] if math.isfinite(ly["time_to_target"]) else math.inf
    return {
        "problem": lyanet[0]["problem"],
        "pattern": lyanet[0]["pattern"],
        "method": lyanet[0]["method"],
        "task": "regression",
        "lyanet": ly,
        "standard": st,
        "target": target,
        "mse_ratio": ratio,
        "time_ratio": time_ratio,
        "meets_mse": ratio <= MSE_RATIO + 1e-12,
        "meets_early": ly["mse_t0.25"] <= MSE_RATIO * ly["mse"] + 1e-12,
        "meets_speed": time_ratio <= 1.0,
    }


def regression_table(cells: list[dict[str, Any]]) -> str:
    """One row per regression (problem, pattern) cell: test MSE of both methods and their ratio."""
    lines = [
        "| problem | pattern | LyaNet objective | test MSE LyaNet | standard, lr, schedule | ratio L / S "
        "| MSE t=0.25 L / S | MSE t=0.5 L / S | CPU s to 1.05x S L / S | NFE L / S "
        "| V monotone L / S (%) | Eq. 10 violated L / S (%) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        ly, st = c["lyanet"], c["standard"]
        flag = "" if c["meets_mse"] else " ✗"
        lines.append(
            f"| {c['problem']} | {c['pattern']} | {ly['objective']} | {ly['mse']:.3f} ± {ly['mse_std']:.3f}{flag} "
            f"| {st['mse']:.3f} ± {st['mse_std']:.3f}, {st['lr']:g}, {st['schedule']} | {c['mse_ratio']:.2f} "
            f"| {ly['mse_t0.25']:.3f} / {st['mse_t0.25']:.3f} | {ly['mse_t0.5']:.3f} / {st['mse_t0.5']:.3f} "
            f"| {_seconds(ly['time_to_target'])} / {_seconds(st['time_to_target'])} "
            f"| {ly['nfe']:.0f} / {st['nfe']:.0f} | {_pct(ly['v_monotone'], 0)} / {_pct(st['v_monotone'], 0)} "
            f"| {_pct(ly['test_violation'], 0)} / {_pct(st['test_violation'], 0)} |"
        )
    return "\n".join(lines)


def regression_targets(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue-13 regression target over a set of cells."""
    return {
        "cells": len(cells),
        "mse_met": sum(c["meets_mse"] for c in cells),
        "mse_missed": {f"{c['problem']}/{c['pattern']}": round(c["mse_ratio"], 3) for c in cells if not c["meets_mse"]},
        "median_mse_ratio": _median([c["mse_ratio"] for c in cells]),
        "worst_mse_ratio": max((c["mse_ratio"] for c in cells), default=math.nan),
        "early_met": sum(c["meets_early"] for c in cells),
        "speed_met": sum(c["meets_speed"] for c in cells),
    }


def regression_variant_table(rows: list[dict[str, Any]]) -> str:
    """Lever study on the regression cells: one row per variant, its MSE ratios to tuned
    standard training (within the target, median, geometric mean, worst) and the other targets."""
    lines = [
        f"| variant | cells <= {MSE_RATIO:g}x | median ratio | geometric mean ratio | worst ratio "
        "| early-termination met | speed met |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        t, ratios = row["targets"], row["ratios"]
        geometric = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else math.nan
        lines.append(
            f"| {row['name']} | {t['mse_met']}/{t['cells']} | {t['median_mse_ratio']:.2f} | {geometric:.2f} "
            f"| {t['worst_mse_ratio']:.2f} | {t['early_met']}/{t['cells']} | {t['speed_met']}/{t['cells']} |"
        )
    return "\n".join(lines)


def regression_targets_markdown(t: dict[str, Any], *, label: str) -> str:
    missed = ", ".join(f"{k} ({v:.2f}x)" for k, v in t["mse_missed"].items()) or "none"
    return "\n".join(
        [
            f"**{label}** ({t['cells']} cells):",
            f"- test MSE <= {MSE_RATIO:g}x tuned standard training's: {t['mse_met']}/{t['cells']} cells "
            f"(median ratio {t['median_mse_ratio']:.2f}, worst {t['worst_mse_ratio']:.2f}); missed: {missed}",
            f"- MSE at t=0.25 within {MSE_RATIO:g}x of t=1 (LyaNet): {t['early_met']}/{t['cells']}",
            f"- reaches 1.05x the baseline's MSE no later than standard training: {t['speed_met']}/{t['cells']}",
        ]
    )
