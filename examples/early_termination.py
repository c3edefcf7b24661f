"""Paper Fig. 3 and Section 5.3: early-terminated inference, standard versus LyaNet, on digits.

For both models of :mod:`examples.compare_digits` (same architecture and seeds), the
prediction ``psi(eta(t))`` is read at every ``t`` of a grid on [0, 1]; loss and error are
averaged over the test points each model classifies correctly at ``t = 1`` (the paper's
protocol). Also the dopri5 NFE (rtol = atol = 1e-3) needed to reach ``t`` in
{0.25, 0.5, 1}. Writes ``early_termination.json`` and ``early_termination.png``.

    python -m examples.early_termination
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from lyapunov_plugin import CrossEntropyPotential, loss_error_curve, nfe_to_end

from .common.data import digits
from .common.models import dopri5
from .common.report import pyplot, write_json
from .compare_digits import train

METHODS = ("standard", "lyanet")


def main(
    *,
    epochs: int = 60,
    seeds: Sequence[int] = (0, 1, 2),
    grid: int = 21,
    out_dir: Path | str = "results",
    quick: bool = False,
    plot: bool = True,
) -> dict[str, Any]:
    """Train both methods per seed and record the inference curves.

    Arguments:
        epochs, seeds: as in :mod:`examples.compare_digits`.
        grid: number of time points on [0, 1].
        quick: a small slice of the data (smoke tests).
    """
    split = digits(limit=120 if quick else None)
    ts = torch.linspace(0.0, 1.0, grid)
    test = [(split.x_test, split.y_test)]
    curves: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for seed in seeds:
        for method in METHODS:
            trainer, _ = train(method, seed, epochs=epochs, split=split)
            curve = loss_error_curve(trainer.model, test, ts, potential=CrossEntropyPotential())
            nfe = {str(t): nfe_to_end(trainer.model, split.x_test, t_end=t, solver=dopri5()) for t in (0.25, 0.5, 1.0)}
            curves[method].append(
                {
                    "seed": seed,
                    "loss": curve.loss,
                    "error": curve.error,
                    "num_points": curve.num_points,
                    "nfe_dopri5": nfe,
                }
            )
    summary = {}
    for method in METHODS:
        runs = curves[method]
        summary[method] = {
            "mean_loss": torch.tensor([r["loss"] for r in runs]).mean(0).tolist(),
            "mean_error": torch.tensor([r["error"] for r in runs]).mean(0).tolist(),
            "mean_nfe_dopri5": {t: sum(r["nfe_dopri5"][t] for r in runs) / len(runs) for t in runs[0]["nfe_dopri5"]},
        }
    payload = {
        "data": split.description,
        "epochs": epochs,
        "seeds": list(seeds),
        "ts": ts.tolist(),
        "summary": summary,
        "runs": curves,
    }
    out = Path(out_dir)
    write_json(out, "early_termination", payload)
    if plot:
        plt = pyplot()
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for method, label in zip(METHODS, ("standard Neural ODE", "LyaNet"), strict=False):
            axes[0].plot(ts, summary[method]["mean_loss"], label=label)
            axes[1].plot(ts, [100 * e for e in summary[method]["mean_error"]], label=label)
        axes[0].set(
            xlabel="inference time t",
            ylabel="cross entropy",
            yscale="log",
            title="loss of psi(eta(t)), correctly classified points",
        )
        axes[1].set(xlabel="inference time t", ylabel="error (%)", title="error of psi(eta(t))")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "early_termination.png", dpi=110)
        plt.close(fig)
    print(json.dumps(summary, indent=1))
    return payload


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out-dir", default="results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(epochs=args.epochs, seeds=args.seeds, out_dir=args.out_dir)
