"""The levers tried to make LyaNet deliver on real data (docs/real_data.md), on digits.

This is the study of issue 4, kept reproducible: its rows spell out the recipe of that time
(Adam 1e-3, 32 samples, uniform times, the covering hypercube as "default recipe"), not
today's ``LyapunovTrainer`` defaults, which the suite (``python -m benchmarks.suite``,
docs/defaults.md) chose later on many problems.

Each variant changes one thing (sampler, rate, potential, dynamics, encoder, hard-state
mining, kappa warm-up) relative to its neighbours; all share the data split, epochs,
optimiser and the attack evaluation of :func:`examples.kappa_ablation.evaluate` (clean
error, PGD-10 and APGD-DLR at l_inf 0.1 through RK4-10, monotone decay of V, dopri5 NFE).
Writes ``lever_study.{json,md}``.

    python -m benchmarks.lever_study                  # every variant, 3 seeds
    python -m benchmarks.lever_study --only 0 1 11    # a subset (indices of VARIANTS)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from examples.common.data import digits
from examples.common.models import TRAIN_SOLVER, digits_node
from examples.common.report import mean_std, write_outputs
from examples.kappa_ablation import evaluate
from lyapunov_plugin import (
    CounterexampleSearch,
    HypercubeSampler,
    HypersphereSampler,
    KappaSchedule,
    KappaWarmup,
    LyapunovTrainer,
    MarginPotential,
    MixtureSampler,
    MonteCarloObjective,
    Objective,
    Recipe,
    StateSampler,
    SupervisedObjective,
    TrajectorySampler,
    UniformTimeSampler,
    appendix_b_half_width,
)

NUM_CLASSES = 10
LIPSCHITZ = 2.0
#: A fixed region this many times Appendix B's half-width contained the rollouts of the
#: trained digits models (|eta| reached ~90 for s(10, 10) = 6.1).
WIDE_REGION_FACTOR = 16.0
ROLLOUT_NOISE = 0.5


def _cube(kappa: float, factor: float = 1.0) -> HypercubeSampler:
    return HypercubeSampler(half_width=factor * appendix_b_half_width(kappa, NUM_CLASSES))


def _monte_carlo(state_sampler: StateSampler, **settings: Any) -> MonteCarloObjective:
    """A Monte Carlo row of that study: 32 samples per example, uniform times."""
    return MonteCarloObjective(
        state_sampler=state_sampler, num_samples=32, time_sampler=UniformTimeSampler(), **settings
    )


def _covering(**settings: Any) -> MonteCarloObjective:
    """The covering hypercube, the default recipe of issue 4 (Appendix B's half-width grown
    per batch to twice the rollouts' extent)."""
    return _monte_carlo(HypercubeSampler(half_width=appendix_b_half_width(10.0, NUM_CLASSES), cover=2.0), **settings)


@dataclass(frozen=True)
class Variant:
    """One configuration: how the model is built and what it is trained with (the study's
    optimiser for every row: Adam at 1e-3, cosine schedule)."""

    name: str
    lipschitz: Optional[float]
    objective: Callable[[], Objective]
    dynamics: str = "mlp"
    #: The rate of Eq. (10): of the training objective and of the simplex dynamics' corners.
    kappa: float = 10.0
    #: A training rate that changes over the epochs (then ``kappa`` is only the dynamics').
    kappa_schedule: Optional[KappaSchedule] = None


VARIANTS: tuple[Variant, ...] = (
    Variant("standard, plain encoder", None, SupervisedObjective),
    Variant("standard, Lipschitz encoder", LIPSCHITZ, SupervisedObjective),
    Variant(
        "LyaNet, plain, App. B ball, kappa 5",
        None,
        lambda: _monte_carlo(HypersphereSampler.around_hypercube(appendix_b_half_width(5.0, NUM_CLASSES), NUM_CLASSES)),
        kappa=5.0,
    ),
    Variant("LyaNet, plain, App. B cube, kappa 5", None, lambda: _monte_carlo(_cube(5.0)), kappa=5.0),
    Variant(
        "LyaNet, plain, cube + rollout mixture, kappa 5",
        None,
        lambda: _monte_carlo(MixtureSampler((_cube(5.0), TrajectorySampler(noise_std=ROLLOUT_NOISE)), (0.5, 0.5))),
        kappa=5.0,
    ),
    Variant("LyaNet, plain, App. B cube, kappa 10", None, lambda: _monte_carlo(_cube(10.0))),
    Variant("LyaNet, Lipschitz, App. B cube, kappa 5", LIPSCHITZ, lambda: _monte_carlo(_cube(5.0)), kappa=5.0),
    Variant("LyaNet, Lipschitz, App. B cube, kappa 10", LIPSCHITZ, lambda: _monte_carlo(_cube(10.0))),
    Variant(
        "LyaNet, Lipschitz, App. B cube, kappa 10, margin potential",
        LIPSCHITZ,
        lambda: _monte_carlo(_cube(10.0), potential=MarginPotential()),
    ),
    Variant(
        "LyaNet, Lipschitz, App. B cube, kappa 10, simplex dynamics",
        LIPSCHITZ,
        lambda: _monte_carlo(_cube(10.0)),
        dynamics="simplex",
    ),
    Variant(
        "LyaNet, Lipschitz, cube 16x App. B, kappa 10",
        LIPSCHITZ,
        lambda: _monte_carlo(_cube(10.0, WIDE_REGION_FACTOR)),
    ),
    Variant("LyaNet, Lipschitz, default recipe (covering cube)", LIPSCHITZ, _covering),
    Variant("default recipe, plain encoder", None, _covering),
    Variant("default recipe + detach V in kappa V", LIPSCHITZ, lambda: _covering(detach_v=True)),
    Variant(
        "default recipe + kappa warm-up 1 -> 10 (20 epochs)",
        LIPSCHITZ,
        _covering,
        kappa_schedule=KappaWarmup(start=1.0, end=10.0, epochs=20),
    ),
    Variant(
        "default recipe + counterexample search",
        LIPSCHITZ,
        lambda: _covering(counterexamples=CounterexampleSearch(steps=3, step_size=0.5, fraction=0.5)),
    ),
    Variant("default recipe + velocity penalty 0.01", LIPSCHITZ, lambda: _covering(velocity_penalty=0.01)),
    Variant("default recipe + velocity penalty 0.1", LIPSCHITZ, lambda: _covering(velocity_penalty=0.1)),
    Variant(
        "default recipe + rollout mixture",
        LIPSCHITZ,
        lambda: _monte_carlo(
            MixtureSampler(
                (
                    HypercubeSampler(half_width=appendix_b_half_width(10.0, NUM_CLASSES), cover=2.0),
                    TrajectorySampler(noise_std=ROLLOUT_NOISE),
                ),
                (0.5, 0.5),
            )
        ),
    ),
)

#: The study's optimiser for every row (that time's defaults: Adam at 1e-3, cosine schedule).
RECIPE = Recipe(lr=1e-3)


def run_variant(variant: Variant, seed: int, *, epochs: int, split: Any) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = digits_node(
        split.x_train, lipschitz=variant.lipschitz, dynamics=variant.dynamics, kappa=variant.kappa, solver=TRAIN_SOLVER
    )
    kappa = variant.kappa_schedule if variant.kappa_schedule is not None else variant.kappa
    trainer = LyapunovTrainer(model, RECIPE, objective=variant.objective(), kappa=kappa, seed=seed, progress=False)
    train_loader, _ = split.loaders(64, generator=torch.Generator().manual_seed(seed))
    trainer.fit(train_loader, epochs=epochs)
    return evaluate(trainer, split, kappa=trainer.kappa_schedule.final, seed=seed)


def main(
    *,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 60,
    only: Optional[Sequence[int]] = None,
    out_dir: Path | str = "benchmarks/results",
    quick: bool = False,
    name: str = "lever_study",
) -> dict[str, Any]:
    """Run the chosen variants (all by default) for each seed and write the table."""
    torch.set_num_threads(1)
    split = digits(limit=120 if quick else None)
    chosen = [VARIANTS[i] for i in only] if only is not None else list(VARIANTS)
    rows: dict[str, dict[str, Any]] = {}
    runs = []
    for variant in chosen:
        per_seed = [run_variant(variant, seed, epochs=epochs, split=split) for seed in seeds]
        runs.extend({"variant": variant.name, "seed": s, **m} for s, m in zip(seeds, per_seed, strict=False))
        rows[variant.name] = {k: mean_std([m[k] for m in per_seed]) for k in per_seed[0]}
        print(variant.name, {k: round(v["mean"], 2) for k, v in rows[variant.name].items()}, flush=True)
    payload = {"data": split.description, "epochs": epochs, "seeds": list(seeds), "summary": rows, "runs": runs}
    markdown = _markdown(payload)
    write_outputs(Path(out_dir), name, payload, markdown)
    print(markdown)
    return payload


# Timing is measured by benchmarks/timing.py (ratios in one process); wall-clock times of
# runs that share a machine are not comparable and are left out of this table.
_NOT_TABULATED = ("training time (s)",)


def _markdown(payload: dict[str, Any]) -> str:
    rows = payload["summary"]
    metrics = [m for m in next(iter(rows.values())) if m not in _NOT_TABULATED]
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for variant_name, cells in rows.items():
        lines.append(
            f"| {variant_name} | "
            + " | ".join(f"{cells[m]['mean']:.1f} ± {cells[m]['std']:.1f}" for m in metrics)
            + " |"
        )
    return "\n".join(lines) + (
        f"\n\nMean ± std over seeds {payload['seeds']}; {payload['data']}; "
        f"{payload['epochs']} epochs; attacks through RK4-10, one thread per run.\n"
    )


def merge(
    parts: Sequence[Path], *, out_dir: Path | str = "benchmarks/results", name: str = "lever_study"
) -> dict[str, Any]:
    """Combine the JSON of runs made with ``--only`` (in the order of VARIANTS)."""
    import json

    loaded = [json.loads(Path(p).read_text()) for p in parts]
    first = loaded[0]
    if any(p["seeds"] != first["seeds"] or p["epochs"] != first["epochs"] for p in loaded):
        raise ValueError("parts must share seeds and epochs")
    rows = {k: v for p in loaded for k, v in p["summary"].items()}
    order = [v.name for v in VARIANTS if v.name in rows]
    payload = dict(first, summary={k: rows[k] for k in order}, runs=[r for p in loaded for r in p["runs"]])
    markdown = _markdown(payload)
    write_outputs(Path(out_dir), name, payload, markdown)
    return payload


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--only", type=int, nargs="+", default=None, help="indices into VARIANTS")
    parser.add_argument("--out-dir", default="benchmarks/results")
    parser.add_argument("--name", default="lever_study")
    parser.add_argument("--merge", nargs="+", default=None, help="JSON files of partial runs to combine")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    if args.merge:
        merge([Path(p) for p in args.merge], out_dir=args.out_dir, name=args.name)
    else:
        main(seeds=args.seeds, epochs=args.epochs, only=args.only, out_dir=args.out_dir, name=args.name)
