"""Paper Table 3 / Section 5.6: the convergence rate ``kappa``, on digits.

Trains the LyaNet model of :mod:`examples.compare_digits` for each ``kappa`` and seed
(everything else at the trainer's defaults) and records clean error, PGD-10 and APGD-DLR
error at l_inf 0.1 through RK4-10, the fraction of correctly classified test points whose
``V`` decreases monotonically, and the dopri5 NFE. Writes ``kappa_ablation.{json,md}``.

    python -m examples.kappa_ablation --kappas 1 5 10 20
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from lyapunov_plugin import Classifier, CrossEntropyPotential, FixedStepSolver, decay_statistics

from .common.data import digits
from .common.models import dopri5
from .common.report import mean_std, write_outputs
from .common.robustness import run_attack
from .compare_digits import train


def evaluate(trainer: Any, split: Any, *, kappa: float, seed: int) -> dict[str, float]:
    """Clean error, two attacks at l_inf 0.1, monotone fraction and NFE of one model."""
    import torchattacks

    xt, yt = split.x_test, split.y_test
    view = Classifier(trainer.model, solver=FixedStepSolver(method="rk4", steps=10))
    pgd, _ = run_attack(
        "pgd10",
        lambda m: torchattacks.PGD(m, eps=0.1, alpha=0.025, steps=10),
        view,
        view,
        xt,
        yt,
        eps=0.1,
        norm="linf",
        seed=seed,
    )
    dlr, _ = run_attack(
        "apgd_dlr",
        lambda m: torchattacks.APGD(m, norm="Linf", eps=0.1, steps=100, loss="dlr", seed=seed),
        view,
        view,
        xt,
        yt,
        eps=0.1,
        norm="linf",
        seed=seed,
    )
    decay = decay_statistics(
        trainer.model, [(xt, yt)], potential=CrossEntropyPotential(), kappa=kappa, ts=torch.linspace(0, 1, 21)
    )
    return {
        "clean error (%)": 100 * trainer.evaluate([(xt, yt)])["error"],
        "PGD-10 l_inf 0.1 (%)": 100 * pgd.error_attack_view,
        "APGD-DLR l_inf 0.1 (%)": 100 * dlr.error_attack_view,
        "V monotone (%)": 100 * decay.monotone_fraction,
        "dopri5 NFE": float(trainer.nfe(xt, solver=dopri5())),
    }


def main(
    *,
    kappas: Sequence[float] = (1.0, 5.0, 10.0, 20.0),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 60,
    out_dir: Path | str = "results",
    quick: bool = False,
) -> dict[str, Any]:
    """Run the sweep; ``quick`` uses a small slice of the data (smoke tests)."""
    split = digits(limit=120 if quick else None)
    rows: dict[str, dict[str, Any]] = {}
    runs = []
    for kappa in kappas:
        per_seed = []
        for seed in seeds:
            trainer, _ = train("lyanet", seed, epochs=epochs, split=split, kappa=kappa)
            metrics = evaluate(trainer, split, kappa=kappa, seed=seed)
            per_seed.append(metrics)
            runs.append({"kappa": kappa, "seed": seed, **metrics})
        rows[f"{kappa:g}"] = {k: mean_std([m[k] for m in per_seed]) for k in per_seed[0]}
    metrics = list(next(iter(rows.values())).keys())
    lines = ["| kappa | " + " | ".join(metrics) + " |", "|---:|" + "---:|" * len(metrics)]
    for kappa, cells in rows.items():
        lines.append(f"| {kappa} | " + " | ".join(f"{c['mean']:.1f} ± {c['std']:.1f}" for c in cells.values()) + " |")
    markdown = "\n".join(lines) + f"\n\nMean ± std over seeds {list(seeds)}; {split.description}; {epochs} epochs.\n"
    payload = {"data": split.description, "epochs": epochs, "seeds": list(seeds), "summary": rows, "runs": runs}
    write_outputs(Path(out_dir), "kappa_ablation", payload, markdown)
    print(markdown)
    return payload


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kappas", type=float, nargs="+", default=[1.0, 5.0, 10.0, 20.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--out-dir", default="results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(kappas=args.kappas, seeds=args.seeds, epochs=args.epochs, out_dir=args.out_dir)
