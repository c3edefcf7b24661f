"""lyapunov_plugin.plot: the pictures of paper Fig. 1, 3 and 4 render for real models."""

import pytest
import torch
import torch.nn as nn

pytest.importorskip("matplotlib")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lyapunov_plugin import FixedStepSolver, LyapunovTrainer, ODEModel, loss_error_curve  # noqa: E402
from lyapunov_plugin.blocks import MLPDynamics  # noqa: E402
from lyapunov_plugin.plot import compare, decision_boundary, inference_curve, phase_portrait  # noqa: E402

from .models import blobs, loader, torchdyn_plain  # noqa: E402


def _trained_paper_model():
    torch.manual_seed(0)
    model = ODEModel(
        MLPDynamics(2, 4, (16,)),
        state_shape=(2,),
        encoder=nn.Linear(2, 4),
        solver=FixedStepSolver(method="rk4", steps=4),
    )
    x, y = blobs(64, seed=1)
    LyapunovTrainer(model, progress=False, seed=0).fit(loader(x, y), epochs=3)
    return model, x, y


def test_every_picture_draws_on_the_given_axes_and_restores_the_mode(tmp_path):
    model, x, y = _trained_paper_model()
    model.train()
    fig, axes = plt.subplots(1, 3)
    assert decision_boundary(model, x, y, ax=axes[0], resolution=20) is axes[0]
    assert phase_portrait(model, x, y, ax=axes[1], num_starts=4, steps=5, arrows=5) is axes[1]
    curve = loss_error_curve(model, (x, y), torch.linspace(0, 1, 5))
    assert inference_curve({"LyaNet": curve}, ax=axes[2]) is axes[2]
    assert model.training
    assert len(axes[1].lines) == 3 * 4  # a path, a start and an end marker per trajectory
    assert axes[0].collections  # the data scatter
    plt.close(fig)


def test_compare_writes_one_row_per_model(tmp_path):
    model, x, y = _trained_paper_model()
    other = torchdyn_plain()  # 4-D states: no phase portrait in its row
    fig = compare({"LyaNet": model, "plain": other}, x, y, path=tmp_path / "cmp.png", ts=[0.0, 0.5, 1.0])
    assert (tmp_path / "cmp.png").stat().st_size > 1000
    assert len(fig.axes) >= 6
    plt.close(fig)


def test_pictures_refuse_what_they_cannot_draw():
    model, x, y = _trained_paper_model()
    with pytest.raises(ValueError, match=r"x must be 2-D inputs of shape \(N, 2\)"):
        decision_boundary(model, torch.randn(5, 3), y[:5])
    with pytest.raises(ValueError, match="phase_portrait needs 2-D states eta"):
        phase_portrait(torchdyn_plain(), x, y)
    with pytest.raises(ValueError, match=r"example must index x \(0 <= example < 64\), got 99"):
        phase_portrait(model, x, y, example=99)
    with pytest.raises(ValueError, match="curves must hold at least one named InferenceCurve"):
        inference_curve({})
    # Regression targets (the suite's 2-D `ripple` problem once reached phase_portrait with
    # (N, 1) float targets and failed inside torch's expand): refused by name, up front.
    targets = torch.randn(64, 1)
    for draw in (
        lambda: decision_boundary(model, x, targets),
        lambda: phase_portrait(model, x, targets),
        lambda: compare({"m": model}, x, targets),
    ):
        with pytest.raises(TypeError, match="y must hold integer class labels .* got dtype torch.float32"):
            draw()
    with pytest.raises(TypeError, match="y must be the class labels of x .* got None"):
        compare({"m": model}, x, None)
    with pytest.raises(ValueError, match=r"y must have shape \(64,\) \(one label per input\), got \(64, 1\)"):
        phase_portrait(model, x, y[:, None])
