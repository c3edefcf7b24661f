"""``LyapunovTrainer``: LyaNet training (Algorithms 1 and 2) for an existing Neural ODE.

::

    trainer = LyapunovTrainer(model, kappa=1.0)     # torchdyn / torchdiffeq / protocol model
    history = trainer.fit(train_loader, epochs=10)   # progress bar, metrics
    logits = trainer.predict(x_test)                 # readout at t = 1
    early = trainer.predict(x_test, t_end=0.25)      # early termination

The trainer is a convenience around the pure loss functions in
:mod:`lyapunov_plugin.losses`; anything it does can be done from a custom loop.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import torch
from torch import Tensor, nn

from ._typing import Solver
from ._validation import (
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
)
from .diagnostics import (
    DecayStatistics,
    InferenceCurve,
    decay_statistics,
    iter_batches,
    loss_error_curve,
    lyapunov_condition_rate,
    nfe_to_end,
    states_along,
)
from .dispatch import as_lyapunov_model
from .losses import (
    CounterexampleSearch,
    LyapunovLossOutput,
    discrete_path_lyapunov_loss,
    monte_carlo_lyapunov_loss,
    path_lyapunov_loss,
)
from .model import LyapunovModel, check_model, integrate
from .potentials import CrossEntropyPotential, Potential
from .samplers import (
    HypercubeSampler,
    StateSampler,
    TimeSampler,
    TrajectorySampler,
    UniformTimeSampler,
    appendix_b_half_width,
)
from .schedules import KappaSchedule, constant_kappa
from .solvers import FixedStepSolver

__all__ = ["LyapunovTrainer", "NonFiniteLossError", "MODES"]

logger = logging.getLogger("lyapunov_plugin")

#: Training modes: Algorithm 1 (no solver), Algorithm 2 (along rollouts), and the
#: standard baseline (backpropagation or adjoint through the model's own solver).
MODES = ("monte_carlo", "path_integral", "standard")
_NONFINITE = ("raise", "skip")
_OPTIMIZERS = ("adam", "adamw", "sgd", "nero")
_PATH_LOSSES = ("discrete", "continuous")
_SCHEDULER_INTERVALS = ("epoch", "step")
_CHECKPOINT_FORMAT = "lyapunov_plugin.checkpoint/1"
#: Default rate of Eq. (10). On scikit-learn digits (docs/real_data.md) kappa = 10 gave
#: clean-error parity and the largest robustness gain of the values tried (1, 5, 10, 20).
DEFAULT_KAPPA = 10.0
#: Default covering factor of the region sampler: the hypercube is grown per batch to
#: twice the extent of the batch's rollouts, so Eq. (10) is enforced wherever inference goes.
DEFAULT_COVER = 2.0
# Above this many state dimensions uniform region samples say little about the states
# inference visits (Section 4); the default then samples around rollouts instead.
_REGION_MAX_DIM = 64


class NonFiniteLossError(FloatingPointError):
    """A training step produced a NaN/Inf Lyapunov loss (Eq. 12-17) or gradient; the
    parameters were not updated."""


OptimizerSpec = Union[str, torch.optim.Optimizer, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]]


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same folder and rename it into place, so a
    crash or Ctrl-C leaves either the old file or the new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    done = False
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        done = True
    finally:
        if not done and os.path.exists(tmp):
            os.unlink(tmp)


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


class LyapunovTrainer:
    """Train an existing Neural ODE with the Lyapunov loss (paper Algorithms 1-2).

    Arguments:
        model: a torchdyn ``NeuralODE`` (alone or in an ``nn.Sequential``), a torchdiffeq
            vector field, or any :class:`~lyapunov_plugin.LyapunovModel`; the adapter is
            chosen automatically.
        mode: ``"monte_carlo"`` (Algorithm 1), ``"path_integral"`` (Algorithm 2) or
            ``"standard"`` (the supervised loss at ``t_end`` through the solver, the
            baseline). Default: Monte Carlo when the vector field sees the input, path
            integral otherwise (region sampling is ill-posed there, see
            ``lyapunov_plugin.adapters.torchdyn``).
        potential: ``V_y`` (default :class:`~lyapunov_plugin.CrossEntropyPotential`).
        kappa: exponential rate of Eq. (10), a float or a
            :class:`~lyapunov_plugin.schedules.KappaSchedule`.
        state_sampler: ``mu_H``. Default: a hypercube of Appendix B's half-width that
            grows to cover the batch's rollouts (see :meth:`_default_state_sampler`);
            states around rollouts above 64 state dimensions.
        time_sampler: ``mu_[0,1]`` (default uniform on ``[0, t_end]``).
        num_samples: ``Gamma``, Monte Carlo samples per example.
        counterexamples: optional hard-state mining for Monte Carlo training
            (:class:`~lyapunov_plugin.losses.CounterexampleSearch`).
        velocity_penalty: weight of the ``mean |f|^2`` term of Monte Carlo training
            (see :func:`~lyapunov_plugin.monte_carlo_lyapunov_loss`).
        detach_v: stop the gradient through ``kappa V`` (see :mod:`lyapunov_plugin.losses`).
        path_steps: grid intervals for path-integral training.
        path_loss: ``"discrete"`` (Eq. 16-17, with per-step rate
            ``1 - exp(-kappa * dt)`` so ``kappa`` keeps its continuous meaning) or
            ``"continuous"`` (Eq. 12 at the trajectory states).
        rollout_solver: solver for the cheap, gradient-free rollouts that trajectory
            and covering samplers need (default RK4, 4 steps).
        rollout_points: grid points of those rollouts.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"nero"`` (paper
            Appendix C; needs ``pytorch-optimizer``), an optimizer instance over the
            model's parameters, or a factory ``params -> optimizer``.
        lr, weight_decay: settings for a named optimizer.
        scheduler: an LR scheduler instance, or a factory ``optimizer -> scheduler``.
        scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        grad_clip: clip the global gradient norm to this value.
        nonfinite: ``"raise"`` (default) a :class:`NonFiniteLossError`, or ``"skip"`` the
            step and count it; parameters are never updated with a NaN/Inf.
        device: where to train; default the model's parameter device.
        seed: seeds the trainer's own sampling generator (the global RNG, used by data
            loaders and dropout, stays the caller's).
        progress: show a progress bar (tqdm) with loss and violation fraction.
        t_end: inference horizon (1 in the paper).
    """

    def __init__(
        self,
        model: Any,
        *,
        mode: Optional[str] = None,
        potential: Optional[Potential] = None,
        kappa: Union[float, KappaSchedule] = DEFAULT_KAPPA,
        state_sampler: Optional[StateSampler] = None,
        time_sampler: Optional[TimeSampler] = None,
        num_samples: int = 32,
        counterexamples: Optional[CounterexampleSearch] = None,
        velocity_penalty: float = 0.0,
        detach_v: bool = False,
        path_steps: int = 10,
        path_loss: str = "discrete",
        rollout_solver: Optional[Solver] = None,
        rollout_points: int = 5,
        optimizer: OptimizerSpec = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        scheduler: Any = None,
        scheduler_interval: str = "epoch",
        grad_clip: Optional[float] = None,
        nonfinite: str = "raise",
        device: Optional[Union[str, torch.device]] = None,
        seed: Optional[int] = None,
        progress: bool = True,
        t_end: float = 1.0,
    ) -> None:
        self.user_model = model
        self.model: LyapunovModel = as_lyapunov_model(model)
        if not isinstance(self.model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (the trainer optimises its parameters), got {type(self.model).__name__}"
            )
        conditioned = bool(getattr(self.model, "conditioned_on_input", True))
        self.mode = check_choice("mode", mode, MODES) if mode is not None else (
            "monte_carlo" if conditioned else "path_integral"
        )
        if self.mode == "monte_carlo" and not conditioned and state_sampler is None:
            state_sampler = TrajectorySampler(noise_std=0.0)
            logger.info("vector field does not see the input: sampling states around rollouts (TrajectorySampler)")
        if potential is not None and not isinstance(potential, Potential):
            raise TypeError(f"potential must be a lyapunov_plugin.Potential, got {type(potential).__name__}")
        self.potential = potential if potential is not None else CrossEntropyPotential()
        self.kappa_schedule = kappa if isinstance(kappa, KappaSchedule) else constant_kappa(check_positive("kappa", kappa))
        if state_sampler is not None and not isinstance(state_sampler, StateSampler):
            raise TypeError(f"state_sampler must be a StateSampler, got {type(state_sampler).__name__}")
        if time_sampler is not None and not isinstance(time_sampler, TimeSampler):
            raise TypeError(f"time_sampler must be a TimeSampler, got {type(time_sampler).__name__}")
        self.t_end = check_positive("t_end", t_end)
        self.state_sampler = state_sampler
        self.time_sampler = time_sampler if time_sampler is not None else UniformTimeSampler(t_end=self.t_end)
        self.num_samples = check_positive_int("num_samples", num_samples)
        if counterexamples is not None and not isinstance(counterexamples, CounterexampleSearch):
            raise TypeError(f"counterexamples must be a CounterexampleSearch, got {type(counterexamples).__name__}")
        self.counterexamples = counterexamples
        self.velocity_penalty = check_non_negative("velocity_penalty", velocity_penalty)
        self.detach_v = bool(detach_v)
        self.path_steps = check_positive_int("path_steps", path_steps)
        self.path_loss = check_choice("path_loss", path_loss, _PATH_LOSSES)
        if rollout_solver is not None and not callable(rollout_solver):
            raise TypeError(f"rollout_solver must be callable as solver(func, y0, ts), got {type(rollout_solver).__name__}")
        self.rollout_solver = rollout_solver if rollout_solver is not None else FixedStepSolver(method="rk4", steps=4)
        self.rollout_points = check_positive_int("rollout_points", rollout_points)
        if self.rollout_points < 2:
            raise ValueError(f"rollout_points must be >= 2, got {rollout_points}")
        self.grad_clip = check_positive("grad_clip", grad_clip) if grad_clip is not None else None
        self.nonfinite = check_choice("nonfinite", nonfinite, _NONFINITE)
        self.scheduler_interval = check_choice("scheduler_interval", scheduler_interval, _SCHEDULER_INTERVALS)
        self.progress = bool(progress)

        self.device = torch.device(device) if device is not None else self._parameter_device()
        self.model.to(self.device)
        self.optimizer = self._build_optimizer(optimizer, check_positive("lr", lr), weight_decay)
        self.scheduler = self._build_scheduler(scheduler)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,))))
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._model_checked = False

    # ----------------------------------------------------------------- set-up
    def _parameter_device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _build_optimizer(self, spec: OptimizerSpec, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("model has no trainable parameters")
        if isinstance(spec, torch.optim.Optimizer):
            owned = {id(p) for p in self.model.parameters()}
            foreign = [p for group in spec.param_groups for p in group["params"] if id(p) not in owned]
            if foreign:
                raise ValueError(f"optimizer holds {len(foreign)} parameter(s) that are not the model's")
            return spec
        if isinstance(spec, str):
            name = check_choice("optimizer", spec, _OPTIMIZERS)
            weight_decay = float(weight_decay)
            if name == "adam":
                return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
            if name == "adamw":
                return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            if name == "sgd":
                return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
            try:
                from pytorch_optimizer import Nero
            except ImportError as err:
                raise ImportError("optimizer='nero' needs pytorch-optimizer: pip install pytorch-optimizer") from err
            return Nero(params, lr=lr)
        if callable(spec):
            built = spec(params)
            if not isinstance(built, torch.optim.Optimizer):
                raise TypeError(f"optimizer factory must return a torch.optim.Optimizer, got {type(built).__name__}")
            return built
        raise TypeError(
            f"optimizer must be one of {list(_OPTIMIZERS)}, a torch.optim.Optimizer or a factory, got {type(spec).__name__}"
        )

    def _build_scheduler(self, spec: Any) -> Any:
        if spec is None:
            return None
        if hasattr(spec, "step") and hasattr(spec, "state_dict"):
            if getattr(spec, "optimizer", self.optimizer) is not self.optimizer:
                raise ValueError("scheduler must be bound to the trainer's optimizer (pass a factory instead)")
            return spec
        if callable(spec):
            return spec(self.optimizer)
        raise TypeError(f"scheduler must be an LR scheduler or a factory optimizer -> scheduler, got {type(spec).__name__}")

    def kappa_at(self, epoch: int) -> float:
        """The rate used during ``epoch`` (1-based), from the kappa schedule."""
        return float(self.kappa_schedule(epoch))

    def _default_state_sampler(self, eta0: Tensor) -> StateSampler:
        """The default ``mu_H`` (the recipe of docs/real_data.md).

        Up to 64 state dimensions: a hypercube centred at the origin whose half-width is
        Appendix B's ``s(kappa, m)`` for an identity readout (1 otherwise), grown per batch
        to cover twice the extent of the batch's cheap rollouts (``cover``), because
        Appendix B requires the region to contain the states inference visits and trained
        dynamics overshoot ``s``. Larger states: samples around rollouts.
        """
        with torch.no_grad():
            out = self.model.readout(eta0)
        state_dim = int(eta0[0].numel())
        if state_dim > _REGION_MAX_DIM:
            return TrajectorySampler(noise_std=0.1)
        identity = out is eta0 and eta0.ndim == 2 and eta0.shape[1] >= 2
        half_width = appendix_b_half_width(self.kappa_schedule.final, eta0.shape[1]) if identity else 1.0
        return HypercubeSampler(half_width=half_width, cover=DEFAULT_COVER)

    def _default_sampler_for(self, x: Tensor) -> StateSampler:
        """:meth:`_default_state_sampler` for the states of ``x``; the state shape is probed
        in eval mode without gradient, so no buffer (BatchNorm statistics, spectral-norm
        iterates) changes."""
        with self._eval_mode(), torch.no_grad():
            _, eta0 = self.model.encode(x[:1].to(self.device))
            return self._default_state_sampler(eta0)

    # ------------------------------------------------------------------ steps
    def _check_batch(self, batch: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"train_loader must yield (x, y) batches, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        check_tensor("x", x, min_ndim=1)
        check_tensor("y", y, min_ndim=1)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"y must have batch size {x.shape[0]} (the batch size of x), got shape {tuple(y.shape)}")
        check_finite("x", x)
        return x.to(self.device), y.to(self.device)

    def _rollout(self, x: Tensor) -> Tensor:
        """Cheap gradient-free rollouts for samplers, in eval mode so that they leave
        BatchNorm statistics and spectral-norm iterates alone."""
        ts = torch.linspace(0.0, self.t_end, self.rollout_points, device=self.device)
        with self._eval_mode(), torch.no_grad():
            return integrate(self.model, x, ts, solver=self.rollout_solver)

    def loss(self, x: Tensor, y: Tensor, *, epoch: Optional[int] = None) -> LyapunovLossOutput:
        """The training objective of the configured mode on one batch (no optimiser step)."""
        kappa = self.kappa_at(epoch if epoch is not None else max(self.epoch, 1))
        if self.mode == "monte_carlo":
            trajectory = None
            if self.state_sampler is None:
                self.state_sampler = self._default_sampler_for(x)
                logger.info("default state sampler: %s", self.state_sampler)
            if self.state_sampler.requires_trajectory:
                trajectory = self._rollout(x)
            return monte_carlo_lyapunov_loss(
                self.model, x, y, potential=self.potential, kappa=kappa, state_sampler=self.state_sampler,
                time_sampler=self.time_sampler, num_samples=self.num_samples, detach_v=self.detach_v,
                trajectory=trajectory, generator=self.generator, counterexamples=self.counterexamples,
                velocity_penalty=self.velocity_penalty,
            )
        ts = torch.linspace(0.0, self.t_end, self.path_steps + 1, device=self.device)
        if self.mode == "path_integral":
            if self.path_loss == "continuous":
                return path_lyapunov_loss(
                    self.model, x, y, ts, potential=self.potential, kappa=kappa, detach_v=self.detach_v
                )
            trajectory = self.model.trajectory(x, ts)
            step_rate = -math.expm1(-kappa * self.t_end / self.path_steps)
            return discrete_path_lyapunov_loss(
                trajectory, y, potential=self.potential, kappa=step_rate, readout=self.model.readout,
                detach_v=self.detach_v,
            )
        ts = torch.tensor([0.0, self.t_end], device=self.device)
        final = self.model.trajectory(x, ts)[-1]
        out = self.model.readout(final)
        self.potential.validate(out, y)
        values = self.potential.value(out, y)
        zeros = torch.zeros_like(values.detach())
        return LyapunovLossOutput(values.mean(), values, values.detach(), zeros)

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
        out = self.loss(x, y, epoch=epoch)
        if not bool(torch.isfinite(out.loss)):
            self._handle_nonfinite("loss", epoch, step)
            return None
        out.loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip is not None else math.inf)
        if not bool(torch.isfinite(norm)):
            self._handle_nonfinite("gradient", epoch, step)
            return None
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        metrics = out.metrics()
        if self.mode == "standard":  # no Lyapunov condition is evaluated: only the loss is meaningful
            metrics = {"loss": metrics["loss"]}
        return metrics

    def _run_epoch(self, loader: Iterable[Any], epoch: int, total: int) -> dict[str, Any]:
        started = time.perf_counter()
        sums: dict[str, float] = {}
        weight = 0
        skipped_before = self.skipped_steps
        bar = _progress(loader, self.progress, f"epoch {epoch}/{total} [{self.mode}]")
        for step, batch in enumerate(bar):
            x, y = self._check_batch(batch)
            if not self._model_checked:
                # Once, on two examples, before any update: shape errors surface with a precise
                # message. Eval mode and no gradient, so no RNG draw and no buffer update.
                with self._eval_mode(), torch.no_grad():
                    check_model(self.model, x, source="the model's vector field")
                self._model_checked = True
            metrics = self._train_step(x, y, epoch, step)
            if metrics is None:
                continue
            n = x.shape[0]
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * n
            weight += n
            if hasattr(bar, "set_postfix"):
                shown = {"loss": f"{metrics['loss']:.4f}"}
                if "violation" in metrics:
                    shown["viol"] = f"{metrics['violation']:.3f}"
                bar.set_postfix(**shown)
        record: dict[str, Any] = {"epoch": epoch, "mode": self.mode, "kappa": self.kappa_at(epoch)}
        record.update({f"train_{k}": v / max(weight, 1) for k, v in sums.items()})
        record["skipped_steps"] = self.skipped_steps - skipped_before
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["train_seconds"] = time.perf_counter() - started
        return record

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
        epochs = check_positive_int("epochs", epochs)
        checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
        metrics_file = Path(metrics_path) if metrics_path is not None else None
        if metrics_file is not None and metrics_file.suffix not in (".csv", ".json"):
            raise ValueError(f"metrics_path must end in .csv or .json, got {str(metrics_file)!r}")
        if checkpoint is not None and not checkpoint.exists():
            self.save(checkpoint)
        epoch = self.epoch
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                record = self._run_epoch(train_loader, epoch, epochs)
                if val_loader is not None:
                    record.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                self.history.append(record)
                self.epoch = epoch
                logger.info("%s", {k: (round(v, 5) if isinstance(v, float) else v) for k, v in record.items()})
                if checkpoint is not None:
                    self.save(checkpoint)
                if metrics_file is not None:
                    self.write_metrics(metrics_file)
        except KeyboardInterrupt:
            where = f"; {checkpoint} holds the state after epoch {self.epoch}" if checkpoint is not None else ""
            logger.warning("training interrupted during epoch %d%s", epoch, where)
            raise
        return self.history

    def write_metrics(self, path: Union[str, Path]) -> None:
        """Write :attr:`history` to ``path`` (``.csv`` or ``.json``), atomically."""
        path = Path(path)
        if path.suffix == ".json":
            _atomic_write(path, lambda f: f.write(json.dumps(self.history, indent=2)), mode="w")
            return
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)

        def write(handle: Any) -> None:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)

        _atomic_write(path, write, mode="w")

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly: model, optimiser, scheduler,
        RNG states (global CPU/CUDA, Python, the trainer's generator), epoch, history."""
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "generator": self.generator.get_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": _CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "mode": self.mode,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "history": self.history,
            "skipped_steps": self.skipped_steps,
            "rng": rng,
        }

    def save(self, path: Union[str, Path]) -> None:
        """Write a checkpoint atomically (temporary file + rename)."""
        state = self.state_dict()
        _atomic_write(Path(path), lambda f: torch.save(state, f))

    def resume(self, path: Union[str, Path]) -> int:
        """Restore a checkpoint written by :meth:`save`; returns the completed epoch.

        Everything is checked before anything is loaded, so an incompatible checkpoint
        raises ``ValueError`` and leaves the trainer as it was.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{str(path)!r} is not a lyapunov_plugin checkpoint (format {_CHECKPOINT_FORMAT})")
        if state["mode"] != self.mode:
            raise ValueError(f"checkpoint was trained with mode={state['mode']!r}, this trainer uses {self.mode!r}")
        current = self.model.state_dict()
        saved = state["model"]
        missing, unexpected = sorted(set(current) - set(saved)), sorted(set(saved) - set(current))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
        wrong = [k for k in current if tuple(current[k].shape) != tuple(saved[k].shape)]
        if wrong:
            raise ValueError(f"checkpoint shapes differ from the model for {wrong}")
        if (state["scheduler"] is None) != (self.scheduler is None):
            raise ValueError("checkpoint and trainer disagree on whether an LR scheduler is used")
        self.model.load_state_dict(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.skipped_steps = int(state["skipped_steps"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return self.epoch

    # --------------------------------------------------------------- inference
    def predict(
        self,
        x: Tensor,
        *,
        t_end: Optional[float] = None,
        solver: Optional[Solver] = None,
    ) -> Tensor:
        """Readout ``psi(eta(t_end))`` (paper Eq. 3); ``t_end < 1`` is early termination.

        Arguments:
            x: inputs.
            t_end: where to stop (default the trainer's horizon).
            solver: integrate with this solver instead of the model's own, e.g.
                ``FixedStepSolver(method="rk4", steps=10)``.
        """
        check_tensor("x", x, min_ndim=1)
        check_finite("x", x)
        t_end = check_positive("t_end", t_end) if t_end is not None else self.t_end
        with self._eval_mode(), torch.no_grad():
            ts = torch.tensor([0.0, t_end], device=self.device)
            final = states_along(self.model, x.to(self.device), ts, solver=solver)[-1]
            return self.model.readout(final)

    def evaluate(
        self, loader: Any, *, t_end: Optional[float] = None, solver: Optional[Solver] = None
    ) -> dict[str, float]:
        """Error rate and mean potential (the supervised loss) of :meth:`predict` on a loader."""
        errors, loss, count = 0.0, 0.0, 0
        for x, y in iter_batches(loader):
            y = y.to(self.device)
            out = self.predict(x, t_end=t_end, solver=solver)
            errors += float((out.argmax(-1) != y).sum())
            loss += float(self.potential.value(out, y).sum())
            count += int(y.shape[0])
        return {"error": errors / max(count, 1), "loss": loss / max(count, 1)}

    def _eval_mode(self) -> "_EvalMode":
        return _EvalMode(self.model)

    def loss_error_curve(
        self, loader: Any, *, ts: Optional[Tensor] = None, solver: Optional[Solver] = None
    ) -> InferenceCurve:
        """Paper Fig. 3: loss and error of early-terminated predictions on correctly classified points."""
        ts = ts if ts is not None else torch.linspace(0.0, self.t_end, 11)
        with self._eval_mode():
            return loss_error_curve(self.model, loader, ts.to(self.device), potential=self.potential, solver=solver)

    def nfe(self, x: Tensor, *, solver: Optional[Solver] = None) -> int:
        """Vector-field evaluations to integrate ``x`` to ``t_end`` (model's own solver by default)."""
        with self._eval_mode():
            return nfe_to_end(self.model, x, t_end=self.t_end, solver=solver)

    def certificate(
        self,
        loader: Any,
        *,
        num_samples: int = 256,
        state_sampler: Optional[StateSampler] = None,
        ts: Optional[Tensor] = None,
    ) -> dict[str, Any]:
        """Certificate statistics: fraction of sampled states satisfying Eq. (10), and
        the decay of ``V`` along trajectories versus ``kappa`` (Theorem 2)."""
        sampler = state_sampler or self.state_sampler
        ts = ts if ts is not None else torch.linspace(0.0, self.t_end, 11)
        kappa = self.kappa_schedule.final
        with self._eval_mode():
            if sampler is None:
                x0, _ = next(iter(iter_batches(loader)))
                sampler = self._default_sampler_for(x0)
            rate = lyapunov_condition_rate(
                self.model, loader, potential=self.potential, kappa=kappa, state_sampler=sampler,
                time_sampler=self.time_sampler, num_samples=num_samples,
                trajectory_ts=torch.linspace(0.0, self.t_end, self.rollout_points, device=self.device),
                generator=self.generator,
            )
            decay: DecayStatistics = decay_statistics(
                self.model, loader, potential=self.potential, kappa=kappa, ts=ts.to(self.device)
            )
        return {"condition_rate": rate, "kappa": kappa, **decay.__dict__}


class _EvalMode:
    """Context manager: model in eval mode, restored afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: Any) -> None:
        self.model.train(self.was_training)
