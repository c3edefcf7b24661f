"""Lightning integration: LyapunovModule and the pure objective in a LightningModule of one's own."""

import pytest
import torch
import torch.nn as nn

pl = pytest.importorskip("pytorch_lightning")
pytest.importorskip("torchdyn")

from lyapunov_plugin import LyapunovTrainer, PathIntegralObjective, Recipe, default_objective  # noqa: E402
from lyapunov_plugin.adapters.lightning import LyapunovModule  # noqa: E402

from .models import blobs, loader, torchdyn_plain  # noqa: E402


def _trainer(**kw):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_fast_dev_run_trains_a_torchdyn_model_with_the_default_objective():
    torch.manual_seed(0)
    module = LyapunovModule(torchdyn_plain())
    before = [p.detach().clone() for p in module.parameters()]
    x, y = blobs(64, seed=1)
    _trainer(fast_dev_run=2).fit(module, loader(x, y), loader(*blobs(32, seed=2)))
    # linear readout: the path integral; one rk4 step over [0, 1]: along the model's own step
    assert module.objective == PathIntegralObjective(form="discrete", solver="model", steps=1)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=False))
    assert module.generator().device == module.device


def test_lyapunov_module_learns_as_well_as_the_trainer():
    train, test = blobs(160, seed=1), blobs(64, seed=2)
    torch.manual_seed(0)
    module = LyapunovModule(torchdyn_plain(), seed=0)
    _trainer(max_epochs=8).fit(module, loader(*train))
    with torch.no_grad():
        error = (module(test[0]).argmax(-1) != test[1]).float().mean().item()
    torch.manual_seed(0)
    trainer = LyapunovTrainer(torchdyn_plain(), progress=False, seed=0)
    trainer.fit(loader(*train), epochs=8)
    assert error <= 0.1 and trainer.evaluate([test])["error"] <= 0.1


class Learner(pl.LightningModule):
    """torchdyn's tutorial pattern: a LightningModule holding a NeuralODE, with the
    Lyapunov objective as its training loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.objective = default_objective(model)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.objective(self.model, x, y).loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.model.parameters(), lr=1e-2)


def test_the_pure_objective_is_a_training_step_of_ones_own():
    torch.manual_seed(0)
    learner = Learner(torchdyn_plain())
    train, test = blobs(160, seed=1), blobs(64, seed=2)
    _trainer(max_epochs=8).fit(learner, loader(*train))
    wrapped = LyapunovTrainer(learner.model, progress=False)
    assert wrapped.evaluate([test])["error"] <= 0.1


def test_lyapunov_module_validates_its_settings():
    with pytest.raises(TypeError, match="recipe must be a lyapunov_plugin Recipe, an Objective or None, got str"):
        LyapunovModule(torchdyn_plain(), "path")
    with pytest.raises(TypeError, match="objective must be a lyapunov_plugin Objective or None, got str"):
        LyapunovModule(torchdyn_plain(), objective="path")
    with pytest.raises(ValueError, match="schedule must be one of"):
        LyapunovModule(torchdyn_plain(), Recipe(schedule="linear"))
    with pytest.raises(ValueError, match="kappa must be > 0"):
        LyapunovModule(torchdyn_plain(), kappa=-1.0)
