"""``LyapunovTrainer``: LyaNet training (Algorithms 1 and 2) for an existing Neural ODE.

::

    trainer = LyapunovTrainer(model)                 # torchdyn / torchdiffeq / protocol model
    history = trainer.fit(train_loader, epochs=10)   # progress bar, one summary line per epoch
    logits = trainer.predict(x_test)                 # readout at t = 1
    early = trainer.predict(x_test, t_end=0.25)      # early termination

The trainer is the loop and nothing else. *What* is minimised and *how* it is optimised is a
:class:`~lyapunov_plugin.Recipe` (by default :func:`~lyapunov_plugin.default_recipe`, the
value a plain loop or a Lightning module uses too); checkpoints and RNG states live in
:mod:`~lyapunov_plugin.checkpoint`, reporting in :mod:`~lyapunov_plugin.reporting`, ranks
in :mod:`~lyapunov_plugin.distributed`, predictions in :mod:`~lyapunov_plugin.inference`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import torch
from torch import Tensor, nn

from . import inference
from ._legacy import MODES, recipe_from_keywords
from ._typing import Solver
from ._validation import (
    as_labels,
    check_choice,
    check_finite,
    check_positive,
    check_positive_int,
    check_tensor,
    floating_dtype_of,
    parameter_device,
)
from .anytime import AnytimePrediction, LevelChoice, anytime_predict, choose_level
from .budget import SolverError
from .checkpoint import FORMAT as _CHECKPOINT_FORMAT
from .checkpoint import CheckpointError, atomic_write, capture_rng, check_compatible, load_checkpoint, restore_rng
from .diagnostics import (
    DecayStatistics,
    InferenceCurve,
    decay_statistics,
    loss_error_curve,
    lyapunov_condition_rate,
    nfe_to_end,
)
from .dispatch import as_lyapunov_model
from .distributed import (
    any_rank,
    average_gradients,
    average_metrics,
    barrier,
    broadcast_parameters,
    gather_generator_states,
    is_main_process,
    rank_and_world_size,
    unwrap_data_parallel,
)
from .losses import LyapunovLossOutput
from .model import check_model, horizon, probe_output
from .objectives import DEFAULT_KAPPA, Objective
from .potentials import CrossEntropyPotential, MSEPotential, Potential
from .recipe import DEFAULT_LR, Recipe, structure_is_known
from .reporting import REFERENCE_SIZE, ReferenceSet, progress, summary_line, write_metrics
from .samplers import RolloutSampler, StateSampler
from .schedules import KappaSchedule

if TYPE_CHECKING:
    from .model import TrainableModel

__all__ = ["LyapunovTrainer", "NonFiniteLossError", "DEFAULT_KAPPA", "DEFAULT_LR", "MODES", "REFERENCE_SIZE"]

logger = logging.getLogger("lyapunov_plugin")
_NONFINITE = ("raise", "skip")


class NonFiniteLossError(FloatingPointError):
    """A training step met a NaN/Inf input batch, Lyapunov loss (Eq. 12-17), gradient or
    solver fault; the parameters were not updated. The message names the epoch and step."""


def _check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError, OverflowError) as err:
        raise ValueError(
            f"device must be a torch.device or a device string such as 'cpu' or 'cuda:0', got {device!r}"
        ) from err
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={str(resolved)!r} was requested, but CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={str(resolved)!r} was requested, but this machine has {torch.cuda.device_count()} CUDA "
                "device(s)"
            )
    return resolved


def _check_loader(name: str, loader: Any) -> None:
    if loader is None or isinstance(loader, (str, bytes, Tensor)) or not hasattr(loader, "__iter__"):
        raise TypeError(
            f"{name} must be an iterable of (x, y) batches (e.g. a DataLoader), got {type(loader).__name__}"
        )


def _check_path(name: str, path: Any) -> Path:
    if not isinstance(path, (str, Path)) and not hasattr(path, "__fspath__"):
        raise TypeError(f"{name} must be a str or os.PathLike file name, got {type(path).__name__} {path!r}")
    target = Path(path)
    # Checked now, not after an epoch of training: a missing folder is created when the file
    # is written, but one of the path's folders that exists as a file never can be.
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{name} {str(target)!r} cannot be written: {str(parent)!r} is a file, not a folder")
            break
    return target


class LyapunovTrainer:
    """Train an existing Neural ODE with the Lyapunov loss (paper Algorithms 1-2).

    Arguments:
        model: a torchdyn ``NeuralODE`` (alone or in an ``nn.Sequential``), a torchdiffeq
            vector field, or any :class:`~lyapunov_plugin.LyapunovModel`; the adapter is
            chosen automatically. ``DistributedDataParallel(model)`` is accepted.
        recipe: what is minimised and how it is optimised, a :class:`~lyapunov_plugin.Recipe`;
            default :func:`~lyapunov_plugin.default_recipe` (docs/defaults.md). An
            :class:`~lyapunov_plugin.objectives.Objective` in this place is read as ``objective``.
        objective: shortcut for ``dataclasses.replace(recipe, objective=objective)``, e.g.
            ``SupervisedObjective()`` for the standard baseline.
        kappa: shortcut for the recipe's rate of Eq. (10), a float or a
            :class:`~lyapunov_plugin.KappaSchedule`.
        nonfinite: ``"raise"`` (default) a :class:`NonFiniteLossError`, or ``"skip"`` the
            step and count it; parameters are never updated with a NaN/Inf (a solver fault
            during a step counts as one).
        device: where to train; default the model's parameter device.
        seed: seeds the trainer's own sampling generator (the global RNG, used by data
            loaders and dropout, stays the caller's).
        progress: show a progress bar (tqdm, on terminals) and print one summary line per
            epoch to stderr.
        t_end: the inference horizon belongs to the model (``model.t_end``, 1 in the paper);
            passing a different value raises.
        **legacy: the keyword form of a recipe (``mode``, ``potential``, ``num_samples``,
            ``path_steps``, ``lr``, ``optimizer``, ``scheduler``, ...), deprecated: each
            warns (``FutureWarning``) naming its replacement.
    """

    def __init__(
        self,
        model: Any,
        recipe: Optional[Union[Recipe, Objective]] = None,
        *,
        objective: Optional[Objective] = None,
        kappa: Optional[Union[float, KappaSchedule]] = None,
        nonfinite: str = "raise",
        device: Optional[Union[str, torch.device]] = None,
        seed: Optional[int] = None,
        progress: bool = True,
        t_end: Optional[float] = None,
        **legacy: Any,
    ) -> None:
        self.user_model = model
        # The objectives never call forward, so the trainer synchronises gradients itself.
        wrapped = as_lyapunov_model(unwrap_data_parallel(model))
        if not isinstance(wrapped, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (the trainer optimises its parameters), got {type(wrapped).__name__}"
            )
        self.model = cast("TrainableModel", wrapped)
        if isinstance(recipe, Objective) and objective is None:
            recipe, objective = None, recipe  # LyapunovTrainer(model, objective) reads as it always did
        if recipe is None:
            recipe = Recipe()
        elif not isinstance(recipe, Recipe):
            raise TypeError(
                f"recipe must be a lyapunov_plugin Recipe, an Objective or None, got {type(recipe).__name__}"
            )
        if objective is not None:
            if not isinstance(objective, Objective):
                raise TypeError(f"objective must be a lyapunov_plugin Objective, got {type(objective).__name__}")
            recipe = dataclasses.replace(recipe, objective=objective, potential=None)
        if kappa is not None:
            recipe = dataclasses.replace(recipe, kappa=kappa)
        recipe = recipe_from_keywords(recipe, legacy, self.model)
        if recipe.objective is None and structure_is_known(self.model):
            recipe = recipe.resolve(self.model)  # the model tells which objective applies without running
        self.recipe = recipe

        model_t_end = horizon(self.model)
        if t_end is not None and not math.isclose(check_positive("t_end", t_end), model_t_end):
            raise ValueError(
                f"t_end belongs to the model: the model's horizon is {model_t_end}, got t_end={t_end} "
                "(build the model with the horizon you want, e.g. ODEModel(..., t_end=...))"
            )
        self.t_end = model_t_end
        self.nonfinite = check_choice("nonfinite", nonfinite, _NONFINITE)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {type(progress).__name__} {progress!r}")
        self.progress = progress
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
            if not 0 <= seed < 2**64:
                raise ValueError(f"seed must lie in [0, 2**64), got {seed}")

        self.device = (
            _check_device(device) if device is not None else (parameter_device(self.model) or torch.device("cpu"))
        )
        self.model.to(self.device)
        broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        self.optimizer = self.recipe.build_optimizer(self.model.parameters())
        self.scheduler = self.recipe.build_scheduler(self.optimizer)
        self.base_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        # One generator per rank, seeded seed + rank: the ranks draw different Monte Carlo
        # samples, and a run is reproducible for a given seed and number of ranks.
        self.generator = torch.Generator(device=self.device)
        self.rank, self.world_size = rank_and_world_size()
        base_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)))
        self.generator.manual_seed((base_seed + self.rank) % 2**64)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self.reference = ReferenceSet()
        self._stepped = False
        self._model_checked = False
        # The readout output's shape (after the batch) and dtype, learnt once from two
        # examples: a batch's targets are checked against it before the model runs on them.
        self._output_template: Optional[tuple[tuple[int, ...], torch.dtype]] = None
        # Checkpoint files this trainer wrote or resumed from (fit warns before overwriting others).
        self._own_checkpoints: set[Path] = set()
        self._expected_mode: Optional[str] = None

    # ------------------------------------------------------------- the recipe
    @property
    def objective(self) -> Optional[Objective]:
        """What is minimised (``None`` until the default is chosen on the first batch, for a
        model that cannot tell its structure without running)."""
        return self.recipe.objective

    @property
    def mode(self) -> Optional[str]:
        """The objective's name (``"monte_carlo"``, ``"path_integral"``, ``"standard"``)."""
        return self.objective.name if self.objective is not None else None

    @property
    def potential(self) -> Potential:
        """The objective's potential ``V_y`` (cross entropy by default)."""
        held = getattr(self.objective, "potential", None) if self.objective is not None else self.recipe.potential
        return held if isinstance(held, Potential) else CrossEntropyPotential()

    @property
    def state_sampler(self) -> Optional[StateSampler]:
        """The Monte Carlo objective's ``mu_H`` (``None`` for other objectives)."""
        return getattr(self.objective, "state_sampler", None)

    @property
    def kappa_schedule(self) -> KappaSchedule:
        return self.recipe.kappa_schedule

    def kappa_at(self, epoch: int) -> float:
        """The rate used during ``epoch`` (1-based), from the recipe's kappa schedule."""
        return self.recipe.kappa_at(epoch)

    def resolve_objective(self, x: Tensor) -> Objective:
        """Choose the default objective for this model from a few examples, if the recipe
        left it open; return the objective."""
        if self.recipe.objective is None:
            resolved = self.recipe.resolve(self.model, x[:2].to(self.device))
            chosen = cast(Objective, resolved.objective)
            if self._expected_mode is not None and chosen.name != self._expected_mode:
                raise ValueError(
                    f"the resumed checkpoint was trained with mode={self._expected_mode!r}, but the default "
                    f"recipe for this model is {chosen.name!r}"
                )
            self.recipe = resolved
            logger.info("default objective: %s", chosen)
        return cast(Objective, self.recipe.objective)

    # ------------------------------------------------------------------ steps
    def _check_batch(self, batch: Any, epoch: int, step: int) -> Optional[tuple[Tensor, Tensor]]:
        """The one check of a batch on the training path: ``(x, y)`` on the device in the
        model's dtype, or ``None`` when a non-finite input batch is skipped."""
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"train_loader must yield (x, y) batches, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        check_tensor("x", x, min_ndim=1)
        check_tensor("y", y, min_ndim=1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have batch size {x.shape[0]} (the batch size of x), got shape {tuple(y.shape)}")
        bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
        if any_rank(bad > 0, self.device):  # all ranks skip (or raise) together
            what = f"input batch x ({bad} NaN/Inf entries)" if bad else "input batch x on another rank"
            self._handle_nonfinite(what, epoch, step)
            return None
        x = inference.model_input(self.model, x, self.device)
        y = as_labels(y).to(self.device)
        if y.is_floating_point() and x.is_floating_point():
            y = y.to(x.dtype)  # regression targets in the model's precision
        self._check_targets(x, y)
        return x, y

    def _check_targets(self, x: Tensor, y: Tensor) -> None:
        """The potential's own target checks (label dtype, shape and range; regression shapes)
        before the model runs on the batch, so a rejected batch changes nothing: no BatchNorm
        statistics, no generator draw, no reference set. The readout's output shape is learnt
        once, on two examples, in eval mode without gradients."""
        if self._output_template is None:
            with inference.EvalMode(self.model), torch.no_grad(), inference.explain_integer_input(x):
                output = probe_output(self.model, x)
            if not isinstance(output, Tensor) or output.ndim < 1:
                return  # the model's own checks report what is wrong with it
            self._output_template = (tuple(output.shape[1:]), output.dtype)
        shape, dtype = self._output_template
        self.potential.validate(torch.zeros((x.shape[0], *shape), dtype=dtype, device=y.device), y)

    def loss(self, x: Tensor, y: Tensor, *, epoch: Optional[int] = None) -> LyapunovLossOutput:
        """The objective on one batch (no optimiser step), with the epoch's ``kappa``. The
        batch is checked here; :meth:`fit` checks each batch once where it enters."""
        checked = self._check_batch((x, y), epoch or 0, 0)
        if checked is None:
            raise NonFiniteLossError("non-finite input batch x")
        return self._loss(*checked, epoch=epoch)

    def _loss(self, x: Tensor, y: Tensor, *, epoch: Optional[int] = None) -> LyapunovLossOutput:
        kappa = self.kappa_at(epoch if epoch is not None else max(self.epoch, 1))
        return self.resolve_objective(x).compute(self.model, x, y, kappa=kappa, generator=self.generator)

    def _handle_nonfinite(self, what: str, epoch: int, step: int) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        message = f"non-finite {what} at epoch {epoch}, step {step}; parameters were not updated"
        if self.nonfinite == "raise":
            raise NonFiniteLossError(message + " (set nonfinite='skip' to skip such steps)")
        self.skipped_steps += 1
        logger.warning("%s; skipping the step (skipped so far: %d)", message, self.skipped_steps)

    def _train_step(self, x: Tensor, y: Tensor, epoch: int, step: int) -> Optional[dict[str, float]]:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            out = self._loss(x, y, epoch=epoch)
            finite = bool(torch.isfinite(out.loss))
            if any_rank(not finite, self.device):
                self._handle_nonfinite("loss" if not finite else "loss on another rank", epoch, step)
                return None
            out.loss.backward()
        except SolverError as err:
            # A solver that met NaN/Inf or ran out of evaluations is a non-finite step.
            self._handle_nonfinite(f"solver result ({err})", epoch, step)
            return None
        average_gradients(self.model.parameters())  # no-op on a single process
        if not bool(torch.isfinite(self.recipe.clip_gradients(self.model.parameters()))):
            self._handle_nonfinite("gradient", epoch, step)
            return None
        self.optimizer.step()
        self._stepped = True
        if self.scheduler is not None and self.recipe.schedule_interval == "step":
            self.scheduler.step()
        metrics = out.metrics()
        if not self.resolve_objective(x).uses_lyapunov_condition:
            metrics = {"loss": metrics["loss"]}  # no Lyapunov condition was evaluated
        return metrics

    def reference_metrics(self) -> dict[str, float]:
        """Numbers on the fixed reference set (:class:`~lyapunov_plugin.reporting.ReferenceSet`);
        NaN, with a warning, when the model's own solver cannot integrate it."""
        try:
            return self.reference.metrics(self.model, self.potential, kappa=self.kappa_schedule.final, t_end=self.t_end)
        except SolverError as err:
            logger.warning("reference metrics not computed: %s", err)
            return {"ref_violation": math.nan, "ref_v_end": math.nan}

    def _train_epoch(self, loader: Iterable[Any], epoch: int, total: int) -> dict[str, Any]:
        self._stepped = False
        started, started_cpu = time.perf_counter(), time.process_time()
        sums: dict[str, float] = {}
        weight, skipped_before = 0, self.skipped_steps
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch
        elif self.world_size > 1 and epoch == self.epoch + 1:
            logger.warning(
                "training on %d ranks with a loader without a DistributedSampler: every rank sees the whole dataset",
                self.world_size,
            )
        bar = progress(loader, self.progress and is_main_process(), f"epoch {epoch}/{total}")
        step = -1
        for step, batch in enumerate(bar):
            checked = self._check_batch(batch, epoch, step)
            if checked is None:
                continue
            x, y = checked
            if not self._model_checked:
                # Once, on two examples, before any update: shape errors surface with a precise
                # message. Eval mode and no gradient, so no RNG draw and no buffer update.
                with inference.EvalMode(self.model), torch.no_grad(), inference.explain_integer_input(x):
                    check_model(self.model, x, source="the model's vector field")
                self._model_checked = True
            metrics = self._train_step(x, y, epoch, step)
            self.reference.remember(x, y)  # only a batch the step accepted (a rejected one raised)
            if metrics is None:
                continue
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * x.shape[0]
            weight += x.shape[0]
            if hasattr(bar, "set_postfix"):
                shown = {"loss": f"{metrics['loss']:.4f}"}
                if "violation" in metrics:
                    shown["viol"] = f"{metrics['violation']:.3f}"
                bar.set_postfix(**shown)
        if hasattr(bar, "close"):
            bar.close()
        if step < 0:
            raise ValueError(f"train_loader yielded no batches in epoch {epoch}; it must yield (x, y) batches")
        record: dict[str, Any] = {"epoch": epoch, "mode": self.mode, "kappa": self.kappa_at(epoch)}
        record.update({f"train_{k}": v / max(weight, 1) for k, v in sums.items()})
        record["skipped_steps"] = self.skipped_steps - skipped_before
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["train_seconds"] = time.perf_counter() - started
        # CPU time of this process: what the epoch cost on a CPU shared with other jobs.
        record["train_cpu_seconds"] = time.process_time() - started_cpu
        return average_metrics(record, [f"train_{k}" for k in sums], self.device, weight=weight)

    # -------------------------------------------------------------------- fit
    def fit(
        self,
        train_loader: Iterable[Any],
        epochs: int,
        val_loader: Optional[Iterable[Any]] = None,
        *,
        checkpoint_path: Optional[Union[str, Path]] = None,
        metrics_path: Optional[Union[str, Path]] = None,
    ) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete (counting epochs restored by :meth:`resume`).

        ``epochs`` is the total: a call with ``epochs`` not above the epochs already done
        warns and returns. The default cosine schedule anneals over the epochs of each call.

        Arguments:
            train_loader: iterable of ``(x, y)`` batches.
            epochs: total number of epochs.
            val_loader: evaluated after each epoch (error and loss at ``t_end``).
            checkpoint_path: written atomically after every epoch (and before the first),
                so an interrupted run (Ctrl-C included) leaves a valid checkpoint.
            metrics_path: history written as ``.csv`` or ``.json`` after every epoch.

        Returns:
            The history: one dict of metrics per epoch.
        """
        _check_loader("train_loader", train_loader)
        if val_loader is not None:
            _check_loader("val_loader", val_loader)
        epochs = check_positive_int("epochs", epochs)
        if epochs <= self.epoch:
            message = (
                f"fit(epochs={epochs}) does nothing: epochs is the total, and {self.epoch} epoch(s) are "
                f"already done; pass epochs={self.epoch + epochs} to train {epochs} more"
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            logger.warning("%s", message)
            return self.history
        checkpoint = _check_path("checkpoint_path", checkpoint_path) if checkpoint_path is not None else None
        if checkpoint is not None and checkpoint.is_dir():
            raise ValueError(f"checkpoint_path must be a file name, got the directory {str(checkpoint)!r}")
        metrics_file = _check_path("metrics_path", metrics_path) if metrics_path is not None else None
        if metrics_file is not None and metrics_file.suffix not in (".csv", ".json"):
            raise ValueError(f"metrics_path must end in .csv or .json, got {str(metrics_file)!r}")
        if checkpoint is not None and checkpoint.exists() and checkpoint.resolve() not in self._own_checkpoints:
            message = (
                f"checkpoint_path {str(checkpoint)!r} holds a checkpoint this trainer did not write or resume from; "
                f"it will be overwritten after epoch {self.epoch + 1} (call resume({str(checkpoint)!r}) first to "
                "continue it, or pass another path)"
            )
            warnings.warn(message, UserWarning, stacklevel=2)
            logger.warning("%s", message)
        if checkpoint is not None and any_rank(not checkpoint.exists(), self.device):
            self.save(checkpoint)
        modes = {module: module.training for module in self.model.modules()}
        started = epoch = self.epoch
        self._stepped = False
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                lrs_before = [group["lr"] for group in self.optimizer.param_groups]
                self.recipe.set_learning_rate(self.optimizer, self.base_lrs, epoch, epochs)
                try:
                    record = self._train_epoch(train_loader, epoch, epochs)
                except BaseException:
                    if not self._stepped:  # nothing was updated: leave the optimizer as it was
                        for group, lr in zip(self.optimizer.param_groups, lrs_before, strict=False):
                            group["lr"] = lr
                    raise
                if self.scheduler is not None and self.recipe.schedule_interval == "epoch":
                    self.scheduler.step()
                # The epoch is complete: count it before anything that may raise (a bad
                # validation batch), so the trainer's state always matches its parameters.
                self.history.append(record)
                self.epoch = epoch
                reference = self.reference_metrics()
                record.update(average_metrics(reference, reference, self.device))
                if val_loader is not None:
                    record.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
                line = summary_line({**record, "epochs": epochs})
                logger.info("%s", line)
                if self.progress and is_main_process():
                    print(line, file=sys.stderr, flush=True)
                if checkpoint is not None:
                    self.save(checkpoint)
                if metrics_file is not None and is_main_process():
                    self.write_metrics(metrics_file)
        except KeyboardInterrupt:
            where = f"; {checkpoint} holds the state after epoch {self.epoch}" if checkpoint is not None else ""
            logger.warning("training interrupted during epoch %d%s", epoch, where)
            raise
        except Exception:
            if self.epoch == started and not self._stepped:
                # Nothing of this call was trained: the modules' own train/eval flags come back.
                for module, training in modes.items():
                    module.training = training
            raise
        return self.history

    def write_metrics(self, path: Union[str, Path]) -> None:
        """Write :attr:`history` to ``path`` (``.csv`` or ``.json``), atomically."""
        write_metrics(path, self.history)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly: model, optimiser, scheduler,
        RNG states, epoch, history, the reference set, and the library version and classes
        that :meth:`resume` checks."""
        from . import __version__

        return {
            "format": _CHECKPOINT_FORMAT,
            "library_version": __version__,
            "epoch": self.epoch,
            "mode": self.mode,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_class": type(self.optimizer).__name__,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scheduler_class": type(self.scheduler).__name__ if self.scheduler is not None else None,
            "base_lrs": list(self.base_lrs),
            "history": self.history,
            "skipped_steps": self.skipped_steps,
            "rng": capture_rng(self.generator),
            "reference": self.reference.state(),
        }

    def save(self, path: Union[str, Path]) -> None:
        """Write a checkpoint atomically (:mod:`lyapunov_plugin.checkpoint`). On several ranks
        every rank must call it: rank 0 writes every rank's generator state."""
        target = _check_path("path", path)
        if target.is_dir():
            raise ValueError(f"path must be a checkpoint file name, got the directory {str(target)!r}")
        state = self.state_dict()
        ranks = gather_generator_states(self.generator)
        if ranks is not None:
            state["rng"]["generator_ranks"] = ranks
        if is_main_process():
            atomic_write(target, lambda f: torch.save(state, f))
        barrier()
        self._own_checkpoints.add(target.resolve())

    def resume(self, path: Union[str, Path]) -> int:
        """Restore a checkpoint written by :meth:`save`; returns the completed epoch.

        The file is loaded without running code (``weights_only``) and everything is checked
        before anything is restored, so a corrupt, foreign or incompatible checkpoint raises
        :class:`~lyapunov_plugin.checkpoint.CheckpointError` (a ``ValueError``) and leaves the
        trainer as it was.
        """
        _check_path("path", path)
        state = load_checkpoint(path)
        check_compatible(state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler, mode=self.mode)
        from . import __version__

        if state["library_version"] != __version__:
            logger.warning(
                "checkpoint written by lyapunov_plugin %s, resumed with %s", state["library_version"], __version__
            )
        _check_counters(state)
        _check_optimizer_state(state["optimizer"], self.optimizer)
        before = copy.deepcopy(self.state_dict())
        expected_mode = self._expected_mode
        try:
            self._restore(state)
        except (RuntimeError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
            # Something the checks above cannot see (a generator state of the wrong size, say):
            # put everything back, so the trainer is as it was.
            self._restore(before)
            self._expected_mode = expected_mode
            raise CheckpointError(
                f"checkpoint {str(path)!r} could not be restored ({err}); the trainer is unchanged"
            ) from err
        self._own_checkpoints.add(Path(path).resolve())
        return self.epoch

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        if self.mode is None:
            self._expected_mode = state["mode"]
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.skipped_steps = int(state["skipped_steps"])
        self.reference.restore(state.get("reference"), self.device)
        restore_rng(state["rng"], self.generator, rank=self.rank, world_size=self.world_size)

    # --------------------------------------------------------------- inference
    def predict(self, x: Tensor, *, t_end: Optional[float] = None, solver: Optional[Solver] = None) -> Tensor:
        """Readout ``psi(eta(t_end))`` (paper Eq. 3); ``t_end < 1`` is early termination.

        Arguments:
            x: inputs.
            t_end: where to stop (default the model's horizon).
            solver: integrate with this solver instead of the model's own, e.g.
                ``FixedStepSolver(method="rk4", steps=10)``.
        """
        check_tensor("x", x, min_ndim=1)
        check_finite("x", x)
        if solver is not None and not callable(solver):
            raise TypeError(f"solver must be callable as solver(func, y0, ts) or None, got {type(solver).__name__}")
        t_end = check_positive("t_end", t_end) if t_end is not None else self.t_end
        return inference.predict(
            self.model, inference.model_input(self.model, x, self.device), t_end=t_end, solver=solver
        )

    def anytime_predict(self, x: Tensor, **settings: Any) -> AnytimePrediction:
        """:func:`~lyapunov_plugin.anytime_predict` on the trained model: each example is
        integrated only until the Lyapunov stopping rule (Eq. 10) fires; ``settings`` are that
        function's (``level``, ``kappa``, ``patience``, ``solver``, tolerances, ...). The
        potential defaults to the trainer's; with ``MSEPotential`` (the regression rule, whose
        bound needs the rate the model was trained for) ``kappa`` defaults to the trainer's
        final training rate."""
        check_tensor("x", x, min_ndim=1)
        settings.setdefault("potential", self.potential)
        if isinstance(settings["potential"], MSEPotential):
            settings.setdefault("kappa", self.kappa_schedule.final)
        return anytime_predict(self.model, inference.model_input(self.model, x, self.device), **settings)

    def choose_level(self, x_val: Tensor, **settings: Any) -> LevelChoice:
        """:func:`~lyapunov_plugin.anytime.choose_level` on the trained model, with
        :meth:`anytime_predict`'s defaults: the trainer's potential and, with ``MSEPotential``,
        the final training ``kappa``. The level it returns is then the one
        :meth:`anytime_predict` applies (the free function's default ``kappa = 1`` would make a
        regression level 10x too loose for a model trained at the default ``kappa = 10``)."""
        check_tensor("x_val", x_val, min_ndim=1)
        settings.setdefault("potential", self.potential)
        if isinstance(settings["potential"], MSEPotential):
            settings.setdefault("kappa", self.kappa_schedule.final)
        return choose_level(self.model, inference.model_input(self.model, x_val, self.device), **settings)

    def evaluate(
        self, loader: Any, *, t_end: Optional[float] = None, solver: Optional[Solver] = None
    ) -> dict[str, float]:
        """Mean potential (the supervised loss) of :meth:`predict` on a loader, and the error
        rate for class labels."""
        if solver is not None and not callable(solver):
            raise TypeError(f"solver must be callable as solver(func, y0, ts) or None, got {type(solver).__name__}")
        t_end = check_positive("t_end", t_end) if t_end is not None else self.t_end
        return inference.evaluate(
            self.model, loader, potential=self.potential, t_end=t_end, solver=solver, device=self.device
        )

    @property
    def _dtype(self) -> Optional[torch.dtype]:
        """The model's floating dtype (time grids are built in it)."""
        return floating_dtype_of(self.model)

    def loss_error_curve(
        self, loader: Any, *, ts: Optional[Tensor] = None, solver: Optional[Solver] = None
    ) -> InferenceCurve:
        """Paper Fig. 3: loss and error of early-terminated predictions on correctly classified points."""
        ts = _check_times("ts", ts) if ts is not None else torch.linspace(0.0, self.t_end, 11, dtype=self._dtype)
        with inference.EvalMode(self.model):
            return loss_error_curve(self.model, loader, ts.to(self.device), potential=self.potential, solver=solver)

    def nfe(self, x: Tensor, *, solver: Optional[Solver] = None) -> int:
        """Vector-field evaluations to integrate ``x`` to ``t_end`` (model's own solver by default)."""
        with inference.EvalMode(self.model):
            return nfe_to_end(self.model, x, t_end=self.t_end, solver=solver)

    def certificate(
        self,
        loader: Any,
        *,
        num_samples: int = 256,
        state_sampler: Optional[StateSampler] = None,
        ts: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """Certificate statistics: fraction of sampled states satisfying Eq. (10), and the
        decay of ``V`` along trajectories versus ``kappa`` (Theorem 2). States are drawn with
        ``state_sampler`` (default: the Monte Carlo objective's, else
        :class:`~lyapunov_plugin.RolloutSampler` around the inference trajectories)."""
        sampler = state_sampler or self.state_sampler or RolloutSampler()
        time_sampler = getattr(self.objective, "time_sampler", None) if state_sampler is None else None
        ts = _check_times("ts", ts) if ts is not None else torch.linspace(0.0, self.t_end, 11, dtype=self._dtype)
        kappa = self.kappa_schedule.final
        with inference.EvalMode(self.model):
            rate = lyapunov_condition_rate(
                self.model,
                loader,
                potential=self.potential,
                kappa=kappa,
                state_sampler=sampler,
                time_sampler=time_sampler,
                num_samples=num_samples,
                trajectory_ts=torch.linspace(0.0, self.t_end, 5, dtype=self._dtype, device=self.device),
                generator=self.generator,
            )
            decay: DecayStatistics = decay_statistics(
                self.model, loader, potential=self.potential, kappa=kappa, ts=ts.to(self.device)
            )
        return {"condition_rate": rate, "kappa": kappa, **decay.__dict__}


def _check_counters(state: dict[str, Any]) -> None:
    """The checkpoint's plain fields, before anything is restored (:meth:`LyapunovTrainer.resume`)."""
    for key in ("epoch", "skipped_steps"):
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"checkpoint's {key} must be an int >= 0, got {value!r}")
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(record, dict) for record in history):
        raise CheckpointError(f"checkpoint's history must be a list of dicts, got {type(history).__name__}")
    lrs = state["base_lrs"]
    if not isinstance(lrs, (list, tuple)) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in lrs
    ):
        raise CheckpointError(f"checkpoint's base_lrs must be finite non-negative numbers, got {lrs!r}")
    if not isinstance(state["rng"], dict):
        raise CheckpointError(f"checkpoint's rng must be a dict, got {type(state['rng']).__name__}")


#: Per-parameter optimiser state of torch's built-in optimisers, shaped like the parameter.
_PARAMETER_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "acc_delta", "sum")


def _check_optimizer_state(saved: dict[str, Any], optimizer: torch.optim.Optimizer) -> None:
    """Built-in optimiser buffers (Adam's moments, SGD's momentum, ...) must have their
    parameter's shape: ``load_state_dict`` does not check, and the next step would fail."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entry in (saved.get("state") or {}).items():
        if not isinstance(entry, dict) or not isinstance(index, int) or not 0 <= index < len(params):
            raise CheckpointError(f"checkpoint's optimiser state has an entry for unknown parameter {index!r}")
        for key in _PARAMETER_SHAPED:
            value = entry.get(key)
            if isinstance(value, Tensor) and tuple(value.shape) != tuple(params[index].shape):
                raise CheckpointError(
                    f"checkpoint's optimiser state {key!r} of parameter {index} has shape {tuple(value.shape)}, "
                    f"the parameter {tuple(params[index].shape)}"
                )


def _check_times(name: str, ts: Any) -> Tensor:
    """A user's time grid: a 1-D floating tensor (the diagnostics check its order)."""
    return check_tensor(name, ts, min_ndim=1, floating=True)
