"""``LyapunovTrainer``: LyaNet training (Algorithms 1 and 2) for an existing Neural ODE.

::

    trainer = LyapunovTrainer(model)                 # torchdyn / torchdiffeq / protocol model
    history = trainer.fit(train_loader, epochs=10)   # progress bar, one summary line per epoch
    logits = trainer.predict(x_test)                 # readout at t = 1
    early = trainer.predict(x_test, t_end=0.25)      # early termination

The trainer is a thin loop around an :class:`~lyapunov_plugin.objectives.Objective`: what
is minimised is that object (by default :func:`~lyapunov_plugin.default_objective`, the
same call a custom loop or a Lightning ``training_step`` makes); the trainer adds the
optimiser, schedules, checkpoints, non-finite policy and reporting.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union, cast

import torch
from torch import Tensor, nn

from ._typing import Solver
from ._validation import (
    as_labels,
    check_choice,
    check_finite,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_tensor,
)
from .checkpoint import FORMAT as _CHECKPOINT_FORMAT
from .checkpoint import atomic_write, check_compatible, load_checkpoint
from .diagnostics import (
    DecayStatistics,
    InferenceCurve,
    decay_statistics,
    iter_batches,
    loss_error_curve,
    lyapunov_condition_rate,
    nfe_to_end,
    states_along,
    trajectory_violation_rate,
)
from .dispatch import as_lyapunov_model
from .distributed import (
    any_rank,
    average_gradients,
    average_metrics,
    barrier,
    broadcast_parameters,
    is_main_process,
    rank_and_world_size,
    unwrap_data_parallel,
)
from .losses import CounterexampleSearch, LyapunovLossOutput
from .model import check_model, horizon
from .objectives import (
    DEFAULT_KAPPA,
    MonteCarloObjective,
    Objective,
    PathIntegralObjective,
    SupervisedObjective,
    default_objective,
)
from .potentials import CrossEntropyPotential, Potential
from .samplers import RolloutSampler, StateSampler, TimeSampler
from .schedules import KappaSchedule, constant_kappa

if TYPE_CHECKING:
    from .model import TrainableModel

__all__ = ["LyapunovTrainer", "NonFiniteLossError", "MODES", "DEFAULT_LR"]

logger = logging.getLogger("lyapunov_plugin")

#: Training modes: Algorithm 1 (no solver), Algorithm 2 (along rollouts), and the
#: standard baseline (backpropagation or adjoint through the model's own solver).
MODES = ("monte_carlo", "path_integral", "standard")
_NONFINITE = ("raise", "skip")
_OPTIMIZERS = ("adam", "adamw", "sgd", "nero")
_SCHEDULER_INTERVALS = ("epoch", "step")
_SCHEDULES = ("cosine", "constant")
#: Default Adam learning rate. The Lyapunov objectives converge within the suite's budget
#: at 1e-2 and fall several points behind at 1e-3 (docs/defaults.md); the baseline in that
#: comparison is standard training at its best of 1e-3, 3e-3 and 1e-2.
DEFAULT_LR = 1e-2
#: Examples of the first training batch kept as the fixed reference set of the per-epoch
#: summary: its numbers mean the same thing from epoch to epoch.
REFERENCE_SIZE = 256
#: Settings that configure the objective (legacy keyword form), by the objective they belong to.
_MC_SETTINGS = (
    "state_sampler",
    "time_sampler",
    "num_samples",
    "counterexamples",
    "velocity_penalty",
    "rollout_solver",
    "rollout_points",
)
_PATH_SETTINGS = ("path_steps", "path_loss")
_SHARED_SETTINGS = ("potential", "detach_v")


class NonFiniteLossError(FloatingPointError):
    """A training step met a NaN/Inf input batch, Lyapunov loss (Eq. 12-17) or gradient; the
    parameters were not updated. The message names the epoch and step."""


def _check_device(device: Any) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
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


@contextlib.contextmanager
def _explain_integer_input(x: Tensor) -> Iterator[None]:
    """Integer inputs are legitimate for an embedding input layer, so they are passed on; if
    the model then fails on them, say that the dtype of ``x`` is the likely cause."""
    try:
        yield
    except RuntimeError as err:
        if x.is_floating_point():
            raise
        raise TypeError(
            f"x has dtype {x.dtype} and the model failed on it ({err}); pass floating-point inputs "
            "(e.g. x.float(), or x.float() / 255 for uint8 images)"
        ) from err


def _check_loader(name: str, loader: Any) -> None:
    if loader is None or isinstance(loader, (str, bytes, Tensor)) or not hasattr(loader, "__iter__"):
        raise TypeError(
            f"{name} must be an iterable of (x, y) batches (e.g. a DataLoader), got {type(loader).__name__}"
        )


def _check_path(name: str, path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike file name, got {type(path).__name__} {path!r}")
    return Path(path)


OptimizerSpec = Union[str, torch.optim.Optimizer, Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]]


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    # disable=None: no bar when stderr is not a terminal (a log file gets the summary lines only).
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def _objective_from_settings(mode: Optional[str], settings: dict[str, Any]) -> Optional[Objective]:
    """The objective that the legacy keyword settings describe (``None``: the default
    recipe, resolved on the first batch). Settings that do not apply to ``mode`` raise."""
    mc = {k: settings[k] for k in _MC_SETTINGS if k in settings}
    path = {k: settings[k] for k in _PATH_SETTINGS if k in settings}
    shared = {k: settings[k] for k in _SHARED_SETTINGS if k in settings}
    if mode is None:
        if mc and path:
            raise ValueError(
                f"settings {sorted(mc)} (Monte Carlo) and {sorted(path)} (path integral) do not belong to one "
                "objective; pass mode= or an objective"
            )
        mode = "monte_carlo" if mc else ("path_integral" if path else None)
    if mode is None:
        return None
    foreign = {"monte_carlo": path, "path_integral": mc, "standard": {**mc, **path}}[mode]
    if mode == "standard" and "detach_v" in shared:
        foreign = {**foreign, "detach_v": shared["detach_v"]}
    if foreign:
        raise ValueError(f"settings {sorted(foreign)} do not apply to mode={mode!r}")
    if mode == "standard":
        return SupervisedObjective(**({"potential": shared["potential"]} if "potential" in shared else {}))
    if mode == "path_integral":
        if "path_steps" in path:
            check_positive_int("path_steps", path["path_steps"])
        if "path_loss" in path:
            check_choice("path_loss", path["path_loss"], ("continuous", "discrete"))
        renamed = {"steps": path.get("path_steps"), "form": path.get("path_loss")}
        return PathIntegralObjective(**{k: v for k, v in renamed.items() if v is not None}, **shared)
    return MonteCarloObjective(**mc, **shared)


class LyapunovTrainer:
    """Train an existing Neural ODE with the Lyapunov loss (paper Algorithms 1-2).

    Arguments:
        model: a torchdyn ``NeuralODE`` (alone or in an ``nn.Sequential``), a torchdiffeq
            vector field, or any :class:`~lyapunov_plugin.LyapunovModel`; the adapter is
            chosen automatically.
        objective: what to minimise, an :class:`~lyapunov_plugin.objectives.Objective`.
            Default: :func:`~lyapunov_plugin.default_objective`, chosen on the first batch
            (Monte Carlo training when the dynamics see the input and the readout has no
            parameters, path-integral training along a cheap differentiable rollout
            otherwise; docs/defaults.md).
        kappa: exponential rate of Eq. (10), a float or a
            :class:`~lyapunov_plugin.schedules.KappaSchedule` (default 10).
        mode, potential, state_sampler, time_sampler, num_samples, counterexamples,
            velocity_penalty, detach_v, path_steps, path_loss, rollout_solver,
            rollout_points: the keyword form of an objective. ``mode`` is
            ``"monte_carlo"`` (:class:`~lyapunov_plugin.MonteCarloObjective`),
            ``"path_integral"`` (:class:`~lyapunov_plugin.PathIntegralObjective`, with
            ``path_steps`` -> ``steps`` and ``path_loss`` -> ``form``) or ``"standard"``
            (:class:`~lyapunov_plugin.SupervisedObjective`, the baseline); without it,
            Monte Carlo or path-integral settings imply their mode, and ``potential`` /
            ``detach_v`` alone adjust the default recipe. A setting that does not apply to
            the mode raises ``ValueError``; so does mixing these with ``objective``.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"nero"`` (paper
            Appendix C; needs ``pytorch-optimizer``), an optimizer instance over the
            model's parameters, or a factory ``params -> optimizer``.
        lr, weight_decay: settings for a named optimizer (default learning rate 1e-2).
        scheduler: ``"cosine"`` (default): the learning rate falls from ``lr`` along half a
            cosine over the epochs of each ``fit`` call, which on the suite removed the
            late-training oscillation of a constant rate (docs/defaults.md); ``"constant"``;
            an LR scheduler instance; or a factory ``optimizer -> scheduler``.
        scheduler_interval: step a scheduler instance every ``"epoch"`` or every ``"step"``.
        grad_clip: clip the global gradient norm to this value.
        nonfinite: ``"raise"`` (default) a :class:`NonFiniteLossError`, or ``"skip"`` the
            step and count it; parameters are never updated with a NaN/Inf.
        device: where to train; default the model's parameter device.
        seed: seeds the trainer's own sampling generator (the global RNG, used by data
            loaders and dropout, stays the caller's).
        progress: show a progress bar (tqdm, on terminals) and print one summary line per
            epoch to stderr (also when it goes to a file).
        t_end: inference horizon; it belongs to the model (``model.t_end``, 1 in the
            paper). Passing a different value raises.
    """

    def __init__(
        self,
        model: Any,
        objective: Optional[Objective] = None,
        *,
        kappa: Union[float, KappaSchedule] = DEFAULT_KAPPA,
        mode: Optional[str] = None,
        potential: Optional[Potential] = None,
        state_sampler: Optional[StateSampler] = None,
        time_sampler: Optional[TimeSampler] = None,
        num_samples: Optional[int] = None,
        counterexamples: Optional[CounterexampleSearch] = None,
        velocity_penalty: Optional[float] = None,
        detach_v: Optional[bool] = None,
        path_steps: Optional[int] = None,
        path_loss: Optional[str] = None,
        rollout_solver: Optional[Solver] = None,
        rollout_points: Optional[int] = None,
        optimizer: OptimizerSpec = "adam",
        lr: float = DEFAULT_LR,
        weight_decay: float = 0.0,
        scheduler: Any = "cosine",
        scheduler_interval: str = "epoch",
        grad_clip: Optional[float] = None,
        nonfinite: str = "raise",
        device: Optional[Union[str, torch.device]] = None,
        seed: Optional[int] = None,
        progress: bool = True,
        t_end: Optional[float] = None,
    ) -> None:
        self.user_model = model
        # DistributedDataParallel(model) is accepted: the trainer synchronises gradients
        # itself (lyapunov_plugin.distributed), since the objectives never call forward.
        wrapped = as_lyapunov_model(unwrap_data_parallel(model))
        if not isinstance(wrapped, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (the trainer optimises its parameters), got {type(wrapped).__name__}"
            )
        self.model = cast("TrainableModel", wrapped)
        settings = {
            "potential": potential,
            "state_sampler": state_sampler,
            "time_sampler": time_sampler,
            "num_samples": num_samples,
            "counterexamples": counterexamples,
            "velocity_penalty": velocity_penalty,
            "detach_v": detach_v,
            "path_steps": path_steps,
            "path_loss": path_loss,
            "rollout_solver": rollout_solver,
            "rollout_points": rollout_points,
        }
        settings = {k: v for k, v in settings.items() if v is not None}
        if mode is not None:
            check_choice("mode", mode, MODES)
        if objective is not None:
            if not isinstance(objective, Objective):
                raise TypeError(f"objective must be a lyapunov_plugin Objective, got {type(objective).__name__}")
            if mode is not None or settings:
                raise ValueError(
                    f"pass either objective or the keyword settings {sorted(settings) + (['mode'] if mode else [])}, "
                    "not both (the objective holds its own settings)"
                )
        else:
            objective = _objective_from_settings(mode, settings)
        # Without an objective, only potential / detach_v can have been given: they adjust
        # the default recipe.
        self._overrides = {k: settings[k] for k in _SHARED_SETTINGS if k in settings} if objective is None else {}
        if objective is None and (
            not getattr(self.model, "conditioned_on_input", True)
            or (
                isinstance(getattr(self.model, "readout_module", None), nn.Module)
                and isinstance(getattr(self.model, "initial_state_trainable", None), bool)
            )
        ):
            # The model tells which recipe applies without running it: choose now.
            objective = default_objective(self.model)
            if self._overrides:
                objective = dataclasses.replace(objective, **self._overrides)
        self.objective: Optional[Objective] = objective
        self.kappa_schedule = (
            kappa if isinstance(kappa, KappaSchedule) else constant_kappa(check_positive("kappa", kappa))
        )
        model_t_end = horizon(self.model)
        if t_end is not None and not math.isclose(check_positive("t_end", t_end), model_t_end):
            raise ValueError(
                f"t_end belongs to the model: the model's horizon is {model_t_end}, got t_end={t_end} "
                "(build the model with the horizon you want, e.g. ODEModel(..., t_end=...))"
            )
        self.t_end = model_t_end
        self.grad_clip = check_positive("grad_clip", grad_clip) if grad_clip is not None else None
        self.nonfinite = check_choice("nonfinite", nonfinite, _NONFINITE)
        self.scheduler_interval = check_choice("scheduler_interval", scheduler_interval, _SCHEDULER_INTERVALS)
        if not isinstance(progress, bool):
            raise TypeError(f"progress must be a bool, got {type(progress).__name__} {progress!r}")
        self.progress = progress
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
            if not 0 <= seed < 2**64:
                raise ValueError(f"seed must lie in [0, 2**64), got {seed}")

        self.device = _check_device(device) if device is not None else self._parameter_device()
        self.model.to(self.device)
        broadcast_parameters(self.model)  # every rank starts from rank 0's weights
        self.optimizer = self._build_optimizer(
            optimizer, check_positive("lr", lr), check_non_negative("weight_decay", weight_decay)
        )
        self.scheduler = self._build_scheduler(scheduler)
        self.base_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        self.generator = torch.Generator(device=self.device)
        # One generator per rank, seeded seed + rank: the ranks draw different Monte Carlo
        # samples, and a run is reproducible for a given seed and number of ranks.
        self.rank, self.world_size = rank_and_world_size()
        base_seed = int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)))
        self.generator.manual_seed((base_seed + self.rank) % 2**64)
        self.epoch = 0
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self._stepped = False
        self._model_checked = False
        self._reference: Optional[tuple[Tensor, Tensor]] = None
        self._expected_mode: Optional[str] = None

    @property
    def mode(self) -> Optional[str]:
        """The objective's name (``"monte_carlo"``, ``"path_integral"``, ``"standard"``), or
        ``None`` while the default recipe is not yet chosen (for a model without
        ``readout_module`` it is chosen on the first batch)."""
        return self.objective.name if self.objective is not None else None

    @property
    def potential(self) -> Potential:
        """The objective's potential ``V_y`` (cross entropy by default)."""
        if self.objective is not None and isinstance(getattr(self.objective, "potential", None), Potential):
            return self.objective.potential  # type: ignore[attr-defined]
        # The only override of that name is the ``potential`` keyword, a Potential.
        return cast(Potential, self._overrides.get("potential", CrossEntropyPotential()))

    @property
    def state_sampler(self) -> Optional[StateSampler]:
        """The Monte Carlo objective's ``mu_H`` (``None`` for other objectives)."""
        return getattr(self.objective, "state_sampler", None)

    def resolve_objective(self, x: Tensor) -> Objective:
        """Choose the default recipe for this model (:func:`~lyapunov_plugin.default_objective`)
        from a few examples, if no objective was given; return the objective."""
        if self.objective is None:
            chosen = default_objective(self.model, x[:2].to(self.device))
            if self._overrides:
                chosen = dataclasses.replace(chosen, **self._overrides)
            if self._expected_mode is not None and chosen.name != self._expected_mode:
                raise ValueError(
                    f"the resumed checkpoint was trained with mode={self._expected_mode!r}, but the default "
                    f"recipe for this model is {chosen.name!r}"
                )
            self.objective = chosen
            logger.info("default objective: %s", chosen)
        return self.objective

    # ----------------------------------------------------------------- set-up
    def _parameter_device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def _input(self, x: Tensor) -> Tensor:
        """``x`` on the trainer's device, floating inputs in the model's floating dtype
        (numpy arrays become float64 tensors; a float32 model would fail deep inside)."""
        dtype = next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)
        if x.is_floating_point() and dtype is not None and x.dtype != dtype:
            x = x.to(dtype)
        return x.to(self.device)

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
            f"optimizer must be one of {list(_OPTIMIZERS)}, a torch.optim.Optimizer or a factory, "
            f"got {type(spec).__name__}"
        )

    def _build_scheduler(self, spec: Any) -> Any:
        self.cosine = False
        if isinstance(spec, str):
            check_choice("scheduler", spec, _SCHEDULES)
            self.cosine = spec == "cosine"
            return None
        if spec is None:
            return None
        if hasattr(spec, "step") and hasattr(spec, "state_dict"):
            if getattr(spec, "optimizer", self.optimizer) is not self.optimizer:
                raise ValueError("scheduler must be bound to the trainer's optimizer (pass a factory instead)")
            return spec
        if callable(spec):
            return spec(self.optimizer)
        raise TypeError(
            f"scheduler must be 'cosine', 'constant', an LR scheduler or a factory optimizer -> scheduler, "
            f"got {type(spec).__name__}"
        )

    def cosine_factor(self, epoch: int, epochs: int) -> float:
        """The default schedule: the learning rate of epoch ``epoch`` (1-based) of a ``fit``
        to ``epochs`` is ``lr * (1 + cos(pi * (epoch - 1) / epochs)) / 2``."""
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))

    def kappa_at(self, epoch: int) -> float:
        """The rate used during ``epoch`` (1-based), from the kappa schedule."""
        return float(self.kappa_schedule(epoch))

    # ------------------------------------------------------------------ steps
    def _check_batch(self, batch: Any, epoch: int, step: int) -> Optional[tuple[Tensor, Tensor]]:
        """The batch on the device, or ``None`` when a non-finite input batch is skipped."""
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
        return self._input(x), as_labels(y).to(self.device)

    def loss(self, x: Tensor, y: Tensor, *, epoch: Optional[int] = None) -> LyapunovLossOutput:
        """The objective on one batch (no optimiser step), with the epoch's ``kappa``."""
        kappa = self.kappa_at(epoch if epoch is not None else max(self.epoch, 1))
        objective = self.resolve_objective(x)
        return objective(self.model, x, y, kappa=kappa, generator=self.generator)

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
        finite = bool(torch.isfinite(out.loss))
        if any_rank(not finite, self.device):
            self._handle_nonfinite("loss" if not finite else "loss on another rank", epoch, step)
            return None
        out.loss.backward()
        average_gradients(self.model.parameters())  # no-op on a single process
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip is not None else math.inf)
        if not bool(torch.isfinite(norm)):
            self._handle_nonfinite("gradient", epoch, step)
            return None
        self.optimizer.step()
        self._stepped = True
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        metrics = out.metrics()
        if self.mode == "standard":  # no Lyapunov condition is evaluated: only the loss is meaningful
            metrics = {"loss": metrics["loss"]}
        return metrics

    def reference_metrics(self) -> dict[str, float]:
        """Numbers on the fixed reference set (the first training examples seen, at most
        ``REFERENCE_SIZE``) that mean the same thing from epoch to epoch, whatever the
        objective samples: error and mean ``V`` at ``t_end``, and the fraction of states
        along the inference trajectory (5 points, the model's own solver) where Eq. (10)
        fails."""
        if self._reference is None:
            return {}
        x, y = self._reference
        kappa = self.kappa_schedule.final
        ts = torch.linspace(0.0, self.t_end, 5, device=self.device)
        with self._eval_mode(), torch.no_grad():
            out: dict[str, float] = {
                "ref_violation": trajectory_violation_rate(
                    self.model, (x, y), potential=self.potential, kappa=kappa, ts=ts
                ),
            }
            logits = self.predict(x)
            out["ref_v_end"] = float(self.potential.value(logits, y).mean())
            if not y.is_floating_point():
                out["ref_error"] = float((logits.argmax(-1) != y).double().mean())
        return out

    def _summary(self, record: dict[str, Any]) -> str:
        parts = [
            f"epoch {record['epoch']}/{record['epochs']}",
            f"[{record['mode']}]",
            f"loss {record.get('train_loss', math.nan):.4g}",
        ]
        if "train_violation" in record:
            parts.append(f"viol {record['train_violation']:.3f}")
        if "ref_error" in record:
            parts.append(f"ref error {100 * record['ref_error']:.1f}%")
        if "ref_v_end" in record:
            parts.append(f"ref V(t_end) {record['ref_v_end']:.3g}")
        if "ref_violation" in record:
            parts.append(f"ref Eq.10 violated {100 * record['ref_violation']:.1f}%")
        if "val_error" in record:
            parts.append(f"val error {100 * record['val_error']:.1f}%")
        parts.append(f"{record['train_seconds']:.1f}s")
        return "  ".join(parts)

    def _run_epoch(self, loader: Iterable[Any], epoch: int, total: int) -> dict[str, Any]:
        lrs_before = [group["lr"] for group in self.optimizer.param_groups]
        if self.cosine:
            factor = self.cosine_factor(epoch, total)
            # strict=False: a parameter group added during training keeps the rate it was given.
            for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=False):
                group["lr"] = base * factor
        try:
            return self._train_epoch(loader, epoch, total)
        except BaseException:
            if not self._stepped:
                # Nothing was updated: leave the optimizer as the call found it.
                for group, lr in zip(self.optimizer.param_groups, lrs_before, strict=False):
                    group["lr"] = lr
            raise

    def _train_epoch(self, loader: Iterable[Any], epoch: int, total: int) -> dict[str, Any]:
        self._stepped = False
        started, started_cpu = time.perf_counter(), time.process_time()
        sums: dict[str, float] = {}
        weight = 0
        skipped_before = self.skipped_steps
        set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)  # DistributedSampler: a new shuffle each epoch
        elif self.world_size > 1 and epoch == self.epoch + 1:
            logger.warning(
                "training on %d ranks with a loader without a DistributedSampler: every rank sees the whole dataset",
                self.world_size,
            )
        bar = _progress(loader, self.progress and is_main_process(), f"epoch {epoch}/{total}")
        step = -1
        for step, batch in enumerate(bar):
            checked = self._check_batch(batch, epoch, step)
            if checked is None:
                continue
            x, y = checked
            if not self._model_checked:
                # Once, on two examples, before any update: shape errors surface with a precise
                # message. Eval mode and no gradient, so no RNG draw and no buffer update.
                with self._eval_mode(), torch.no_grad(), _explain_integer_input(x):
                    check_model(self.model, x, source="the model's vector field")
                self._model_checked = True
            if self._reference is None:
                self._reference = (x[:REFERENCE_SIZE].detach().clone(), y[:REFERENCE_SIZE].detach().clone())
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
        if hasattr(bar, "close"):
            bar.close()
        if step < 0:
            raise ValueError(f"train_loader yielded no batches in epoch {epoch}; it must yield (x, y) batches")
        record: dict[str, Any] = {"epoch": epoch, "mode": self.mode, "kappa": self.kappa_at(epoch)}
        record.update({f"train_{k}": v / max(weight, 1) for k, v in sums.items()})
        record["skipped_steps"] = self.skipped_steps - skipped_before
        record["lr"] = float(self.optimizer.param_groups[0]["lr"])
        record["train_seconds"] = time.perf_counter() - started
        # CPU time of this process: what the epoch cost on a CPU when other jobs share it
        # (on a GPU the wall clock above is the measure).
        record["train_cpu_seconds"] = time.process_time() - started_cpu
        # Metrics of every rank's examples (no-op on a single process).
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
        warns and returns. The default cosine schedule anneals over the epochs of each call
        (``lr`` at its first epoch, near zero at ``epochs``).

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
        if checkpoint is not None and any_rank(not checkpoint.exists(), self.device):
            self.save(checkpoint)
        epoch = self.epoch
        try:
            for epoch in range(self.epoch + 1, epochs + 1):
                record = self._run_epoch(train_loader, epoch, epochs)
                if self.scheduler is not None and self.scheduler_interval == "epoch":
                    self.scheduler.step()
                # The epoch is complete: count it before anything that may raise (a bad
                # validation batch), so the trainer's state always matches its parameters.
                self.history.append(record)
                self.epoch = epoch
                reference = self.reference_metrics()
                record.update(average_metrics(reference, reference, self.device))
                if val_loader is not None:
                    record.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
                summary = self._summary({**record, "epochs": epochs})
                logger.info("%s", summary)
                if self.progress and is_main_process():
                    print(summary, file=sys.stderr, flush=True)
                if checkpoint is not None:
                    self.save(checkpoint)
                if metrics_file is not None and is_main_process():
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
            atomic_write(path, lambda f: f.write(json.dumps(self.history, indent=2)), mode="w")
            return
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)

        def write(handle: Any) -> None:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)

        atomic_write(path, write, mode="w")

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue training exactly: model, optimiser, scheduler,
        RNG states (global CPU/CUDA, Python, the trainer's generator), epoch, history, and
        the library version and classes that :meth:`resume` checks."""
        from . import __version__

        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "generator": self.generator.get_state(),
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
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
            "rng": rng,
        }

    def save(self, path: Union[str, Path]) -> None:
        """Write a checkpoint atomically (temporary file + rename; :mod:`lyapunov_plugin.checkpoint`).

        On several ranks every rank must call it: the ranks' Monte Carlo generator states are
        gathered, rank 0 writes the file, and all ranks wait until it is written."""
        target = _check_path("path", path)
        if target.is_dir():
            raise ValueError(f"path must be a checkpoint file name, got the directory {str(target)!r}")
        state = self.state_dict()
        if self.world_size > 1:
            states: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(states, self.generator.get_state())
            state["rng"]["generator_ranks"] = states
        if is_main_process():
            atomic_write(target, lambda f: torch.save(state, f))
        barrier()

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
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        ranks = rng.get("generator_ranks")
        if isinstance(ranks, list) and len(ranks) == self.world_size:
            self.generator.set_state(ranks[self.rank])  # the same ranks: each continues its own stream
        else:
            # Another number of ranks: rank 0 continues the saved stream, the others branch off it.
            self.generator.set_state(rng["generator"])
            if self.rank > 0:
                branch = int(torch.randint(0, 2**62, (1,), generator=self.generator))
                self.generator.manual_seed((branch + self.rank) % 2**64)
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
            x = self._input(x)
            ts = torch.tensor(
                [0.0, t_end], device=self.device, dtype=x.dtype if x.is_floating_point() else torch.get_default_dtype()
            )
            with _explain_integer_input(x):
                final = states_along(self.model, x, ts, solver=solver)[-1]
                return self.model.readout(final)

    def evaluate(
        self, loader: Any, *, t_end: Optional[float] = None, solver: Optional[Solver] = None
    ) -> dict[str, float]:
        """Error rate and mean potential (the supervised loss) of :meth:`predict` on a loader."""
        if loader is None or isinstance(loader, (str, bytes, Tensor)):
            raise TypeError(
                f"loader must be an (x, y) pair of tensors or an iterable of (x, y) batches, "
                f"got {type(loader).__name__}"
            )
        errors, loss, count = 0.0, 0.0, 0
        for x, y in iter_batches(loader):
            check_tensor("y", y, min_ndim=1)
            y = as_labels(y).to(self.device)
            out = self.predict(x, t_end=t_end, solver=solver)
            self.potential.validate(out, y)  # labels in range, shapes: a clear error
            errors += float((out.argmax(-1) != y).sum())
            loss += float(self.potential.value(out, y).sum())
            count += int(y.shape[0])
        if count == 0:
            raise ValueError("loader yielded no batches; evaluate needs at least one (x, y) batch")
        return {"error": errors / count, "loss": loss / count}

    def _eval_mode(self) -> _EvalMode:
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
        the decay of ``V`` along trajectories versus ``kappa`` (Theorem 2).

        States are drawn with ``state_sampler`` (default: the Monte Carlo objective's, else
        :class:`~lyapunov_plugin.RolloutSampler` around the inference trajectories)."""
        sampler = state_sampler or self.state_sampler or RolloutSampler()
        time_sampler = getattr(self.objective, "time_sampler", None) if state_sampler is None else None
        ts = ts if ts is not None else torch.linspace(0.0, self.t_end, 11)
        kappa = self.kappa_schedule.final
        with self._eval_mode():
            rate = lyapunov_condition_rate(
                self.model,
                loader,
                potential=self.potential,
                kappa=kappa,
                state_sampler=sampler,
                time_sampler=time_sampler,
                num_samples=num_samples,
                trajectory_ts=torch.linspace(0.0, self.t_end, 5, device=self.device),
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
