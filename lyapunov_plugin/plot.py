"""Pictures of a trained model (matplotlib, an optional dependency: ``pip install matplotlib``).

- :func:`phase_portrait`: paper Fig. 1 for 2-D states: the learned vector field as arrows,
  trajectories from perturbed starts, the background coloured by the readout's class.
- :func:`decision_boundary`: paper Fig. 4 for 2-D inputs: the predicted class (and its
  probability) over the input plane at ``t_end``, with the data on top.
- :func:`inference_curve`: paper Fig. 3: loss and error of early-terminated predictions
  against the inference time.
- :func:`compare`: one figure with a row per trained model (e.g. LyaNet beside standard).

Every function takes a :class:`~lyapunov_plugin.LyapunovModel` (or a model the dispatcher
wraps), runs without gradient in eval mode, restores the model's mode and returns the
matplotlib ``Axes`` (or ``Figure``) it drew on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from ._validation import check_positive, check_positive_int, check_tensor
from .diagnostics import InferenceCurve, states_along
from .dispatch import as_lyapunov_model
from .inference import EvalMode
from .model import horizon

__all__ = ["phase_portrait", "decision_boundary", "inference_curve", "compare"]

_CLASS_COLOURS = (
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
    "tab:olive",
    "tab:cyan",
)


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - exercised only without matplotlib
        raise ImportError("lyapunov_plugin.plot needs matplotlib: pip install matplotlib") from err
    return plt


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    return _pyplot().subplots(figsize=(4.5, 4.0))[1]


def _device(model: Any) -> torch.device:
    for p in getattr(model, "parameters", lambda: iter(()))():
        return p.device
    return torch.device("cpu")


def _colours(num_classes: int) -> Any:
    from matplotlib.colors import ListedColormap

    return ListedColormap([_CLASS_COLOURS[i % len(_CLASS_COLOURS)] for i in range(num_classes)])


def _labels(y: Optional[Tensor], x: Tensor) -> Optional[Tensor]:
    """``y`` as class labels ``(N,)`` for ``x`` (or ``None``): the pictures colour classes, so
    regression targets are refused by name instead of failing inside matplotlib or torch."""
    if y is None:
        return None
    check_tensor("y", y, min_ndim=1)
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(
            f"y must hold integer class labels (these pictures colour classes; a regression model "
            f"has no decision boundary), got dtype {y.dtype}"
        )
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have shape ({x.shape[0]},) (one label per input), got {tuple(y.shape)}")
    return y


def _padded_box(points: Tensor, pad: float) -> tuple[float, float, float, float]:
    low, high = points.min(0).values, points.max(0).values
    span = (high - low).clamp_min(1e-3)
    low, high = low - pad * span, high + pad * span
    return float(low[0]), float(high[0]), float(low[1]), float(high[1])


def _grid(box: tuple[float, float, float, float], resolution: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    xs = torch.linspace(box[0], box[1], resolution, dtype=like.dtype, device=like.device)
    ys = torch.linspace(box[2], box[3], resolution, dtype=like.dtype, device=like.device)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return gx, gy, torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)


def decision_boundary(
    model: Any,
    x: Tensor,
    y: Optional[Tensor] = None,
    *,
    ax: Any = None,
    t_end: Optional[float] = None,
    resolution: int = 150,
    pad: float = 0.25,
    title: Optional[str] = None,
) -> Any:
    """Paper Fig. 4: the prediction ``psi(eta(t_end))`` over the plane of 2-D inputs.

    The background shows the predicted class, shaded by its probability; ``x`` (coloured by
    ``y`` if given) is drawn on top.

    Arguments:
        model: the trained model.
        x: inputs ``(N, 2)``; they also fix the plotted box (padded by ``pad``).
        y: labels ``(N,)`` for the scatter colours.
        ax: matplotlib axes (a new figure if ``None``).
        t_end: prediction time (default the model's horizon).
        resolution: grid points per axis.
    """
    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=2, floating=True)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be 2-D inputs of shape (N, 2) for a decision boundary, got {tuple(x.shape)}")
    y = _labels(y, x)
    resolution = check_positive_int("resolution", resolution)
    t_end = check_positive("t_end", t_end) if t_end is not None else horizon(model)
    ax = _axes(ax)
    device = _device(model)
    points = x.detach().to(device)
    box = _padded_box(points, pad)
    gx, gy, flat = _grid(box, resolution, points)
    ts = torch.tensor([0.0, t_end], device=device, dtype=points.dtype)
    with EvalMode(model), torch.no_grad():
        probs = model.readout(states_along(model, flat, ts)[-1]).softmax(-1)
    num_classes = probs.shape[-1]
    confidence, label = probs.max(-1)
    ax.imshow(
        label.reshape(resolution, resolution).cpu().numpy(),
        origin="lower",
        extent=box,
        aspect="auto",
        cmap=_colours(num_classes),
        vmin=-0.5,
        vmax=num_classes - 0.5,
        alpha=0.25,
        interpolation="nearest",
    )
    ax.contour(
        gx.cpu().numpy(),
        gy.cpu().numpy(),
        confidence.reshape(resolution, resolution).cpu().numpy(),
        levels=[0.6, 0.9, 0.99],
        colors="k",
        linewidths=0.4,
        alpha=0.5,
    )
    colours = y.cpu().numpy() if y is not None else "k"
    ax.scatter(
        x[:, 0].cpu().numpy(),
        x[:, 1].cpu().numpy(),
        c=colours,
        cmap=_colours(num_classes),
        s=6,
        edgecolors="k",
        linewidths=0.2,
        vmin=-0.5,
        vmax=num_classes - 0.5,
    )
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_title(title or f"prediction at t = {t_end:g} (contours: confidence 0.6, 0.9, 0.99)", fontsize=8)
    return ax


def phase_portrait(
    model: Any,
    x: Tensor,
    y: Optional[Tensor] = None,
    *,
    ax: Any = None,
    example: int = 0,
    num_starts: int = 24,
    perturbation: float = 0.15,
    steps: int = 40,
    arrows: int = 17,
    title: Optional[str] = None,
) -> Any:
    """Paper Fig. 1 for models with 2-D states: the learned field, trajectories and classes.

    Data-controlled dynamics ``f(eta, x, t)`` have one field per input, so the field is
    drawn for ``x[example]``, with trajectories from ``eta(0)`` of that example perturbed by
    Gaussian noise (``perturbation`` times the spread of the drawn states). A field that
    does not see the input is the same for every example; then trajectories start at the
    first ``num_starts`` examples' ``eta(0)``, coloured by their labels. The background is
    the readout's class at each state, so trajectories should end in their class's colour.

    Arguments:
        model: the trained model (2-D states ``eta``).
        x: inputs; ``y`` their labels (optional).
        example: which input conditions the field of a data-controlled model.
        num_starts: trajectories drawn.
        perturbation: relative size of the perturbed starts.
        steps: RK4 steps of the drawn trajectories over ``[0, t_end]``.
        arrows: arrows per axis.
    """
    from .solvers import FixedStepSolver

    model = as_lyapunov_model(model)
    check_tensor("x", x, min_ndim=1)
    y = _labels(y, x)
    num_starts = check_positive_int("num_starts", num_starts)
    steps = check_positive_int("steps", steps)
    arrows = check_positive_int("arrows", arrows)
    ax = _axes(ax)
    device = _device(model)
    x = x.to(device)
    t_end = horizon(model)
    conditioned = bool(getattr(model, "conditioned_on_input", True))
    if conditioned and not 0 <= example < x.shape[0]:
        raise ValueError(f"example must index x (0 <= example < {x.shape[0]}), got {example}")
    ts = torch.linspace(0.0, t_end, steps + 1, device=device)
    solver = FixedStepSolver(method="rk4", steps=steps)
    with EvalMode(model), torch.no_grad():
        context, eta0 = model.encode(x)
        if eta0.ndim != 2 or eta0.shape[1] != 2:
            raise ValueError(f"phase_portrait needs 2-D states eta, got states of shape {tuple(eta0.shape[1:])}")
        if conditioned:
            base = eta0[example : example + 1]
            spread = eta0.std(0).clamp_min(1e-3) if eta0.shape[0] > 1 else torch.ones_like(base[0])
            noise = torch.randn(num_starts, 2, generator=torch.Generator().manual_seed(0)).to(base)
            starts = base + perturbation * spread * noise
            starts[0] = base[0]
            ctx = (
                context[example : example + 1].expand(num_starts, *context.shape[1:])
                if isinstance(context, Tensor)
                else context
            )
            labels = y[example : example + 1].expand(num_starts) if y is not None else None
        else:
            starts, ctx = eta0[:num_starts], context
            labels = y[:num_starts] if y is not None else None

        from .model import solve

        paths = solve(model, ctx, starts, ts, solver=solver)  # (T, n, 2)
        box = _padded_box(paths.reshape(-1, 2), 0.15)
        gx, gy, flat = _grid(box, 120, paths)
        num_classes = model.readout(flat[:1]).shape[-1]
        classes = model.readout(flat).argmax(-1).reshape(120, 120)
        ax_x, ax_y, arrow_points = _grid(box, arrows, paths)
        arrow_ctx = None
        if isinstance(ctx, Tensor):
            arrow_ctx = ctx[:1].expand(arrow_points.shape[0], *ctx.shape[1:])
        velocity = model.vector_field(
            arrow_points, arrow_ctx, torch.zeros(arrow_points.shape[0], device=device, dtype=arrow_points.dtype)
        )
    ax.imshow(
        classes.cpu().numpy(),
        origin="lower",
        extent=box,
        aspect="auto",
        cmap=_colours(num_classes),
        vmin=-0.5,
        vmax=num_classes - 0.5,
        alpha=0.2,
        interpolation="nearest",
    )
    v = velocity.cpu()
    ax.quiver(
        ax_x.cpu().numpy(),
        ax_y.cpu().numpy(),
        v[:, 0].reshape(arrows, arrows).numpy(),
        v[:, 1].reshape(arrows, arrows).numpy(),
        color="0.35",
        alpha=0.7,
        angles="xy",
    )
    p = paths.cpu()
    for i in range(p.shape[1]):
        colour = _CLASS_COLOURS[int(labels[i]) % len(_CLASS_COLOURS)] if labels is not None else "k"
        ax.plot(p[:, i, 0].numpy(), p[:, i, 1].numpy(), color=colour, linewidth=0.9)
        ax.plot(p[0, i, 0].item(), p[0, i, 1].item(), "o", color=colour, markersize=2.5)
        ax.plot(
            p[-1, i, 0].item(),
            p[-1, i, 1].item(),
            "s",
            color=colour,
            markersize=3,
            markeredgecolor="k",
            markeredgewidth=0.3,
        )
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_title(
        title
        or (
            "state space of one input: field, perturbed trajectories (o start, s end)"
            if conditioned
            else "state space: field and trajectories (o start, s end)"
        ),
        fontsize=8,
    )
    return ax


def inference_curve(curves: Mapping[str, InferenceCurve], *, ax: Any = None, title: Optional[str] = None) -> Any:
    """Paper Fig. 3: error (solid) and loss (dashed, right axis) of ``psi(eta(t))`` against
    ``t`` for each named :class:`~lyapunov_plugin.InferenceCurve`."""
    if not curves:
        raise ValueError("curves must hold at least one named InferenceCurve, got none")
    ax = _axes(ax)
    loss_ax = ax.twinx()
    for i, (name, curve) in enumerate(curves.items()):
        if not isinstance(curve, InferenceCurve):
            raise TypeError(f"curves[{name!r}] must be an InferenceCurve, got {type(curve).__name__}")
        colour = _CLASS_COLOURS[i % len(_CLASS_COLOURS)]
        ax.plot(curve.ts, [100 * e for e in curve.error], color=colour, label=f"{name} error")
        loss_ax.plot(curve.ts, curve.loss, color=colour, linestyle="--", label=f"{name} loss")
    ax.set_xlabel("inference time t")
    ax.set_ylabel("error (%)")
    loss_ax.set_ylabel("loss V")
    loss_ax.set_yscale("log")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title or "early-terminated predictions (Fig. 3)", fontsize=8)
    return ax


def compare(
    models: Mapping[str, Any],
    x: Tensor,
    y: Tensor,
    *,
    path: Optional[Any] = None,
    ts: Optional[Sequence[float]] = None,
    suptitle: Optional[str] = None,
) -> Any:
    """One row per model: decision boundary (2-D inputs), phase portrait (2-D states) and
    the inference curve, side by side. Saves to ``path`` if given; returns the figure."""
    from .diagnostics import loss_error_curve

    if not models:
        raise ValueError("models must map at least one name to a model, got none")
    check_tensor("x", x, min_ndim=1)
    if y is None:
        raise TypeError("y must be the class labels of x (compare draws the inference curve's error), got None")
    _labels(y, x)  # class labels: refuse regression targets up front
    plt = _pyplot()
    wrapped = {name: as_lyapunov_model(m) for name, m in models.items()}
    panels = []
    for model in wrapped.values():
        with EvalMode(model), torch.no_grad():
            _, eta0 = model.encode(x[:1].to(_device(model)))
        panels.append((x.ndim == 2 and x.shape[1] == 2, eta0.ndim == 2 and eta0.shape[1] == 2))
    columns = 1 + int(any(p[0] for p in panels)) + int(any(p[1] for p in panels))
    fig, axes = plt.subplots(len(wrapped), columns, figsize=(4.2 * columns, 3.6 * len(wrapped)), squeeze=False)
    grid = torch.tensor(list(ts) if ts is not None else [i / 10 for i in range(11)])
    for row, ((name, model), (two_d_input, two_d_state)) in enumerate(zip(wrapped.items(), panels, strict=True)):
        col = 0
        if any(p[0] for p in panels):
            if two_d_input:
                decision_boundary(model, x, y, ax=axes[row][col], title=f"{name}: prediction at t = 1")
            col += 1
        if any(p[1] for p in panels):
            if two_d_state:
                phase_portrait(model, x, y, ax=axes[row][col], title=f"{name}: state space of one input")
            col += 1
        with EvalMode(model):
            curve = loss_error_curve(
                model,
                (x.to(_device(model)), y.to(_device(model))),
                (grid * horizon(model)).to(_device(model)),
                only_correct=False,
            )
        inference_curve({name: curve}, ax=axes[row][col], title=f"{name}: error / loss against t")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
