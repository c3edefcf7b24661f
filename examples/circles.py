"""Paper Fig. 4: softmax outputs of an MLP, a Neural ODE and LyaNet on concentric circles.

All three have an MLP of the same width in front; the two ODE models share the
data-controlled architecture (``eta(0) = 0``, 2-D state = logits, identity readout) and
differ only in training (cross entropy through RK4 versus the Monte Carlo Lyapunov loss).
Writes ``circles.png`` (probability of the inner class on a grid, near and zoomed out) and
``circles.json`` (test errors, and the mean predictive entropy between the circles, where
the paper observes LyaNet's smoother transition).

    python -m examples.circles --epochs 200
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lyapunov_plugin import (
    FixedStepSolver,
    LyapunovTrainer,
    MonteCarloObjective,
    ODEModel,
    Recipe,
    SupervisedObjective,
)
from lyapunov_plugin.blocks import MLPDynamics

from .common.data import circles
from .common.report import pyplot, write_json


class _Classifier(nn.Module):
    """The plain MLP classifier of Fig. 4 (trained with cross entropy by a plain loop)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _ode(hidden: int) -> ODEModel:
    encoder = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden))
    return ODEModel(
        MLPDynamics(2, hidden, (hidden,)),
        state_shape=(2,),
        encoder=encoder,
        solver=FixedStepSolver(method="rk4", steps=10),
    )


def _probabilities(predict: Any, extent: float, resolution: int) -> torch.Tensor:
    axis = torch.linspace(-extent, extent, resolution)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        return predict(grid).softmax(-1)[:, 1].reshape(resolution, resolution)


def main(
    *,
    epochs: int = 200,
    hidden: int = 16,
    seed: int = 0,
    n: int = 512,
    out_dir: Path | str = "results",
    resolution: int = 120,
    plot: bool = True,
) -> dict[str, Any]:
    """Train the three models and write the figure and the numbers.

    Arguments:
        epochs: training epochs for each model.
        hidden: width of every hidden layer.
        n: training points (as many test points).
        plot: write ``circles.png`` (needs matplotlib).
    """
    split = circles(n, seed=seed)
    train_loader, _ = split.loaders(64, generator=torch.Generator().manual_seed(seed))
    test = [(split.x_test, split.y_test)]
    results: dict[str, Any] = {"data": split.description, "epochs": epochs}
    predictors = {}

    torch.manual_seed(seed)
    mlp = _Classifier(hidden)
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    for _ in range(epochs):
        for xb, yb in train_loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(mlp(xb), yb).backward()
            optimizer.step()
    with torch.no_grad():
        results["mlp_test_error"] = float((mlp(split.x_test).argmax(-1) != split.y_test).float().mean())
    predictors["MLP"] = mlp

    for name, objective in (("Neural ODE", SupervisedObjective()), ("LyaNet", MonteCarloObjective())):
        torch.manual_seed(seed)
        trainer = LyapunovTrainer(_ode(hidden), Recipe(objective=objective, lr=1e-2), seed=seed, progress=False)
        trainer.fit(train_loader, epochs=epochs)
        results[f"{name}_test_error"] = trainer.evaluate(test)["error"]
        predictors[name] = trainer.predict

    # Predictive entropy in the annulus between the circles (radii 0.5 and 1).
    angle = torch.linspace(0, 2 * math.pi, 64)
    radius = torch.linspace(0.55, 0.95, 9)
    ring = torch.stack([torch.outer(radius, angle.cos()).flatten(), torch.outer(radius, angle.sin()).flatten()], -1)
    for name, predict in predictors.items():
        with torch.no_grad():
            p = predict(ring).softmax(-1).clamp_min(1e-12)
        results[f"{name}_entropy_between_circles"] = float(-(p * p.log()).sum(-1).mean())

    out = Path(out_dir)
    write_json(out, "circles", results)
    if plot:
        plt = pyplot()
        fig, axes = plt.subplots(2, 3, figsize=(10, 6.5))
        for col, (name, predict) in enumerate(predictors.items()):
            for row, extent in enumerate((1.5, 6.0)):
                ax = axes[row, col]
                ax.imshow(
                    _probabilities(predict, extent, resolution),
                    origin="lower",
                    cmap="coolwarm",
                    extent=(-extent, extent, -extent, extent),
                    vmin=0,
                    vmax=1,
                )
                if row == 0:
                    ax.scatter(
                        split.x_train[:200, 0],
                        split.x_train[:200, 1],
                        c=split.y_train[:200],
                        s=3,
                        cmap="coolwarm",
                        edgecolors="k",
                        linewidths=0.2,
                    )
                ax.set_title(f"{name}{' (zoomed out)' if row else ''}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.suptitle("P(inner circle): MLP, standard Neural ODE, LyaNet (paper Fig. 4)")
        fig.tight_layout()
        fig.savefig(out / "circles.png", dpi=110)
        plt.close(fig)
    print(json.dumps(results, indent=1))
    return results


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="results")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(epochs=args.epochs, seed=args.seed, out_dir=args.out_dir)
