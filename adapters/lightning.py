"""PyTorch Lightning: train an existing Neural ODE with the Lyapunov objective (Eq. 12-17)
inside Lightning, so that its strategies, loggers, precision and checkpointing apply.

Two ways in:

- :class:`LyapunovModule` wraps a model (torchdyn ``NeuralODE``, torchdiffeq field, any
  :class:`~lyapunov_plugin.LyapunovModel`) in a ``LightningModule`` whose
  ``training_step`` minimises an objective (by default the one ``LyapunovTrainer(model)``
  uses, from the same :class:`~lyapunov_plugin.Recipe`) and whose ``validation_step`` logs
  the error at ``t_end``::

      module = LyapunovModule(model)
      pl.Trainer(max_epochs=10).fit(module, train_loader, val_loader)

- in a ``LightningModule`` of your own (torchdyn's tutorial ``Learner``, say), the pure
  objective is the whole integration::

      self.recipe = default_recipe(self.model)                   # in __init__
      return self.recipe.objective(self.model, x, y).loss        # in training_step
      return self.recipe.configure_optimizers(self.parameters(), self.trainer.max_epochs)  # configure_optimizers

Devices follow the module: the Monte Carlo draws use a generator created on the module's
device, seeded with ``seed + global_rank`` so that ranks draw different samples and a run
is reproducible.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import torch
from torch import Tensor, nn

from lyapunov_plugin.dispatch import as_lyapunov_model
from lyapunov_plugin.model import horizon, readout_at
from lyapunov_plugin.objectives import Objective
from lyapunov_plugin.recipe import Recipe, default_recipe
from lyapunov_plugin.schedules import KappaSchedule

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


class LyapunovModule(pl.LightningModule):
    """A ``LightningModule`` that trains ``model`` with a :class:`~lyapunov_plugin.Recipe`.

    The recipe is the trainer's: the same default (:func:`~lyapunov_plugin.default_recipe`),
    the same objective, ``kappa``, optimizer, and the same cosine learning rates over
    ``Trainer(max_epochs=...)`` that ``LyapunovTrainer.fit(..., epochs=max_epochs)`` uses.

    Arguments:
        model: the Neural ODE (any form ``LyapunovTrainer`` accepts).
        recipe: what is minimised and how it is optimised (default
            :func:`~lyapunov_plugin.default_recipe`; an objective the model cannot choose
            without running is chosen on the first batch).
        objective, kappa: shortcuts that replace the recipe's objective / rate of Eq. (10).
        seed: seed of the Monte Carlo draws (plus the global rank).
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Optional[Union[Recipe, Objective]] = None,
        *,
        objective: Optional[Objective] = None,
        kappa: Optional[Union[float, KappaSchedule]] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        net = as_lyapunov_model(model)
        if not isinstance(net, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(net).__name__}")
        self.net = cast("TrainableModel", net)
        if isinstance(recipe, Objective) and objective is None:
            recipe, objective = None, recipe  # LyapunovModule(model, objective) reads as it always did
        if recipe is not None and not isinstance(recipe, Recipe):
            raise TypeError(
                f"recipe must be a lyapunov_plugin Recipe, an Objective or None, got {type(recipe).__name__}"
            )
        if objective is not None and not isinstance(objective, Objective):
            raise TypeError(f"objective must be a lyapunov_plugin Objective or None, got {type(objective).__name__}")
        if recipe is None:
            recipe = default_recipe(self.net) if objective is None else Recipe()
        if objective is not None:
            recipe = dataclasses.replace(recipe, objective=objective, potential=None)
        if kappa is not None:
            recipe = dataclasses.replace(recipe, kappa=kappa)
        self.recipe = recipe
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self._generator: Optional[torch.Generator] = None

    @property
    def objective(self) -> Optional[Objective]:
        """The recipe's objective (``None`` until chosen on the first batch, if the model cannot tell)."""
        return self.recipe.objective

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
        self.recipe = self.recipe.resolve(self.net, x[:2])
        return cast(Objective, self.recipe.objective)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        epoch = int(getattr(self, "current_epoch", 0)) + 1
        out = self.resolved_objective(x)(self.net, x, y, kappa=self.recipe.kappa_at(epoch), generator=self.generator())
        self.log("train_loss", out.loss.detach(), prog_bar=True, batch_size=x.shape[0])
        self.log("train_violation", out.violation_fraction, prog_bar=True, batch_size=x.shape[0])
        return out.loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        with torch.no_grad():
            logits = self(x)
        self.log("val_error", (logits.argmax(-1) != y).float().mean(), prog_bar=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> Any:
        max_epochs = getattr(getattr(self, "trainer", None), "max_epochs", None)
        return self.recipe.configure_optimizers(self.net.parameters(), max_epochs)
