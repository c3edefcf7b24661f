"""Candidates for ``robust_objective`` on digits, under the project's robustness protocol (issue 15, item 1).

The model, data and training budget are those of ``examples/compare_digits.py`` with the plain
encoder (what a user has). Per seed, each method trains one copy:

- ``standard``: cross entropy at ``t = 1`` through RK4-10 (``compare_digits.train("standard")``
  at the learning rate its validation tuning chose for the plain encoder, 1e-2);
- ``default``: ``LyapunovTrainer(model)`` (``compare_digits.train("lyanet")``);
- ``wide_noise_gamma``: Monte Carlo training with rollout noise reaching 3 spreads and a
  truncated cross entropy (``gamma``) so the logits stop growing once ``p_y`` is large;
- ``standard_adversarial_2step``: the standard objective at inputs found by 2 sign-gradient
  steps on the cross entropy within l_inf 0.1 (plain adversarial training, the comparator
  that tells what the Lyapunov condition adds), learning rate 1e-2;
- ``perturbed_random``: :class:`~lyapunov_plugin.robust.InputPerturbedObjective` with
  ``delta`` uniform in the l_inf 0.1 ball (no search);
- ``perturbed_1step`` / ``perturbed_2step``: the same with 1 / 2 sign-gradient steps on the
  Lyapunov loss (``robust_objective`` is the one the output's ``setup.robust_objective_is`` names);
- ``perturbed_1step_gamma``: 1 step with the truncated cross entropy.

Each model is attacked through RK4-10 with ``examples.common.robustness.evaluate_robustness``
(pixel-space l_inf 0.1: PGD-10, PGD with more steps, APGD-CE, APGD-DLR, APGD-T, Square,
transfer from the standard model of the same seed; the per-example worst case over all of
them) and the sanity sweep, PGD-10 at l_inf 0.5, which must reach >= 95 % error.

    python -m benchmarks.robust --update-doc     # 2 seeds, every method; table into docs/robust.md
    python -m benchmarks.robust --quick          # a smoke run (numbers meaningless)
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from examples.common.data import digits
from examples.common.models import TRAIN_SOLVER, digits_node
from examples.common.report import embed_markdown, markdown_table, mean_std, write_outputs
from examples.common.robustness import evaluate_robustness
from examples.compare_digits import train
from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    LyapunovLossOutput,
    LyapunovTrainer,
    MonteCarloObjective,
    Objective,
    Recipe,
    RolloutSampler,
    SupervisedObjective,
)
from lyapunov_plugin.inference import EvalMode
from lyapunov_plugin.robust import InputPerturbedObjective, robust_objective

RESULTS_DIR = Path(__file__).parent / "results"
DOC = Path(__file__).parent.parent / "docs" / "robust.md"
EPS = 0.1
SANITY_EPS = 0.5
SANITY_ERROR = 0.95
#: The learning rate compare_digits' validation tuning picks for standard training with
#: the plain encoder (results/digits_comparison.json, ``standard_lr``).
STANDARD_LR = 1e-2
WIDE_NOISE = (0.0, 0.1, 0.3, 1.0, 3.0)
GAMMA = 0.05
FULL_BUDGET = {"attack_steps": 10, "strong_steps": 20, "strong_restarts": 2, "apgd_steps": 100, "square_queries": 1000}
QUICK_BUDGET = {"attack_steps": 5, "strong_steps": 5, "strong_restarts": 1, "apgd_steps": 5, "square_queries": 10}


@dataclass(frozen=True, kw_only=True)
class AdversarialSupervised(Objective):
    """Baseline, not a Lyapunov recipe: standard adversarial training (cross entropy at
    ``t = 1`` through the model's solver at inputs found by ``steps`` sign-gradient steps on
    that cross entropy from a uniform start in the l_inf ball), to tell what the Lyapunov
    condition at perturbed inputs (Eq. 10, Theorem 3) adds over training on perturbed inputs."""

    name: ClassVar[str] = "adversarial_supervised"
    uses_lyapunov_condition: ClassVar[bool] = False

    eps: float = EPS
    steps: int = 2

    def compute(
        self, model: Any, x: torch.Tensor, y: torch.Tensor, *, kappa: float, generator: Any = None
    ) -> LyapunovLossOutput:
        base, x0 = SupervisedObjective(), x.detach()
        u = torch.rand(
            tuple(x.shape), generator=generator, dtype=x.dtype, device=generator.device if generator else x.device
        )
        x_adv = (x0 + (2 * u.to(x.device) - 1) * self.eps).clamp(0, 1)
        with EvalMode(model), torch.enable_grad():
            for _ in range(self.steps):
                probe = x_adv.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(base.compute(model, probe, y, kappa=kappa).loss, probe)
                step = x_adv + 2.5 * self.eps / self.steps * grad.sign()
                x_adv = torch.minimum(torch.maximum(step, x0 - self.eps), x0 + self.eps).clamp(0, 1)
        return base.compute(model, x_adv.detach(), y, kappa=kappa)


def _candidates(model: Any) -> dict[str, Callable[[], Objective]]:
    return {
        "wide_noise_gamma": lambda: MonteCarloObjective(
            potential=CrossEntropyPotential(gamma=GAMMA), state_sampler=RolloutSampler(noise_scales=WIDE_NOISE)
        ),
        "standard_adversarial_2step": lambda: AdversarialSupervised(eps=EPS, steps=2),
        "perturbed_random": lambda: InputPerturbedObjective(eps=EPS, steps=0),
        "perturbed_1step": lambda: InputPerturbedObjective(eps=EPS, steps=1),
        "perturbed_2step": lambda: InputPerturbedObjective(eps=EPS, steps=2),
        "perturbed_1step_gamma": lambda: InputPerturbedObjective(
            base=MonteCarloObjective(potential=CrossEntropyPotential(gamma=GAMMA)), eps=EPS, steps=1
        ),
    }


METHODS = (
    "standard",
    "default",
    "wide_noise_gamma",
    "standard_adversarial_2step",
    "perturbed_random",
    "perturbed_1step",
    "perturbed_2step",
)


def train_candidate(name: str, seed: int, *, epochs: int, split: Any) -> tuple[LyapunovTrainer, float]:
    """One model of ``name``, built and seeded exactly as compare_digits builds its LyaNet model."""
    started = time.process_time()
    if name == "standard":
        trainer, _ = train("standard", seed, epochs=epochs, split=split, encoder="plain", lr=STANDARD_LR)
    elif name == "default":
        trainer, _ = train("lyanet", seed, epochs=epochs, split=split, encoder="plain")
    else:
        torch.manual_seed(seed)
        model = digits_node(split.x_train, lipschitz=None, solver=TRAIN_SOLVER)
        objective = _candidates(model)[name]()
        trainer = LyapunovTrainer(model, Recipe(objective=objective), seed=seed, progress=False)
        train_loader, test_loader = split.loaders(64, generator=torch.Generator().manual_seed(seed))
        trainer.fit(train_loader, epochs=epochs, val_loader=test_loader)
    return trainer, time.process_time() - started


def measure(trainer: LyapunovTrainer, split: Any, *, other: Any, seed: int, budget: dict[str, int]) -> dict[str, Any]:
    rk4 = FixedStepSolver(method="rk4", steps=10)
    report = evaluate_robustness(
        trainer.model,
        split.x_test,
        split.y_test,
        linf_eps=(EPS,),
        l2_eps=(),
        sweep_eps=(SANITY_EPS,),
        attack_solver=rk4,
        inference_solver=rk4,
        transfer_from=other,
        seed=seed,
        **budget,
    )
    errors = {a.name: a.error_attack_view for a in report.attacks}
    steps = budget["attack_steps"]
    return {
        "clean_error": report.clean_error_attack_view,
        "attacks": {f"{a.name}@{a.eps:g}": a.error_attack_view for a in report.attacks},
        "pgd": errors[f"pgd{steps}_linf"],
        "apgd_dlr": errors.get(f"apgd{budget['apgd_steps']}_dlr_linf", float("nan")),
        "apgd_t": errors.get(f"apgd{budget['apgd_steps']}_t_linf", float("nan")),
        "square": errors.get("square_linf", float("nan")),
        "transfer": errors.get("transfer_pgd_linf", float("nan")),
        "worst_case": report.worst_case_error,
        "sanity_pgd_0.5": errors[f"pgd{steps}_linf_sweep"],
        "strong_pgd": errors[f"pgd{budget['strong_steps']}x{budget['strong_restarts']}_linf"],
        "apgd_ce": errors.get(f"apgd{budget['apgd_steps']}_ce_linf", float("nan")),
        "sanity_all_ok": float(report.sanity["all_ok"]),
        "sanity": report.sanity,
    }


ROWS = {
    "clean error, RK4-10 (%)": "clean_error",
    "PGD-10 l_inf 0.1 (%)": "pgd",
    "PGD-20 x 2 restarts l_inf 0.1 (%)": "strong_pgd",
    "APGD-CE l_inf 0.1 (%)": "apgd_ce",
    "APGD-DLR l_inf 0.1 (%)": "apgd_dlr",
    "APGD-T l_inf 0.1 (%)": "apgd_t",
    "Square l_inf 0.1 (%)": "square",
    "transfer PGD from standard l_inf 0.1 (%)": "transfer",
    "worst case over all l_inf 0.1 attacks (%)": "worst_case",
    "sanity: PGD l_inf 0.5 (%, must be >= 95)": "sanity_pgd_0.5",
}


def main(
    *,
    epochs: int = 60,
    seeds: Sequence[int] = (0, 1),
    quick: bool = False,
    methods: Sequence[str] = METHODS,
    out_dir: Path | str = RESULTS_DIR,
    update_doc: bool = False,
) -> dict[str, Any]:
    torch.set_num_threads(1)
    split = digits(limit=120 if quick else None)
    budget = QUICK_BUDGET if quick else FULL_BUDGET
    started = time.time()
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        standard, standard_seconds = train_candidate("standard", seed, epochs=epochs, split=split)
        for name in methods:
            trainer, seconds = (
                (standard, standard_seconds)
                if name == "standard"
                else train_candidate(name, seed, epochs=epochs, split=split)
            )
            # Transfer from the standard model of the same seed (for standard itself: from
            # the default LyaNet model would need another training run; it transfers from itself).
            result = measure(trainer, split, other=standard.model, seed=seed, budget=budget)
            result.update(method=name, seed=seed, train_cpu_seconds=seconds)
            runs.append(result)
            print(
                f"[seed {seed}] {name}: clean {result['clean_error']:.4f} worst {result['worst_case']:.4f} "
                f"pgd0.5 {result['sanity_pgd_0.5']:.4f} train {seconds:.0f}s",
                flush=True,
            )
    probe = digits_node(split.x_train)
    chosen, candidates = robust_objective(probe), _candidates(probe)
    summary: dict[str, Any] = {}
    for name in methods:
        mine = [r for r in runs if r["method"] == name]
        summary[name] = {row: mean_std([100 * r[key] for r in mine]) for row, key in ROWS.items()}
        summary[name]["sanity: PGD l_inf 0.5 >= 95 % (all seeds)"] = mean_std(
            [float(all(r["sanity_pgd_0.5"] >= SANITY_ERROR for r in mine))]
        )
        summary[name]["all protocol sanity checks passed (share of seeds)"] = mean_std(
            [statistics.fmean(r["sanity_all_ok"] for r in mine)]
        )
        summary[name]["training CPU time, s"] = mean_std([r["train_cpu_seconds"] for r in mine])
    payload = {
        "setup": {
            "data": split.description,
            "model": "examples.common.models.digits_node, plain MLP encoder, RK4-10",
            "epochs": epochs,
            "seeds": list(seeds),
            "quick": quick,
            "budget": budget,
            "eps": EPS,
            "standard_lr": STANDARD_LR,
            "wide_noise": WIDE_NOISE,
            "gamma": GAMMA,
            "robust_objective": repr(chosen),
            "robust_objective_is": next((n for n, make in candidates.items() if make() == chosen), None),
            "machine": f"{platform.processor() or platform.machine()}, 1 thread, torch {torch.__version__}",
            "wall_clock_seconds": round(time.time() - started, 1),
        },
        "summary": summary,
        "runs": runs,
    }
    table = markdown_table(summary, columns=tuple(methods), headers=tuple(methods))
    b = budget
    markdown = (
        f"{table}\n\nMean ± std over seeds {list(seeds)}; {split.description}; {epochs} epochs; plain encoder. "
        f"Attacks through RK4-10 at pixel-space l_inf {EPS}: PGD-{b['attack_steps']}, PGD-{b['strong_steps']} x "
        f"{b['strong_restarts']} restarts, APGD-CE/DLR/T {b['apgd_steps']} steps, Square {b['square_queries']} "
        f"queries, transfer PGD-{b['attack_steps']} from the standard model of the same seed; the worst case is "
        "per example over all of them. AutoAttack was not run. "
        f"Machine: {payload['setup']['machine']}; wall clock {payload['setup']['wall_clock_seconds']:.0f} s.\n"
    )
    write_outputs(Path(out_dir), "robust_quick" if quick else "robust", payload, markdown)
    if update_doc:
        embed_markdown(DOC, "robust-results", markdown)
    print(markdown)
    return payload


def _parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--update-doc", action="store_true", help="write the table into docs/robust.md")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(
        epochs=args.epochs,
        seeds=args.seeds,
        quick=args.quick,
        methods=args.methods,
        out_dir=args.out_dir,
        update_doc=args.update_doc,
    )
