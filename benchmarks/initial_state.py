"""Monte Carlo or path integral when ``eta(0)`` comes from a trainable layer? (docs/defaults.md)

The README's quick-start model, a linear encoder in front of a torchdyn ``DataControl``
field whose 10-dimensional state is the logits, trained for 10 epochs on the quick start's
digits split with Monte Carlo (``MonteCarloObjective``), the path integral
(``PathIntegralObjective``, what the default recipe chooses for it) and standard training,
three seeds. Sampled states carry no gradient to the encoder, which then learns only
through the field's conditioning. Writes ``initial_state.{json,md}``.

    python -m benchmarks.initial_state
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from examples.common.report import mean_std, write_outputs
from lyapunov_plugin import LyapunovTrainer, MonteCarloObjective, Objective, SupervisedObjective

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Each method's objective (``None``: the trainer's default for the model).
METHODS: dict[str, Callable[[], Optional[Objective]]] = {
    "Monte Carlo (MonteCarloObjective)": MonteCarloObjective,
    "path integral (the default for this model)": lambda: None,
    "standard (SupervisedObjective())": SupervisedObjective,
}


def quickstart_model() -> nn.Module:
    from torchdyn.core import NeuralODE
    from torchdyn.nn import DataControl

    field = nn.Sequential(DataControl(), nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 10))
    with contextlib.redirect_stdout(io.StringIO()):  # torchdyn's note about wrapping the field
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), NeuralODE(field, solver="dopri5", return_t_eval=False))


def main(
    *,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 10,
    out_dir: Path | str = RESULTS_DIR,
    limit: Optional[int] = None,
) -> dict[str, Any]:
    from sklearn.datasets import load_digits
    from torch.utils.data import DataLoader, TensorDataset

    torch.set_num_threads(1)
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    cut = 1400 if limit is None else limit
    x_test, y_test = x[1400:], y[1400:]
    rows: dict[str, Any] = {}
    for name, objective in METHODS.items():
        errors, early, modes = [], [], []
        for seed in seeds:
            torch.manual_seed(seed)
            loader = DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=64, shuffle=True)
            trainer = LyapunovTrainer(quickstart_model(), objective=objective(), progress=False, seed=seed)
            trainer.fit(loader, epochs=epochs)
            errors.append(100 * float((trainer.predict(x_test).argmax(-1) != y_test).double().mean()))
            early.append(100 * float((trainer.predict(x_test, t_end=0.25).argmax(-1) != y_test).double().mean()))
            modes.append(trainer.mode)
        rows[name] = {"test error (%)": mean_std(errors), "error at t=0.25 (%)": mean_std(early), "mode": modes[0]}
    lines = ["| method | test error (%) | error at t=0.25 (%) |", "|---|---:|---:|"]
    for name, row in rows.items():
        cells = [f"{row[k]['mean']:.1f} ± {row[k]['std']:.1f}" for k in ("test error (%)", "error at t=0.25 (%)")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines) + (
        f"\n\nThe README's quick-start model and split (1400 train / 397 test digits), "
        f"{epochs} epochs, batch 64, `LyapunovTrainer` defaults otherwise; mean ± std "
        f"over seeds {list(seeds)}.\n"
    )
    payload = {"epochs": epochs, "seeds": list(seeds), "summary": rows}
    write_outputs(Path(out_dir), "initial_state", payload, markdown)
    print(markdown)
    return payload


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(seeds=args.seeds, epochs=args.epochs, out_dir=args.out_dir)
