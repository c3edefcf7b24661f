"""LyaNet versus standard Neural ODE training on scikit-learn digits (the main job).

Both methods train the *same* data-controlled Neural ODE (paper Eq. 1-3: MLP encoder,
MLP dynamics, 10-dimensional state, ``eta(0) = 0``, identity readout) for the same epochs
with Adam, once with a plain MLP encoder (what a user has) and once with a
Lipschitz-controlled one (the architecture lever of docs/real_data.md):

- standard: cross entropy at ``t = 1``, backpropagated through RK4 (10 steps), Adam at
  the better of lr 1e-3 and 1e-2 on a validation split carved from the training set;
- LyaNet: ``LyapunovTrainer(model)`` with nothing else, i.e. the library's default recipe
  (for this model Monte Carlo training, Algorithm 1: no solver backpropagated, states
  sampled along and around cheap rollouts; docs/defaults.md).

It then measures what docs/evaluation.md describes, per seed: clean error (RK4 and dopri5),
the robustness protocol (PGD through a fixed-step solver, stronger PGD with restarts,
l2 PGD, an epsilon sweep, Square, transfer from the other model, and the obfuscation
sanity checks), early-termination error, monotone decay of V, dopri5 NFE, training
time and time to a target error, the sound certificate (lyapunov_plugin.certify at l_inf
0.01 and 0.02) and the Theorem-3 certified radius. Results are
written as JSON and a markdown table (mean and spread over seeds).

    python -m examples.compare_digits                 # 3 seeds, full protocol
    python -m examples.compare_digits --quick         # a smoke run in a few seconds
"""

from __future__ import annotations

import argparse
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    LyapunovTrainer,
    MonteCarloObjective,
    Recipe,
    RolloutSampler,
    SupervisedObjective,
    appendix_b_half_width,
    certify,
    decay_statistics,
    spectral_lipschitz_bound,
)
from lyapunov_plugin.diagnostics import theorem3_certificate

from .common.data import digits
from .common.models import TRAIN_SOLVER, digits_node, dopri5
from .common.report import embed_markdown, markdown_table, mean_std, write_outputs
from .common.robustness import evaluate_robustness

RESULTS_DIR = Path("results")
#: Attack budgets of the robustness protocol: the paper's PGD-10, and stronger settings.
FULL_BUDGET = {
    "attack_steps": 10,
    "strong_steps": 50,
    "strong_restarts": 3,
    "apgd_steps": 100,
    "square_queries": 1000,
    "sweep_eps": (0.2, 0.3, 0.5),
    "autoattack": False,
}
#: Smoke-test budgets (numbers meaningless; the code path is the same).
QUICK_BUDGET = {
    "attack_steps": 10,
    "strong_steps": 5,
    "strong_restarts": 1,
    "apgd_steps": 5,
    "square_queries": 10,
    "sweep_eps": (0.5,),
    "autoattack": False,
}
#: Both methods share this architecture: an l2-Lipschitz-controlled encoder (the
#: Lipschitz lever of the real-data study, docs/real_data.md).
ENCODER_LIPSCHITZ = 2.0
#: dopri5's automatic first step from eta(0) = 0 is 1e-6 (docs/real_data.md); NFE are
#: also reported from this first step, to show what the dynamics themselves cost.
DOPRI5_FIRST_STEP = 0.05
#: l2 norm of an l_inf perturbation of size 1 on an 8x8 digit: sqrt(64).
LINF_TO_L2 = 8.0


#: The two encoders of the comparison: what a user has, and the Lipschitz lever.
ENCODERS = {"lipschitz": ENCODER_LIPSCHITZ, "plain": None}
#: l_inf radii of the sound certificate (lyapunov_plugin.certify, docs/certify.md), through
#: the attacks' RK4-10 solver.
CERTIFY_EPS = (0.01, 0.02)
CERTIFY_SOLVER = FixedStepSolver(method="rk4", steps=10)
#: Standard training is tuned over these learning rates on a validation split.
STANDARD_LRS = (1e-3, 1e-2)
#: Share of the training set held out to choose the standard learning rate.
VALIDATION_FRACTION = 0.2


def train(
    method: str,
    seed: int,
    *,
    epochs: int,
    split: Any,
    encoder: str = "lipschitz",
    batch_size: int = 64,
    lr: Optional[float] = None,
    progress: bool = False,
    kappa: Optional[float] = None,
    val_loader: Any = None,
    noise_scales: Optional[Sequence[float]] = None,
) -> tuple[LyapunovTrainer, list[dict[str, Any]]]:
    """Train one model; the test set is scored after every epoch (not counted as training time).

    LyaNet is ``LyapunovTrainer(model)``: the library's defaults are its recipe (``kappa``
    overrides the rate for the kappa ablation; ``noise_scales`` the default objective's
    rollout noise, the robustness lever of docs/defaults.md). Standard training uses ``lr``.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
    torch.manual_seed(seed)
    model = digits_node(split.x_train, lipschitz=ENCODERS[encoder], solver=TRAIN_SOLVER)
    if method == "standard":
        recipe = Recipe(objective=SupervisedObjective(), lr=lr if lr is not None else 1e-3)
        trainer = LyapunovTrainer(model, recipe, seed=seed, progress=progress)
    else:
        objective = (
            MonteCarloObjective(state_sampler=RolloutSampler(noise_scales=tuple(noise_scales)))
            if noise_scales is not None
            else None
        )
        recipe = Recipe(objective=objective) if lr is None else Recipe(objective=objective, lr=lr)
        trainer = LyapunovTrainer(model, recipe, kappa=kappa, seed=seed, progress=progress)
    train_loader, test_loader = split.loaders(batch_size, generator=torch.Generator().manual_seed(seed))
    history = trainer.fit(train_loader, epochs=epochs, val_loader=val_loader or test_loader)
    return trainer, history


def tune_standard_lr(split: Any, *, encoder: str, epochs: int, seed: int) -> dict[str, Any]:
    """The standard baseline's learning rate: train on 80% of the training set at each of
    ``STANDARD_LRS`` and keep the one with the lowest error on the other 20%."""
    from dataclasses import replace

    n = split.x_train.shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(n * (1 - VALIDATION_FRACTION)))
    inner = replace(split, x_train=split.x_train[order[:cut]], y_train=split.y_train[order[:cut]])
    val = [(split.x_train[order[cut:]], split.y_train[order[cut:]])]
    errors = {}
    for lr in STANDARD_LRS:
        trainer, _ = train("standard", seed, epochs=epochs, split=inner, encoder=encoder, lr=lr, val_loader=val)
        errors[lr] = trainer.evaluate(val)["error"]
    best = min(STANDARD_LRS, key=lambda lr: (errors[lr], lr))
    return {"lr": best, "validation_error": {f"{lr:g}": e for lr, e in errors.items()}}


def time_to_error(history: Sequence[dict[str, Any]], target: float) -> Optional[float]:
    """Training CPU seconds (evaluation excluded) until the test error first reaches ``target``."""
    elapsed = 0.0
    for row in history:
        elapsed += row["train_cpu_seconds"]
        if row["val_error"] <= target + 1e-12:
            return elapsed
    return None


def certificate(
    trainer: LyapunovTrainer, x: torch.Tensor, y: torch.Tensor, *, kappa: float, seed: int, num_samples: int
) -> dict[str, Any]:
    """Theorem 3 with L = sqrt(2) (cross entropy on the identity readout) times the exact
    spectral bounds of the dynamics' context path and of the encoder, conditional on
    Eq. (10) holding at ``num_samples`` sampled states per example."""
    model = trainer.model
    lipschitz = math.sqrt(2.0) * model.dynamics.context_lipschitz_bound() * spectral_lipschitz_bound(model.encoder)
    cert = theorem3_certificate(
        model,
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=kappa,
        lipschitz=lipschitz,
        state_sampler=HypercubeSampler(half_width=appendix_b_half_width(kappa, 10)),
        num_samples=num_samples,
        generator=torch.Generator().manual_seed(seed),
    )
    out = cert.summary()
    out["radius_l2"] = out["radius_median"]
    out["radius_linf"] = out["radius_median"] / LINF_TO_L2
    out["certified_accuracy_linf_0.01"] = cert.certified_accuracy(0.01 * LINF_TO_L2)
    return out


def measure(
    trainer: LyapunovTrainer, split: Any, *, other: Any, quick: bool, seed: int, kappa: float, autoattack: bool = False
) -> dict[str, Any]:
    """Every per-model number of the comparison; ``kappa`` is the LyaNet rate, used for
    both models' certificate statistics so they are checked against the same condition."""
    model = trainer.model
    xt, yt = split.x_test, split.y_test
    test = [(xt, yt)]
    out: dict[str, Any] = {}
    out["clean_error_rk4"] = trainer.evaluate(test)["error"]
    out["clean_error_dopri5"] = trainer.evaluate(test, solver=dopri5())["error"]
    for t in (0.25, 0.5):
        out[f"error_t{t}"] = trainer.evaluate(test, t_end=t)["error"]
    out["nfe_dopri5"] = trainer.nfe(xt, solver=dopri5())
    out["nfe_dopri5_first_step"] = trainer.nfe(xt, solver=dopri5(first_step=DOPRI5_FIRST_STEP))
    decay = decay_statistics(model, test, potential=CrossEntropyPotential(), kappa=kappa, ts=torch.linspace(0, 1, 21))
    out["v_monotone_fraction"] = decay.monotone_fraction
    out["v_decay_rate_median"] = decay.median_rate
    budget = dict(QUICK_BUDGET if quick else FULL_BUDGET, autoattack=autoattack)
    report = evaluate_robustness(
        model,
        xt,
        yt,
        linf_eps=(0.05, 0.1),
        l2_eps=(0.5,),
        attack_solver=FixedStepSolver(method="rk4", steps=10),
        inference_solver=dopri5(),
        transfer_from=other,
        seed=seed,
        **budget,
    )
    out["attack_names"] = attack_names(budget)
    out["attack_budget"] = budget
    out["robustness"] = report.as_dict()
    out["certificate"] = certificate(trainer, xt, yt, kappa=kappa, seed=seed, num_samples=16 if quick else 256)
    # The sound certificate of the model as attacked (RK4-10, l_inf ball within the pixel box).
    out["certify"] = {
        f"{eps:g}": certify(model, xt, yt, eps=eps, solver=CERTIFY_SOLVER, domain=(0.0, 1.0)).certified_accuracy
        for eps in CERTIFY_EPS
    }
    return out


def attack_names(budget: dict[str, Any]) -> dict[str, str]:
    """The protocol's result names for a budget (they carry the step counts)."""
    return {
        "pgd": f"pgd{budget['attack_steps']}_linf",
        "pgd_strong": f"pgd{budget['strong_steps']}x{budget['strong_restarts']}_linf",
        "apgd_ce": f"apgd{budget['apgd_steps']}_ce_linf",
        "apgd_dlr": f"apgd{budget['apgd_steps']}_dlr_linf",
        "apgd_t": f"apgd{budget['apgd_steps']}_t_linf",
        "autoattack": "autoattack_linf",
        "pgd_l2": f"pgd{budget['attack_steps']}_l2",
        "apgd_dlr_l2": f"apgd{budget['apgd_steps']}_dlr_l2",
        "sweep": f"pgd{budget['attack_steps']}_linf_sweep",
        "square": "square_linf",
        "transfer": "transfer_pgd_linf",
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds of the headline numbers, per method."""

    def attack(run: dict[str, Any], kind: str, eps: float, key: str = "error_attack_view") -> float:
        name = run["attack_names"][kind]
        for a in run["robustness"]["attacks"]:
            if a["name"] == name and abs(a["eps"] - eps) < 1e-12:
                return a[key]
        raise KeyError((name, eps))

    rows = {
        "clean error, RK4-10 (%)": lambda r: 100 * r["clean_error_rk4"],
        "clean error, dopri5 (%)": lambda r: 100 * r["clean_error_dopri5"],
        "PGD-10 l_inf 0.05 (%)": lambda r: 100 * attack(r, "pgd", 0.05),
        "PGD-10 l_inf 0.1 (%)": lambda r: 100 * attack(r, "pgd", 0.1),
        "PGD-10 l_inf 0.1, scored with dopri5 (%)": lambda r: 100 * attack(r, "pgd", 0.1, "error_inference"),
        "strong PGD (more steps, restarts) l_inf 0.1 (%)": lambda r: 100 * attack(r, "pgd_strong", 0.1),
        "APGD-CE l_inf 0.1 (%)": lambda r: 100 * attack(r, "apgd_ce", 0.1),
        "APGD-DLR l_inf 0.1 (%)": lambda r: 100 * attack(r, "apgd_dlr", 0.1),
        "APGD-T (targeted DLR) l_inf 0.1 (%)": lambda r: 100 * attack(r, "apgd_t", 0.1),
        "AutoAttack (standard) l_inf 0.1 (%)": lambda r: (
            100 * attack(r, "autoattack", 0.1) if r["attack_budget"]["autoattack"] else math.nan
        ),
        "PGD-10 l2 0.5 (%)": lambda r: 100 * attack(r, "pgd_l2", 0.5),
        "APGD-DLR l2 0.5 (%)": lambda r: 100 * attack(r, "apgd_dlr_l2", 0.5),
        "Square l_inf 0.1 (%)": lambda r: 100 * attack(r, "square", 0.1),
        "transfer PGD l_inf 0.1 (%)": lambda r: 100 * attack(r, "transfer", 0.1),
        "worst case over all l_inf 0.1 attacks (%)": lambda r: 100 * r["robustness"]["worst_case_error"],
        "PGD-10 l_inf 0.5 (%)": lambda r: 100 * attack(r, "sweep", 0.5),
        "error at t=0.25 (%)": lambda r: 100 * r["error_t0.25"],
        "error at t=0.5 (%)": lambda r: 100 * r["error_t0.5"],
        "V monotone on correct points (%)": lambda r: 100 * r["v_monotone_fraction"],
        "dopri5 NFE to t=1": lambda r: r["nfe_dopri5"],
        f"dopri5 NFE to t=1, first step {DOPRI5_FIRST_STEP}": lambda r: r["nfe_dopri5_first_step"],
        "training CPU time, s": lambda r: r["train_seconds"],
        "CPU time to target error, s": lambda r: r["time_to_target"] if r["time_to_target"] is not None else math.nan,
        **{
            f"certified accuracy, certify l_inf {eps:g} (%)": (
                lambda r, key=f"{eps:g}": 100 * r["certify"][key] if "certify" in r else math.nan
            )
            for eps in CERTIFY_EPS
        },
        "certified radius l2 (Thm 3, conditional)": lambda r: r["certificate"]["radius_l2"],
        "Thm 3 radius l2 if the condition held": lambda r: r["certificate"]["radius_if_held_median"],
        "Lipschitz bound L = L_V L_f": lambda r: r["certificate"]["lipschitz"],
        "sampled states violating Eq. 10 (%)": lambda r: 100 * r["certificate"]["violation_rate"],
        "examples with Eq. 10 at all 256 samples (%)": lambda r: 100 * r["certificate"]["condition_fraction"],
        "sanity checks passed": lambda r: float(r["robustness"]["sanity"]["all_ok"]),
    }
    summary: dict[str, Any] = {}
    for column in dict.fromkeys(column_of(r) for r in runs):
        mine = [r for r in runs if column_of(r) == column]
        summary[column] = {name: mean_std([fn(r) for r in mine]) for name, fn in rows.items()}
    return summary


def column_of(run: dict[str, Any]) -> str:
    """Summary column of a run: ``"<method>/<encoder>"``, e.g. ``"lyanet/plain"``."""
    return f"{run['method']}/{run['encoder']}"


def header_of(column: str) -> str:
    method, encoder = column.split("/")
    return f"{'LyaNet' if method == 'lyanet' else 'standard'}, {encoder} encoder"


def goals(summary: dict[str, Any], encoder: str) -> dict[str, Any]:
    """The targets of the 'LyaNet on real data' issue for one encoder, on the seed means."""
    s, ly = summary[f"standard/{encoder}"], summary[f"lyanet/{encoder}"]

    def m(d: dict[str, Any], k: str) -> float:
        return d[k]["mean"]

    return {
        "clean within 0.5 pt of standard": m(ly, "clean error, RK4-10 (%)") <= m(s, "clean error, RK4-10 (%)") + 0.5,
        "PGD l_inf 0.1 >= 10 pt lower": m(ly, "PGD-10 l_inf 0.1 (%)") <= m(s, "PGD-10 l_inf 0.1 (%)") - 10,
        "worst-case l_inf 0.1 >= 10 pt lower": m(ly, "worst case over all l_inf 0.1 attacks (%)")
        <= m(s, "worst case over all l_inf 0.1 attacks (%)") - 10,
        "sanity checks pass (all seeds)": m(ly, "sanity checks passed") == 1.0,
        "V monotone >= 99%": m(ly, "V monotone on correct points (%)") >= 99.0,
        "error at t=0.25 within 1 pt of t=1": m(ly, "error at t=0.25 (%)") <= m(ly, "clean error, RK4-10 (%)") + 1.0,
        "dopri5 NFE <= half of standard": m(ly, "dopri5 NFE to t=1") <= 0.5 * m(s, "dopri5 NFE to t=1"),
        "time to target <= 1/3 of standard": m(ly, "CPU time to target error, s")
        <= m(s, "CPU time to target error, s") / 3,
    }


def main(
    *,
    epochs: int = 60,
    seeds: Sequence[int] = (0, 1, 2),
    quick: bool = False,
    out_dir: Path | str = RESULTS_DIR,
    progress: bool = False,
    kappa: Optional[float] = None,
    name: str = "digits_comparison",
    update_readme: bool = False,
    autoattack: bool = False,
    encoders: Sequence[str] = ("plain", "lipschitz"),
    noise_scales: Optional[Sequence[float]] = None,
) -> dict[str, Any]:
    """Train and evaluate both methods for each seed; write ``<name>.json`` and ``<name>.md``.

    Arguments:
        epochs: training epochs per model.
        seeds: one run of each method per seed.
        quick: tiny data and attack budgets (for smoke tests); numbers are not meaningful.
        out_dir: where the JSON and markdown go.
        kappa: override the trainer's default rate (for the kappa ablation).
        update_readme: put the markdown into README.md's ``digits-results`` block.
        autoattack: add AutoAttack (standard: APGD-CE, APGD-T, FAB-T, Square 5000) to the
            protocol; several minutes per model on a CPU.
        encoders: ``"plain"`` (an ordinary MLP encoder) and/or ``"lipschitz"``.
        noise_scales: LyaNet's rollout noise instead of the default (a Monte Carlo objective).
    """
    # One intra-op thread: the models are tiny, and training times stay comparable on a
    # machine shared with other work (two threads stall under load).
    torch.set_num_threads(1)
    split = digits(limit=120 if quick else None)
    started = time.time()
    runs: list[dict[str, Any]] = []
    tuned = {enc: tune_standard_lr(split, encoder=enc, epochs=epochs, seed=seeds[0]) for enc in encoders}
    describe_lyanet = ""
    for seed in seeds:
        for encoder in encoders:
            trained = {
                "standard": train(
                    "standard",
                    seed,
                    epochs=epochs,
                    split=split,
                    encoder=encoder,
                    lr=tuned[encoder]["lr"],
                    progress=progress,
                ),
                "lyanet": train(
                    "lyanet",
                    seed,
                    epochs=epochs,
                    split=split,
                    encoder=encoder,
                    progress=progress,
                    kappa=kappa,
                    noise_scales=noise_scales,
                ),
            }
            describe_lyanet = describe(trained["lyanet"][0])
            target = trained["standard"][1][-1]["val_error"] + 0.005
            lyanet_kappa = trained["lyanet"][0].kappa_schedule.final
            for method, (trainer, history) in trained.items():
                other = trained["lyanet" if method == "standard" else "standard"][0].model
                result = measure(
                    trainer, split, other=other, quick=quick, seed=seed, kappa=lyanet_kappa, autoattack=autoattack
                )
                result.update(
                    method=method,
                    encoder=encoder,
                    seed=seed,
                    history=history,
                    lr=float(trainer.optimizer.param_groups[0]["lr"]),
                    train_seconds=sum(r["train_cpu_seconds"] for r in history),
                    time_to_target=time_to_error(history, target),
                    target_error=target,
                )
                runs.append(result)
                pgd = next(
                    a
                    for a in result["robustness"]["attacks"]
                    if a["name"] == result["attack_names"]["pgd"] and a["eps"] == 0.1
                )
                print(
                    f"[seed {seed}] {method}, {encoder} encoder: clean error {result['clean_error_rk4']:.4f}, "
                    f"PGD-10 l_inf 0.1 error {pgd['error_attack_view']:.4f}",
                    flush=True,
                )
    summary = summarise(runs)
    all_goals = {
        f"{encoder} encoder: {goal}": ok for encoder in encoders for goal, ok in goals(summary, encoder).items()
    }
    payload = {
        "setup": {
            "data": split.description,
            "epochs": epochs,
            "seeds": list(seeds),
            "quick": quick,
            "lyanet": describe_lyanet,
            "encoder_lipschitz": ENCODER_LIPSCHITZ,
            "encoders": list(encoders),
            "standard": "cross entropy at t=1, backprop through RK4-10, Adam at the validated learning rate",
            "standard_lr": tuned,
            "attack": "torchattacks through RK4-10: PGD/PGDL2 (random start, alpha=2.5*eps/steps), strong PGD "
            "with restarts, APGD-CE/DLR/T (l_inf) and APGD-DLR (l2), Square, AutoAttack (standard), "
            "transfer from the other model",
            "attack_budget": dict(QUICK_BUDGET if quick else FULL_BUDGET, autoattack=autoattack),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}",
            "wall_clock_seconds": round(time.time() - started, 1),
        },
        "summary": summary,
        "goals": all_goals,
        "runs": runs,
    }
    lyanet_label = (
        "`LyapunovTrainer(model)` defaults"
        if noise_scales is None
        else f"the default recipe with rollout noise scales {tuple(noise_scales)} instead of the default's"
    )
    columns = tuple(summary)
    table = markdown_table(summary, columns=columns, headers=tuple(header_of(c) for c in columns))
    goal_lines = "\n".join(f"- {'met' if ok else 'NOT met'}: {g}" for g, ok in payload["goals"].items())
    budget = payload["setup"]["attack_budget"]
    lrs = ", ".join(f"{enc} {tuned[enc]['lr']:g}" for enc in encoders)
    markdown = (
        f"{table}\n\nMean ± std over seeds {list(seeds)}; {split.description}; {epochs} epochs. "
        f"LyaNet: {lyanet_label} ({describe_lyanet}). Standard: Adam at the better of "
        f"lr {', '.join(f'{lr:g}' for lr in STANDARD_LRS)} on a validation fifth of the training set "
        f"(chosen: {lrs}). "
        f"Attacks through RK4 (10 steps), pixel-space epsilon; strong PGD = {budget['strong_steps']} steps x "
        f"{budget['strong_restarts']} restarts, APGD {budget['apgd_steps']} steps, Square "
        f"{budget['square_queries']} queries, AutoAttack {'on' if budget['autoattack'] else 'off'}. "
        f"Machine: {payload['setup']['machine']}; wall clock "
        f"{payload['setup']['wall_clock_seconds']:.0f} s.\n\nGoals (issues 4 and 7):\n{goal_lines}\n"
    )
    write_outputs(Path(out_dir), name, payload, markdown)
    if update_readme:
        embed_markdown(Path(__file__).resolve().parents[1] / "README.md", "digits-results", markdown)
    print(markdown)
    return payload


def describe(trainer: LyapunovTrainer) -> str:
    objective = trainer.objective
    detail = (
        f"{objective.num_samples} samples per example, {objective.state_sampler}"
        if hasattr(objective, "num_samples")
        else f"{objective}"
    )
    return (
        f"{trainer.mode}, kappa {trainer.kappa_schedule.final:g}, {detail}, "
        f"Adam lr {trainer.base_lrs[0]:g}, {'cosine' if trainer.recipe.cosine else 'constant'} schedule"
    )


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    parser.add_argument("--update-readme", action="store_true", help="write the table into README.md")
    parser.add_argument("--autoattack", action="store_true", help="add AutoAttack (slow on a CPU)")
    parser.add_argument("--encoders", nargs="+", choices=sorted(ENCODERS), default=["plain", "lipschitz"])
    parser.add_argument(
        "--noise-scales",
        type=float,
        nargs="+",
        default=None,
        help="LyaNet's rollout noise (relative), instead of the default objective's",
    )
    parser.add_argument("--name", default="digits_comparison", help="output file stem")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(
        epochs=args.epochs,
        seeds=args.seeds,
        quick=args.quick,
        out_dir=args.out_dir,
        progress=args.progress,
        update_readme=args.update_readme,
        autoattack=args.autoattack,
        encoders=args.encoders,
        noise_scales=args.noise_scales,
        name=args.name,
    )
