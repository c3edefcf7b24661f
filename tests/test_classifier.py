"""lyapunov_plugin.Classifier: the trained model as a differentiable classifier for attack libraries."""

import pytest
import torch
import torch.nn as nn

from lyapunov_plugin import Classifier, FixedStepSolver, LyapunovTrainer, ODEModel
from lyapunov_plugin.blocks import MLPDynamics

from .models import loader


def _trained(features=4, classes=4):
    torch.manual_seed(0)
    model = ODEModel(
        MLPDynamics(classes, 8, (16,)),
        state_shape=(classes,),
        encoder=nn.Linear(features, 8),
        solver=FixedStepSolver(method="rk4", steps=4),
    )
    g = torch.Generator().manual_seed(0)
    y = torch.arange(96) % classes
    # in [0, 1]: attack libraries clamp to the image range
    x = (0.4 + 0.1 * torch.randn(96, features, generator=g) + 0.4 * nn.functional.one_hot(y, features)).clamp(0, 1)
    LyapunovTrainer(model, progress=False, seed=0).fit(loader(x, y), epochs=4)
    return model, x, y


def test_classifier_matches_predict_and_keeps_gradients():
    model, x, y = _trained()
    trainer = LyapunovTrainer(model, progress=False)
    view = Classifier(model)
    torch.testing.assert_close(view(x).detach(), trainer.predict(x))
    xr = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(view(xr), y).backward()
    assert xr.grad is not None and float(xr.grad.abs().sum()) > 0
    early = Classifier(model, t_end=0.25, solver=FixedStepSolver(method="rk4", steps=2))
    torch.testing.assert_close(early(x).detach(), trainer.predict(x, t_end=0.25, solver=FixedStepSolver(steps=2)))


def test_tabular_inputs_survive_torchattacks_apgd_through_image_shaped_tensors():
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _trained()
    view = Classifier(model, solver=FixedStepSolver(method="rk4", steps=4), input_shape=(4,))
    images = x[:16].reshape(16, 1, 1, 4)
    for attack in (
        torchattacks.APGD(view, norm="Linf", eps=0.1, steps=5, seed=0),
        torchattacks.APGDT(view, norm="Linf", eps=0.1, steps=5, n_classes=4, seed=0),
        torchattacks.PGD(view, eps=0.1, alpha=0.03, steps=5),
    ):
        adv = attack(images, y[:16])
        assert adv.shape == images.shape
        assert float((adv - images).abs().max()) <= 0.1 + 1e-5
    with pytest.raises(
        ValueError, match=r"x must hold 4 values per example \(input_shape=\(4,\)\), got shape \(3, 5\)"
    ):
        view(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="input_shape must be a non-empty sequence of positive ints"):
        Classifier(model, input_shape=(0,))
