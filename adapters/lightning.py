"""PyTorch Lightning: train an existing Neural ODE with the Lyapunov objective (Eq. 12-17)
inside Lightning, so that its strategies, loggers, precision and checkpointing apply.

Two ways in:

- :class:`LyapunovModule` wraps a model (torchdyn ``NeuralODE``, torchdiffeq field, any
  :class:`~lyapunov_plugin.LyapunovModel`) in a ``LightningModule`` whose
  ``training_step`` minimises an objective (by default the one ``LyapunovTrainer(model)``
  uses) and whose ``validation_step`` logs the error at ``t_end``::

      module = LyapunovModule(model)
      pl.Trainer(max_epochs=10).fit(module, train_loader, val_loader)

- in a ``LightningModule`` of your own (torchdyn's tutorial ``Learner``, say), the pure
  objective is the whole integration::

      self.objective = default_objective(self.model)             # in __init__
      return self.objective(self.model, x, y).loss               # in training_step

Devices follow the module: the Monte Carlo draws use a generator created on the module's
device, seeded with ``seed + global_rank`` so that ranks draw different samples and a run
is reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, cast

import torch
from torch import Tensor, nn

from lyapunov_plugin._validation import check_choice, check_positive
from lyapunov_plugin.dispatch import as_lyapunov_model
from lyapunov_plugin.model import horizon, readout_at
from lyapunov_plugin.objectives import DEFAULT_KAPPA, Objective, default_objective
from lyapunov_plugin.trainer import DEFAULT_LR

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError as err:  # pragma: no cover - exercised only without Lightning
        raise ImportError(
            "lyapunov_plugin.adapters.lightning needs Lightning: pip install lightning (or pytorch-lightning)"
        ) from err

if TYPE_CHECKING:
    from lyapunov_plugin.model import TrainableModel

__all__ = ["LyapunovModule"]

_SCHEDULES = ("cosine", "constant")


class LyapunovModule(pl.LightningModule):
    """A ``LightningModule`` that trains ``model`` with a Lyapunov objective.

    Arguments:
        model: the Neural ODE (any form ``LyapunovTrainer`` accepts).
        objective: what to minimise; default :func:`~lyapunov_plugin.default_objective`
            (chosen from the model's structure, on the first batch if the model cannot tell).
        kappa: the rate of Eq. (10).
        lr: Adam's learning rate (default 1e-2, the trainer's).
        schedule: ``"cosine"`` over ``Trainer(max_epochs=...)`` (the trainer's default) or
            ``"constant"``.
        seed: seed of the Monte Carlo draws (plus the global rank).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Optional[Objective] = None,
        *,
        kappa: float = DEFAULT_KAPPA,
        lr: float = DEFAULT_LR,
        schedule: str = "cosine",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if objective is not None and not isinstance(objective, Objective):
            raise TypeError(f"objective must be a lyapunov_plugin Objective or None, got {type(objective).__name__}")
        net = as_lyapunov_model(model)
        if not isinstance(net, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(net).__name__}")
        self.net = cast("TrainableModel", net)
        self.objective = objective
        self.kappa = check_positive("kappa", kappa)
        self.lr = check_positive("lr", lr)
        self.schedule = check_choice("schedule", schedule, _SCHEDULES)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self._generator: Optional[torch.Generator] = None

    def forward(self, x: Tensor) -> Tensor:
        """``psi(eta(t_end))`` with the model's own solver: the prediction."""
        return readout_at(self.net, x, horizon(self.net))

    def generator(self) -> torch.Generator:
        """The Monte Carlo generator on the module's current device (re-created if it moved)."""
        if self._generator is None or self._generator.device != self.device:
            rank = int(getattr(self, "global_rank", 0))
            self._generator = torch.Generator(device=self.device)
            self._generator.manual_seed(self.seed + rank)
        return self._generator

    def resolved_objective(self, x: Tensor) -> Objective:
        if self.objective is None:
            self.objective = default_objective(self.net, x[:2])
        return self.objective

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        out = self.resolved_objective(x)(self.net, x, y, kappa=self.kappa, generator=self.generator())
        self.log("train_loss", out.loss.detach(), prog_bar=True, batch_size=x.shape[0])
        self.log("train_violation", out.violation_fraction, prog_bar=True, batch_size=x.shape[0])
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            logits = self(x)
        self.log("val_error", (logits.argmax(-1) != y).float().mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        max_epochs = getattr(getattr(self, "trainer", None), "max_epochs", None)
        if self.schedule == "constant" or not max_epochs or max_epochs < 1:
            return optimizer
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
