"""The adversarial-robustness protocol of docs/evaluation.md, for any LyapunovModel.

1. Pixel-space threat model: the model's forward takes images in [0, 1] and does its
   own normalisation; epsilon is reported in pixel units.
2. Attacks run through a fixed-step solver (RK4) with plain backpropagation; the
   adversarial images are then also scored under the model's normal inference solver.
3. PGD (torchattacks ``PGD``/``PGDL2``) with random start, the paper's 10 steps plus a
   stronger setting (more steps, restarts; an example counts as broken if any restart
   breaks it); optionally AutoAttack.
4. Obfuscation sanity checks: error rises to ~100% as epsilon grows, more steps never
   help the defender, black-box Square is not stronger than white-box PGD, adversarial
   examples transferred from another model are not stronger than the direct attack.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lyapunov_plugin import Classifier, FixedStepSolver, LyapunovModel

# Statistical slack for the sanity checks: a weaker setting may beat a stronger one by
# chance on a few hundred test points; beyond this margin the check fails.
SANITY_TOLERANCE = 0.02


def error_rate(view: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    view.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            wrong += int((view(x[i : i + batch_size]).argmax(-1) != y[i : i + batch_size]).sum())
    return wrong / len(x)


def _wrong_mask(view: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(view(x[i : i + batch_size]).argmax(-1) != y[i : i + batch_size])
    return torch.cat(out)


def attack_images(attack: Any, x: Tensor, y: Tensor, batch_size: int) -> Tensor:
    return torch.cat([attack(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@dataclass
class AttackResult:
    """Error rates of one attack: against the fixed-step attack view and the normal solver."""

    name: str
    eps: float
    error_attack_view: float
    error_inference: float
    max_perturbation: float

    def as_dict(self) -> dict[str, float]:
        return {
            "name": self.name,
            "eps": self.eps,
            "error_attack_view": self.error_attack_view,
            "error_inference": self.error_inference,
            "max_perturbation": self.max_perturbation,
        }


@dataclass
class RobustnessReport:
    clean_error_attack_view: float
    clean_error_inference: float
    attacks: list[AttackResult] = field(default_factory=list)
    sanity: dict[str, Any] = field(default_factory=dict)
    #: Per-example union over every attack at the main l_inf epsilon: an example counts
    #: as broken if any attack (white-box, black-box or transfer) broke it.
    worst_case_error: float = float("nan")

    def get(self, name: str) -> AttackResult:
        for a in self.attacks:
            if a.name == name:
                return a
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clean_error_attack_view": self.clean_error_attack_view,
            "clean_error_inference": self.clean_error_inference,
            "worst_case_error": self.worst_case_error,
            "attacks": [a.as_dict() for a in self.attacks],
            "sanity": self.sanity,
        }


def run_attack(
    name: str,
    make: Callable[[nn.Module], Any],
    attack_view: nn.Module,
    inference_view: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    restarts: int = 1,
    batch_size: int = 256,
    seed: int = 0,
) -> tuple[AttackResult, Tensor]:
    """Run ``make(attack_view)`` (with ``restarts``); keep, per example, a breaking image if any.

    Returns the result and the adversarial images.
    """
    torch.manual_seed(seed)
    attack = make(attack_view)
    best: Optional[Tensor] = None
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        adv = attack_images(attack, x, y, batch_size)
        wrong = _wrong_mask(attack_view, adv, y, batch_size)
        if best is None:
            best = adv.clone()
        else:
            take = wrong & ~broken
            best[take] = adv[take]
        broken |= wrong
    delta = (best - x).flatten(1)
    delta = delta.detach()
    size = float(delta.abs().max()) if norm == "linf" else float(delta.norm(dim=1).max())
    result = AttackResult(
        name,
        eps,
        error_attack_view=float(broken.double().mean()),
        error_inference=error_rate(inference_view, best, y, batch_size),
        max_perturbation=size,
    )
    return result, best


def evaluate_robustness(
    model: LyapunovModel,
    x: Tensor,
    y: Tensor,
    *,
    linf_eps: tuple[float, ...] = (0.05, 0.1),
    l2_eps: tuple[float, ...] = (0.5,),
    sweep_eps: tuple[float, ...] = (0.2, 0.3, 0.5),
    attack_steps: int = 10,
    strong_steps: int = 50,
    strong_restarts: int = 3,
    apgd_steps: int = 100,
    square_queries: int = 1000,
    attack_solver: Any = None,
    inference_solver: Any = None,
    transfer_from: Optional[LyapunovModel] = None,
    autoattack: bool = False,
    seed: int = 0,
    batch_size: int = 256,
) -> RobustnessReport:
    """The full protocol on test tensors (pixels in [0, 1]); see the module docstring.

    ``sanity`` holds each check's verdict and the numbers it compared.
    """
    import torchattacks

    attack_view = Classifier(model, solver=attack_solver or FixedStepSolver(method="rk4", steps=10))
    inference_view = Classifier(model, solver=inference_solver)
    attack_view.eval()
    report = RobustnessReport(error_rate(attack_view, x, y, batch_size), error_rate(inference_view, x, y, batch_size))
    main_eps = max(linf_eps)
    broken_main = _wrong_mask(attack_view, x, y, batch_size)

    def record(result: AttackResult, adv: Tensor) -> None:
        nonlocal broken_main
        report.attacks.append(result)
        if result.eps == main_eps and "linf" in result.name and "sweep" not in result.name:
            broken_main = broken_main | _wrong_mask(attack_view, adv, y, batch_size)

    def pgd(eps: float, steps: int) -> Callable[[nn.Module], Any]:
        return lambda m: torchattacks.PGD(m, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

    def pgdl2(eps: float, steps: int) -> Callable[[nn.Module], Any]:
        return lambda m: torchattacks.PGDL2(m, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)

    for eps in linf_eps:
        record(
            *run_attack(
                f"pgd{attack_steps}_linf",
                pgd(eps, attack_steps),
                attack_view,
                inference_view,
                x,
                y,
                eps=eps,
                norm="linf",
                seed=seed,
                batch_size=batch_size,
            )
        )
        record(
            *run_attack(
                f"pgd{strong_steps}x{strong_restarts}_linf",
                pgd(eps, strong_steps),
                attack_view,
                inference_view,
                x,
                y,
                eps=eps,
                norm="linf",
                restarts=strong_restarts,
                seed=seed + 1,
                batch_size=batch_size,
            )
        )
    classes = int(model.readout(model.encode(x[:1])[1]).shape[-1])
    if apgd_steps > 0:
        # Margin (DLR) and cross-entropy APGD: DLR is immune to softmax saturation, which
        # can starve cross-entropy PGD of gradient when logits are very large.
        for loss in ("ce", "dlr"):
            record(
                *run_attack(
                    f"apgd{apgd_steps}_{loss}_linf",
                    lambda m, loss=loss: torchattacks.APGD(
                        m, norm="Linf", eps=main_eps, steps=apgd_steps, loss=loss, seed=seed
                    ),
                    attack_view,
                    inference_view,
                    x,
                    y,
                    eps=main_eps,
                    norm="linf",
                    seed=seed,
                    batch_size=batch_size,
                )
            )
        # Targeted DLR against every other class (AutoAttack's APGD-T): on LyaNet models it
        # finds markedly more than the untargeted attacks.
        record(
            *run_attack(
                f"apgd{apgd_steps}_t_linf",
                lambda m: torchattacks.APGDT(
                    m, norm="Linf", eps=main_eps, steps=apgd_steps, n_classes=classes, seed=seed
                ),
                attack_view,
                inference_view,
                x,
                y,
                eps=main_eps,
                norm="linf",
                seed=seed,
                batch_size=batch_size,
            )
        )
    for eps in l2_eps:
        record(
            *run_attack(
                f"pgd{attack_steps}_l2",
                pgdl2(eps, attack_steps),
                attack_view,
                inference_view,
                x,
                y,
                eps=eps,
                norm="l2",
                seed=seed,
                batch_size=batch_size,
            )
        )
        if apgd_steps > 0:
            # PGDL2 divides the gradient by its norm, so a saturated softmax (a vanishing
            # cross-entropy gradient) stalls it; the DLR margin loss does not saturate.
            record(
                *run_attack(
                    f"apgd{apgd_steps}_dlr_l2",
                    lambda m, eps=eps: torchattacks.APGD(
                        m, norm="L2", eps=eps, steps=apgd_steps, loss="dlr", seed=seed
                    ),
                    attack_view,
                    inference_view,
                    x,
                    y,
                    eps=eps,
                    norm="l2",
                    seed=seed,
                    batch_size=batch_size,
                )
            )
    for eps in sweep_eps:
        record(
            *run_attack(
                f"pgd{attack_steps}_linf_sweep",
                pgd(eps, attack_steps),
                attack_view,
                inference_view,
                x,
                y,
                eps=eps,
                norm="linf",
                seed=seed,
                batch_size=batch_size,
            )
        )
    if square_queries > 0:
        record(
            *run_attack(
                "square_linf",
                lambda m: torchattacks.Square(
                    m, norm="Linf", eps=main_eps, n_queries=square_queries, n_restarts=1, seed=seed
                ),
                attack_view,
                inference_view,
                x,
                y,
                eps=main_eps,
                norm="linf",
                seed=seed,
                batch_size=batch_size,
            )
        )
    if autoattack:
        record(
            *run_attack(
                "autoattack_linf",
                lambda m: torchattacks.AutoAttack(
                    m, norm="Linf", eps=main_eps, version="standard", n_classes=classes, seed=seed
                ),
                attack_view,
                inference_view,
                x,
                y,
                eps=main_eps,
                norm="linf",
                seed=seed,
                batch_size=batch_size,
            )
        )
    if transfer_from is not None:
        source_view = Classifier(transfer_from, solver=attack_solver or FixedStepSolver(method="rk4", steps=10))
        source_view.eval()
        _, adv_transfer = run_attack(
            "source",
            pgd(main_eps, attack_steps),
            source_view,
            source_view,
            x,
            y,
            eps=main_eps,
            norm="linf",
            seed=seed,
            batch_size=batch_size,
        )
        record(
            AttackResult(
                "transfer_pgd_linf",
                main_eps,
                error_rate(attack_view, adv_transfer, y, batch_size),
                error_rate(inference_view, adv_transfer, y, batch_size),
                float((adv_transfer - x).abs().max()),
            ),
            adv_transfer,
        )
    report.worst_case_error = float(broken_main.double().mean())
    report.sanity = sanity_checks(
        report, attack_steps=attack_steps, strong_steps=strong_steps, strong_restarts=strong_restarts, main_eps=main_eps
    )
    return report


def sanity_checks(
    report: RobustnessReport, *, attack_steps: int, strong_steps: int, strong_restarts: int, main_eps: float
) -> dict[str, Any]:
    """The obfuscation sanity checks of docs/evaluation.md on a finished report."""
    checks: dict[str, Any] = {}
    sweep = [a for a in report.attacks if a.name.endswith("_sweep")]
    if sweep:
        largest = max(sweep, key=lambda a: a.eps)
        checks["sweep_reaches_high_error"] = {
            "ok": largest.error_attack_view >= 0.9,
            "eps": largest.eps,
            "error": largest.error_attack_view,
        }
        ordered = sorted(
            [a for a in report.attacks if a.name in (f"pgd{attack_steps}_linf", f"pgd{attack_steps}_linf_sweep")],
            key=lambda a: a.eps,
        )
        errors = [a.error_attack_view for a in ordered]
        checks["error_grows_with_eps"] = {
            "ok": all(b >= a - SANITY_TOLERANCE for a, b in zip(errors, errors[1:], strict=False)),
            "eps": [a.eps for a in ordered],
            "error": errors,
        }
    weak = [a for a in report.attacks if a.name == f"pgd{attack_steps}_linf"]
    strong = [a for a in report.attacks if a.name == f"pgd{strong_steps}x{strong_restarts}_linf"]
    pairs = [(w, s) for w in weak for s in strong if w.eps == s.eps]
    checks["more_steps_never_help"] = {
        "ok": all(s.error_attack_view >= w.error_attack_view - SANITY_TOLERANCE for w, s in pairs),
        "pairs": [(w.eps, w.error_attack_view, s.error_attack_view) for w, s in pairs],
    }
    white = max(
        (
            a.error_attack_view
            for a in report.attacks
            if a.eps == main_eps and a.name.startswith(("pgd", "apgd")) and "linf" in a.name and "sweep" not in a.name
        ),
        default=None,
    )
    for name, key in (
        ("square_linf", "square_not_stronger_than_pgd"),
        ("transfer_pgd_linf", "transfer_not_stronger_than_direct"),
    ):
        found = [a for a in report.attacks if a.name == name]
        if found and white is not None:
            checks[key] = {
                "ok": found[0].error_attack_view <= white + SANITY_TOLERANCE,
                "black_or_transfer": found[0].error_attack_view,
                "white_box": white,
            }
    checks["all_ok"] = all(v["ok"] for v in checks.values() if isinstance(v, dict))
    return checks
