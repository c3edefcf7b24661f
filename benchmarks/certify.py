"""Certified accuracy of LyaNet- and standard-trained Neural ODEs on digits / MNIST-5k (issue 15, item 3).

The model is the issue's probe: a linear encoder (flatten, standardise, ``Linear(64, 32)``;
``Linear(784, 32)`` with ``--dataset mnist5k``),
a data-controlled tanh MLP field ``MLPDynamics(10, 32, (64,))`` (input ``[eta, c, t]``),
``eta(0) = 0`` and the identity readout, run through RK4 with 10 steps. Each seed trains
one copy per method: ``standard`` (``SupervisedObjective``: cross entropy at ``t = 1`` through the solver), ``lyanet``
(``LyapunovTrainer(model)``, the default recipe), ``lyanet_wide_noise`` (wider rollout
noise), ``robust`` (``robust_objective(model)``) and the opt-in levers of
:mod:`lyapunov_plugin.contraction` (``input_lipschitz``, ``contraction``: the
incremental-stability condition; ``certified``: certified training through the
certificate's own bounds), and two variants of the default recipe: ``lyanet_smoothing``
(``CrossEntropyPotential(smoothing=0.05)``, a potential that is 0 at finite logits, so the
flow settles on a fixed point) and ``lyanet_kappa30`` (three times the default rate).
:func:`lyapunov_plugin.certify` then certifies the test set at
each l_inf eps, within the pixel box [0, 1] (the attacks' threat model) and, at the
headline eps, for the whole ball too. Soundness: every certified point is attacked
(margin-loss PGD through the same solver with restarts, plus random corners and uniform
points of the ball); the number of certified points broken must be 0.

    python -m benchmarks.certify            # 3 seeds
    python -m benchmarks.certify --quick    # a smoke run (numbers meaningless)
    python -m benchmarks.certify --seeds 0 --methods robust certified --name certify_seed0  # one process per seed
    python -m benchmarks.certify --methods standard lyanet robust certified --merge a.json b.json --update-doc
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from examples.common.data import digits, mnist5k
from examples.common.report import embed_markdown, mean_std, write_outputs
from lyapunov_plugin import (
    Classifier,
    CrossEntropyPotential,
    FixedStepSolver,
    LyapunovTrainer,
    MonteCarloObjective,
    ODEModel,
    Recipe,
    RolloutSampler,
    SupervisedObjective,
    certify,
    robust_objective,
)
from lyapunov_plugin.blocks import MLPDynamics, Standardize
from lyapunov_plugin.contraction import CertifiedMarginObjective, ContractionObjective

RESULTS_DIR = Path(__file__).parent / "results"
DOC = Path(__file__).parent.parent / "docs" / "certify.md"
SOLVER = FixedStepSolver(method="rk4", steps=10)
EPS = (0.001, 0.005, 0.01, 0.02, 0.05)
HEADLINE_EPS = 0.02
DOMAIN = (0.0, 1.0)
WIDE_NOISE = (0.0, 0.1, 0.3, 1.0, 3.0)
DATASETS = ("digits", "mnist5k")
METHODS = (
    "standard",
    "lyanet",
    "lyanet_wide_noise",
    "robust",
    "input_lipschitz",
    "contraction",
    "certified",
    "lyanet_smoothing",
    "lyanet_kappa30",
)
#: The opt-in levers of lyapunov_plugin.contraction, as measured (docs/certify.md).
LEVERS = {
    "input_lipschitz": "ContractionObjective(rate=0, weight=0, input_weight=0.1): Monte Carlo loss "
    "+ 0.1 mean |J_x^T u|_1 / 10",
    "contraction": "ContractionObjective(rate=1, weight=1): Monte Carlo loss + mean relu(v^T J_eta f v / |v|^2 + 1)",
    "certified": "CertifiedMarginObjective(eps=0.03, weight=0.5, max_examples=8): Monte Carlo loss + 0.5 CE of the "
    "certified worst-case logits (affine bounds through RK4-10, l_inf 0.03 in [0, 1]) on 8 examples per batch",
}
CERTIFIED_TRAINING = {"eps": 0.03, "weight": 0.5, "max_examples": 8}
#: Label smoothing of ``lyanet_smoothing`` (``CrossEntropyPotential(smoothing=...)``).
SMOOTHING = 0.05


def probe_model(x_train: torch.Tensor, *, seed: int) -> ODEModel:
    """The issue's probe: linear encoder, data-controlled tanh MLP field, identity readout."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Flatten(), Standardize.fit(x_train.flatten(1)), nn.Linear(x_train[0].numel(), 32))
    return ODEModel(MLPDynamics(10, 32, (64,)), state_shape=(10,), encoder=encoder, solver=SOLVER)


def train(method: str, split: Any, *, seed: int, epochs: int) -> tuple[ODEModel, float, dict[str, float]]:
    model = probe_model(split.x_train, seed=seed)
    if method == "standard":
        trainer = LyapunovTrainer(model, objective=SupervisedObjective(), seed=seed, progress=False)
    elif method == "lyanet":
        trainer = LyapunovTrainer(model, seed=seed, progress=False)
    elif method == "lyanet_wide_noise":
        objective = MonteCarloObjective(state_sampler=RolloutSampler(noise_scales=WIDE_NOISE))
        trainer = LyapunovTrainer(model, objective=objective, seed=seed, progress=False)
    elif method == "robust":
        trainer = LyapunovTrainer(model, objective=robust_objective(model), seed=seed, progress=False)
    elif method == "lyanet_smoothing":  # the default recipe with the label-smoothed potential
        recipe = Recipe(potential=CrossEntropyPotential(smoothing=SMOOTHING))
        trainer = LyapunovTrainer(model, recipe, seed=seed, progress=False)
    elif method == "lyanet_kappa30":  # the default recipe at three times its rate
        trainer = LyapunovTrainer(model, kappa=30.0, seed=seed, progress=False)
    elif method == "input_lipschitz":
        lipschitz = ContractionObjective(rate=0.0, weight=0.0, input_weight=0.1)
        trainer = LyapunovTrainer(model, objective=lipschitz, seed=seed, progress=False)
    elif method == "contraction":
        trainer = LyapunovTrainer(
            model, objective=ContractionObjective(rate=1.0, weight=1.0), seed=seed, progress=False
        )
    elif method == "certified":
        lever = CertifiedMarginObjective(
            solver=SOLVER,
            domain=DOMAIN,
            eps=CERTIFIED_TRAINING["eps"],
            weight=CERTIFIED_TRAINING["weight"],
            max_examples=int(CERTIFIED_TRAINING["max_examples"]),
        )
        trainer = LyapunovTrainer(model, objective=lever, seed=seed, progress=False)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    train_loader, test_loader = split.loaders(64, generator=torch.Generator().manual_seed(seed))
    start = time.perf_counter()
    trainer.fit(train_loader, epochs=epochs)
    seconds = time.perf_counter() - start
    return model, seconds, trainer.evaluate(test_loader)


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None])[:, 0]
    return true - logits.scatter(1, y[:, None], -math.inf).amax(1)


def attack(
    model: ODEModel, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int, restarts: int, samples: int, seed: int
) -> torch.Tensor:
    """The smallest margin found in the l_inf ball within [0, 1]: margin-loss PGD (sign
    steps of 2.5 eps / steps, first restart from x, the others random) through the
    certified solver, and random corners and uniform points of the ball."""
    g = torch.Generator().manual_seed(seed)
    clf = Classifier(model, solver=SOLVER)
    worst = torch.full((x.shape[0],), math.inf)
    with torch.no_grad():
        for i in range(samples):
            if i % 2 == 0:
                delta = (torch.randint(0, 2, x.shape, generator=g) * 2 - 1).to(x.dtype)
            else:
                delta = torch.rand(x.shape, generator=g) * 2 - 1
            worst = torch.minimum(worst, margins(clf((x + eps * delta).clamp(*DOMAIN)), y))
    for r in range(restarts):
        delta = torch.zeros_like(x) if r == 0 else (torch.rand(x.shape, generator=g) * 2 - 1) * eps
        for _ in range(steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(margins(clf((x + delta).clamp(*DOMAIN)), y).sum(), delta)
            with torch.no_grad():
                delta = (delta - 2.5 * eps / steps * grad.sign()).clamp(-eps, eps)
                delta = (x + delta).clamp(*DOMAIN) - x
                worst = torch.minimum(worst, margins(clf(x + delta), y))
    return worst


def measure(model: ODEModel, split: Any, *, eps_list: Sequence[float], budget: dict[str, int], seed: int) -> dict:
    x, y = split.x_test, split.y_test
    out: dict[str, Any] = {"eps": {}}
    for eps in eps_list:
        start = time.perf_counter()
        cert = certify(model, x, y, eps=eps, domain=DOMAIN)
        seconds = time.perf_counter() - start
        found = attack(model, x, y, eps, seed=seed, **budget)
        broken = int((cert.certified & (found <= 0)).sum())
        above = int((cert.margin_lower > found.double() + 1e-4).sum())
        out["eps"][f"{eps:g}"] = {
            "certified_accuracy": cert.certified_accuracy,
            "empirical_robust_accuracy": float((found > 0).double().mean()),
            "certified_points": int(cert.certified.sum()),
            "certified_broken": broken,
            "bound_above_found_margin": above,
            "certify_seconds": seconds,
            "clean_accuracy": cert.clean_accuracy,
        }
    start = time.perf_counter()
    whole = certify(model, x, y, eps=HEADLINE_EPS)
    out["whole_ball_headline"] = {
        "certified_accuracy": whole.certified_accuracy,
        "seconds": time.perf_counter() - start,
    }
    out["what"] = whole.describe()
    return out


def main(
    *,
    epochs: int = 20,
    seeds: Sequence[int] = (0, 1, 2),
    methods: Sequence[str] = METHODS,
    quick: bool = False,
    out_dir: Path | str = RESULTS_DIR,
    name: str = "certify",
    update_doc: bool = False,
    merge: Sequence[Path | str] = (),
    eps: Optional[Sequence[float]] = None,
    dataset: str = "digits",
    test_limit: Optional[int] = None,
) -> dict[str, Any]:
    """Train, certify, attack; write ``<name>.json`` and ``<name>.md``. With ``merge``, read
    the runs of those json files (e.g. one process per seed) instead of training."""
    import json

    torch.set_num_threads(1)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    split = (digits if dataset == "digits" else mnist5k)(limit=120 if quick else None)
    if test_limit is not None:
        if isinstance(test_limit, bool) or not isinstance(test_limit, int) or test_limit < 1:
            raise ValueError(f"test_limit must be a positive int, got {test_limit!r}")
        n = min(test_limit, len(split.y_test))
        split = dataclasses.replace(
            split,
            x_test=split.x_test[:n],
            y_test=split.y_test[:n],
            description=f"{split.description}; certified on the first {n} test images (the split is shuffled)",
        )
    eps_list = tuple(eps) if eps else ((0.005, 0.02) if quick else EPS)
    budget = {"steps": 5, "restarts": 1, "samples": 4} if quick else {"steps": 40, "restarts": 2, "samples": 32}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for path in merge:
        loaded = json.loads(Path(path).read_text())["runs"]
        for m in methods:
            runs[m].extend(loaded.get(m, []))
    if merge:
        seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    for seed in seeds if not merge else ():
        for method in methods:
            model, train_seconds, evaluation = train(method, split, seed=seed, epochs=1 if quick else epochs)
            run = measure(model, split, eps_list=eps_list, budget=budget, seed=seed)
            run.update(seed=seed, train_seconds=train_seconds, test_error=evaluation["error"])
            runs[method].append(run)
            headline = run["eps"].get(f"{HEADLINE_EPS:g}", {})
            print(
                f"seed {seed} {method}: error {evaluation['error']:.3f}, certified at {HEADLINE_EPS:g}: "
                f"{headline.get('certified_accuracy', math.nan):.3f}",
                flush=True,
            )
    summary = {
        m: {
            "test_error": mean_std([r["test_error"] for r in rs]),
            "train_seconds": mean_std([r["train_seconds"] for r in rs]),
            "certified": {
                e: mean_std([r["eps"][e]["certified_accuracy"] for r in rs]) for e in (f"{v:g}" for v in eps_list)
            },
            "empirical": {
                e: mean_std([r["eps"][e]["empirical_robust_accuracy"] for r in rs])
                for e in (f"{v:g}" for v in eps_list)
            },
            "certify_seconds": mean_std([r["eps"][f"{e:g}"]["certify_seconds"] for r in rs for e in eps_list]),
            "whole_ball_headline": mean_std([r["whole_ball_headline"]["certified_accuracy"] for r in rs]),
            "certified_points": sum(r["eps"][f"{e:g}"]["certified_points"] for r in rs for e in eps_list),
            "certified_broken": sum(r["eps"][f"{e:g}"]["certified_broken"] for r in rs for e in eps_list),
            "bound_above_found_margin": sum(
                r["eps"][f"{e:g}"]["bound_above_found_margin"] for r in rs for e in eps_list
            ),
        }
        for m, rs in runs.items()
    }
    setting = {
        "dataset": dataset,
        "data": split.description,
        "model": f"linear encoder (Flatten, Standardize, Linear {split.x_train[0].numel()}->32), "
        "MLPDynamics(10, 32, (64,)) tanh on "
        "[eta, c, t], eta(0)=0, identity readout",
        "solver": f"{SOLVER} over [0, 1]: the certificate covers this discretised model, not the exact ODE flow",
        "threat": f"l_inf ball intersected with the pixel box {DOMAIN}",
        "epochs": 1 if quick else epochs,
        "seeds": list(seeds),
        "attack": f"margin PGD {budget['steps']} steps x {budget['restarts']} restarts + {budget['samples']} sampled "
        "corners/uniform points, through the certified solver",
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread",
        "wide_noise_scales": WIDE_NOISE,
        "levers": {m: LEVERS[m] for m in methods if m in LEVERS},
        "merged_from": [Path(p).name for p in merge],
    }
    payload = {"setting": setting, "summary": summary, "runs": runs, "quick": quick}
    markdown = render(summary, setting, eps_list)
    json_path, md_path = write_outputs(Path(out_dir), name, payload, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path}")
    if update_doc:
        embed_markdown(DOC, "certify-results" if dataset == "digits" else f"certify-results-{dataset}", markdown)
        print(f"updated {DOC}")
    return payload


def _pct(cell: dict[str, Any]) -> str:
    return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"


def render(summary: dict[str, Any], setting: dict[str, Any], eps_list: Sequence[float]) -> str:
    methods = list(summary)
    lines = [
        f"Certified accuracy (%) on the {setting.get('dataset', 'digits')} test set, mean ± std over seeds "
        f"{setting['seeds']}, "
        f"{setting['epochs']} epochs. Certificate: `lyapunov_plugin.certify`, {setting['threat']}, "
        f"{setting['solver']}.",
        "",
        "| l_inf eps | " + " | ".join(f"{m} certified | {m} PGD-robust" for m in methods) + " |",
        "|---|" + "---:|---:|" * len(methods),
    ]
    for e in (f"{v:g}" for v in eps_list):
        cells = [f"{_pct(summary[m]['certified'][e])} | {_pct(summary[m]['empirical'][e])}" for m in methods]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| | " + " | ".join(methods) + " |",
        "|---|" + "---:|" * len(methods),
        "| clean test error (%) | "
        + " | ".join(
            f"{100 * summary[m]['test_error']['mean']:.1f} ± {100 * summary[m]['test_error']['std']:.1f}"
            for m in methods
        )
        + " |",
        f"| certified at {HEADLINE_EPS:g}, whole ball (no [0, 1] clip) (%) | "
        + " | ".join(_pct(summary[m]["whole_ball_headline"]) for m in methods)
        + " |",
        "| seconds to certify the test set, per eps | "
        + " | ".join(f"{summary[m]['certify_seconds']['mean']:.1f}" for m in methods)
        + " |",
        "| training seconds | " + " | ".join(f"{summary[m]['train_seconds']['mean']:.1f}" for m in methods) + " |",
        "| soundness: certified points broken by attacks / certified | "
        + " | ".join(f"{summary[m]['certified_broken']} / {summary[m]['certified_points']}" for m in methods)
        + " |",
        "| points whose bound exceeds the smallest margin found | "
        + " | ".join(str(summary[m]["bound_above_found_margin"]) for m in methods)
        + " |",
        "",
        f"Attacks: {setting['attack']}. Machine: {setting['machine']}. Data: {setting['data']}.",
    ]
    if "lyanet_wide_noise" in summary:
        lines.append(
            f"`lyanet_wide_noise`: MonteCarloObjective(state_sampler=RolloutSampler(noise_scales={WIDE_NOISE}))."
        )
    if setting.get("merged_from"):
        lines.append(
            f"Runs merged (`--merge`) from {', '.join(setting['merged_from'])}, each written by its own process "
            "(seconds are wall clock on a shared 2-core machine, so they depend on its load)."
        )
    for m in methods:
        if m in LEVERS:
            lines.append(f"`{m}`: {LEVERS[m]}.")
    if "robust" in summary:
        lines.append("`robust`: `robust_objective(model)` (Eq. 10 at inputs perturbed within l_inf 0.1).")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, one epoch, one seed")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default=None)
    parser.add_argument("--update-doc", action="store_true", help="put the table into docs/certify.md")
    parser.add_argument("--eps", type=float, nargs="+", default=None, help=f"l_inf radii (default {EPS})")
    parser.add_argument("--dataset", choices=DATASETS, default="digits")
    parser.add_argument("--test-limit", type=int, default=None, help="certify only the first N test images")
    parser.add_argument("--merge", type=Path, nargs="+", default=[], help="combine the runs of these json files")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    main(
        epochs=args.epochs,
        seeds=[0] if args.quick and args.seeds == [0, 1, 2] else args.seeds,
        methods=args.methods,
        quick=args.quick,
        out_dir=args.out_dir,
        name=args.name or ("certify_quick" if args.quick else "certify"),
        update_doc=args.update_doc,
        merge=args.merge,
        eps=args.eps,
        dataset=args.dataset,
        test_limit=args.test_limit,
    )
