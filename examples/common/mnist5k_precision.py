"""Is mixed precision safe for the Lyapunov derivative? ``dV/deta . f`` (paper Eq. 12) in
bfloat16 / float16 CPU autocast against float32 and a float64 reference, on MNIST-5k digits.

The data-controlled Neural ODE of :mod:`examples.common.vision_models` (ResNet trunk ->
context, MLP dynamics over ``[eta, context, t]``, identity readout) at its initial weights,
evaluated at Monte Carlo states ``eta`` of growing magnitude: a LyaNet drives ``eta`` into a
class corner, so late in training the logits are large and the softmax is nearly one-hot.
There ``V_dot = sum_i p_i f_i - f_y`` is a difference of two nearly equal numbers, which is
where low precision should hurt. For each precision it reports the median relative error of
``V_dot`` and the fraction of samples whose Lyapunov violation ``relu(V_dot + kappa V)``
(Eq. 13) changes from zero to positive or back, i.e. where the training signal flips.

    python -m examples.common.mnist5k_precision       # writes benchmarks/results/vision_mnist5k_precision.*
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

from lyapunov_plugin.potentials import CrossEntropyPotential

from .data import mnist5k
from .report import write_outputs
from .vision_models import node_parts

#: States ``eta = scale * noise``: 1 is early training, 30 a LyaNet deep in a class corner.
SCALES = (1.0, 5.0, 30.0)
#: ``V_y < 0.01`` (``p_y > 0.99``): a confidently classified state.
CONFIDENT_V = 0.01
#: The trainer's default exponential rate (paper Eq. 9), for the violation's sign.
KAPPA = 1.0
PRECISIONS = ("float32", "bfloat16", "float16")


def lyapunov_terms(model: Any, x: torch.Tensor, eta: torch.Tensor, y: torch.Tensor, precision: str) -> tuple:
    """``(V, V_dot)`` of Eq. 11-12 with the dynamics run at ``precision`` (autocast for the
    half types, as mixed-precision training would) and returned as float64."""
    encoder, dynamics = model
    potential = CrossEntropyPotential()
    t = torch.full((len(y),), 0.5, dtype=eta.dtype)
    if precision == "float64":
        with torch.no_grad():
            context = encoder.double()(x.double())
            f = dynamics.double()(eta.double(), context, t.double())
            v, v_dot = potential.evaluate(eta.double(), f, y)
        return v, v_dot
    encoder.float(), dynamics.float()
    dtype = getattr(torch, precision)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=precision != "float32"):
        context = encoder(x.float())
        f = dynamics(eta.float(), context, t.float())
        # Under autocast the state travels in the half type too (it is the solver's state).
        e = eta.to(f.dtype)
        v, v_dot = potential.evaluate(e, f, y)
    return v.double(), v_dot.double()


def measure(*, images: int, seed: int) -> dict[str, Any]:
    """Relative error of ``V_dot`` and violation flips per precision and state scale."""
    torch.manual_seed(seed)
    split = mnist5k()
    x, y = split.x_train[:images], split.y_train[:images]
    parts = node_parts("mnist5k", 1, 10, width=8, context_dim=32, hidden=16)
    model = (parts.encoder.eval(), parts.dynamics.eval())
    rows: dict[str, Any] = {}
    for scale in SCALES:
        eta = scale * torch.randn(len(y), 10, dtype=torch.float64)
        v_ref, vd_ref = lyapunov_terms(model, x, eta, y, "float64")
        viol_ref = torch.relu(vd_ref + KAPPA * v_ref)
        # Confident states (V < 0.01: p_y > 0.99) are where V_dot is a cancellation.
        confident = v_ref < CONFIDENT_V
        for precision in PRECISIONS:
            v, vd = lyapunov_terms(model, x, eta, y, precision)
            rel = (vd - vd_ref).abs() / vd_ref.abs().clamp_min(1e-30)
            viol = torch.relu(vd + KAPPA * v)
            flips = (viol > 0) != (viol_ref > 0)
            rows[f"scale {scale:g} / {precision}"] = {
                "scale": scale,
                "precision": precision,
                "median_relative_error_vdot": float(rel.median()),
                "median_relative_error_vdot_confident": float(rel[confident].median()) if confident.any() else None,
                "confident_fraction": float(confident.double().mean()),
                "violation_relative_l1_error": float((viol - viol_ref).abs().sum() / viol_ref.sum().clamp_min(1e-30)),
                "violation_flip_fraction": float(flips.double().mean()),
                "median_abs_vdot_reference": float(vd_ref.abs().median()),
                "finite": bool(torch.isfinite(vd).all()),
            }
    return rows


def to_markdown(rows: dict[str, Any], images: int) -> str:
    lines = [
        "| eta scale | precision | median rel. error of dV/deta . f | same, confident states (share) "
        "| rel. L1 error of relu(V_dot + kappa V) | violation on/off flips |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        c = r["median_relative_error_vdot_confident"]
        conf = "n/a" if c is None else f"{c:.2e} ({100 * r['confident_fraction']:.0f}%)"
        lines.append(
            f"| {r['scale']:g} | {r['precision']} | {r['median_relative_error_vdot']:.2e} | {conf} | "
            f"{r['violation_relative_l1_error']:.2e} | {100 * r['violation_flip_fraction']:.1f}% |"
        )
    return "\n".join(lines) + (
        f"\n\nLyapunov derivative (paper Eq. 12) of the MNIST-5k Neural ODE (initial weights) on {images} "
        f"training digits at Monte Carlo states eta = scale * N(0, I), dynamics under CPU autocast, "
        f"against a float64 reference; confident: V < {CONFIDENT_V:g}; "
        f"flips: relu(V_dot + {KAPPA:g} V) of Eq. 13 changes between zero "
        "and positive. Written by `python -m examples.common.mnist5k_precision`.\n"
    )


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args(argv)
    if args.images < 1:
        raise ValueError(f"images must be >= 1, got {args.images}")
    torch.set_num_threads(1)
    started = time.time()
    rows = measure(images=args.images, seed=args.seed)
    payload = {"rows": rows, "images": args.images, "seed": args.seed, "seconds": round(time.time() - started, 1)}
    markdown = to_markdown(rows, args.images)
    write_outputs(Path(args.out_dir), "vision_mnist5k_precision", payload, markdown)
    print(markdown)
    return payload


if __name__ == "__main__":
    main()
