"""Training-step cost of LyaNet versus backpropagation and the adjoint, as ratios.

The paper's Table 2 and Section 5.5 compare the training cost of LyaNet with standard
Neural ODE training. Absolute times drift between machines, so this benchmark reports
each cost as a ratio of two measurements taken in the same process, on the same model
(the digits data-controlled Neural ODE of :func:`examples.common.models.digits_node`
with the Lipschitz-2 encoder of ``examples/compare_digits.py``), the same batch and the
same starting parameters, after warm-up, as the median of repeats.

Part 1, one optimisation step (``zero_grad`` + loss + ``backward`` + optimiser step) of:

- ``lyanet_mc_default``: Monte Carlo LyaNet (Algorithm 1), the ``LyapunovTrainer`` default
  for this model (:class:`~lyapunov_plugin.MonteCarloObjective`), including the cheap
  gradient-free rollout of its sampler;
- ``lyanet_mc_fixed``: Monte Carlo LyaNet with a fixed Appendix-B hypercube, no rollouts
  (Algorithm 1 as written: no solver at all);
- ``lyanet_path_default``: path-integral LyaNet as the default recipe runs it for models
  with a trainable readout (Algorithm 2, Eq. 12 along an RK4-4 rollout that carries gradients);
- ``lyanet_path_integral``: path-integral LyaNet (Algorithm 2, discrete Eq. 16-17) through
  the model's own RK4-10, the grid of ``backprop_rk4``;
- ``backprop_rk4``: cross entropy at ``t = 1`` backpropagated through RK4 with 10 steps
  (the ResNet view of Eq. 4);
- ``backprop_dopri5``: the same through torchdiffeq's ``odeint`` (dopri5, rtol = atol = 1e-3);
- ``adjoint_dopri5``: the same with ``odeint_adjoint`` (dopri5, rtol = atol = 1e-3).

Every method is reported as a ratio to ``lyanet_mc_fixed`` and to ``backprop_rk4``. All
share one step function around the public ``LyapunovTrainer.loss`` (the trainer's
objective), so they differ only in the objective; ``fit`` adds finiteness checks and a
gradient-norm computation to every method alike, which are not timed here.

Part 3, wrapped models: one epoch of ``LyapunovTrainer.fit`` on digits for each model
pattern of the suite that the default recipe trains with the path integral (torchdyn
``DataControl``, plain, augmented and encoder/readout ``NeuralODE``, a torchdiffeq field),
wrapped unchanged: the default objective against standard training through the same RK4-4
grid (``SupervisedObjective(solver=...)``) and through the model's own dopri5.

Part 2, the loss overhead of Algorithm 1: forward + backward of
:func:`~lyapunov_plugin.monte_carlo_lyapunov_loss` versus forward + backward of the
bare vector field (``f.sum()``) at the same sampled states and times, with the same
encoder pass. The field evaluation is the physical floor of Algorithm 1; the ratio is
what the Lyapunov condition (the potential's forward-mode derivative, Eq. 12) adds. The
same loss is timed a second time through ``MonteCarloObjective.compute``, the path the
trainer takes (the public function checks its arguments on every call; the trainer checks a
batch once where it enters).

Methods are timed round-robin (one repeat of each in turn), so a change in machine load
during the run affects all of them alike; parameters are restored before every repeat,
so each repeat times the same computation. Output: ``timing.json`` and ``timing.md``.

    python -m benchmarks.timing                        # 30 repeats after 5 warm-up runs
    python -m benchmarks.timing --repeats 5 --warmup 1 # a quick look
    python -m benchmarks.timing --threads 1            # a shared CPU: no thread oversubscription
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from examples.common.data import digits
from examples.common.models import TRAIN_SOLVER, digits_node
from examples.common.report import write_outputs
from examples.compare_digits import ENCODER_LIPSCHITZ
from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    LyapunovTrainer,
    MonteCarloObjective,
    Objective,
    ODEModel,
    PathIntegralObjective,
    Recipe,
    SamplingContext,
    SupervisedObjective,
    UniformTimeSampler,
    appendix_b_half_width,
    monte_carlo_lyapunov_loss,
)
from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel
from lyapunov_plugin.model import expand_to_batch
from lyapunov_plugin.objectives import DEFAULT_KAPPA

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_NAME = "timing"
DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5
#: Batch size of the digits comparison (examples/compare_digits.py).
DEFAULT_BATCH_SIZE = 64
#: ``Gamma``, Monte Carlo samples per example: the default objective's.
DEFAULT_NUM_SAMPLES = MonteCarloObjective().num_samples
#: Tolerances of the adaptive baselines (the protocol's dopri5 settings).
DOPRI5_TOLERANCE = 1e-3
NUM_CLASSES = 10
LEARNING_RATE = 1e-3
SEED = 0
#: The two references every method is divided by.
REFERENCES = ("lyanet_mc_fixed", "backprop_rk4")
QUARTILES = 4


@dataclass(frozen=True)
class Case:
    """One timed computation: ``prepare`` runs untimed before every repeat (restore
    parameters, reseed, clear gradients), ``run`` is what the clock measures."""

    key: str
    label: str
    prepare: Callable[[], None]
    run: Callable[[], None]
    model: nn.Module
    #: vector-field evaluations of the model's own solve to t_end (its Solution's nfe)
    forward_nfe: Optional[int] = None


class TorchdiffeqField(nn.Module):
    """``func(t, y, context)`` (torchdiffeq convention) around an ``ODEModel``'s
    ``dynamics(eta, context, t)``, with the solver's scalar time expanded to the batch.

    It holds the very same dynamics module, so the torchdiffeq baselines train the
    parameters of the LyaNet model, not a copy with a different initialisation.
    """

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, t: Tensor, y: Tensor, context: Tensor) -> Tensor:
        return self.dynamics(y, context, expand_to_batch(t, y.shape[0], y))


# ------------------------------------------------------------------- set-up
def default_device() -> torch.device:
    """CUDA when available, the CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so the clock sees finished work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_description(device: torch.device) -> dict[str, Any]:
    """Processor, torch version, intra-op threads and device of this run."""
    info: dict[str, Any] = {
        "processor": platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def base_model_and_batch(batch_size: int, device: torch.device) -> tuple[ODEModel, Tensor, Tensor, str]:
    """The digits Neural ODE of the comparison (seeded) and one fixed training batch."""
    split = digits()
    if batch_size > split.x_train.shape[0]:
        raise ValueError(f"batch_size must be at most {split.x_train.shape[0]}, got {batch_size}")
    torch.manual_seed(SEED)
    model = digits_node(split.x_train, lipschitz=ENCODER_LIPSCHITZ, solver=TRAIN_SOLVER).to(device)
    x = split.x_train[:batch_size].to(device)
    y = split.y_train[:batch_size].to(device)
    return model, x, y, split.description


def torchdiffeq_twin(model: ODEModel, *, adjoint: bool) -> TorchdiffeqModel:
    """``model``'s encoder and dynamics as a torchdiffeq model (dopri5, rtol = atol = 1e-3)."""
    return TorchdiffeqModel(
        TorchdiffeqField(model.dynamics),
        encoder=model.encoder,
        state_shape=model.state_shape,
        method="dopri5",
        rtol=DOPRI5_TOLERANCE,
        atol=DOPRI5_TOLERANCE,
        adjoint=adjoint,
    )


def fixed_hypercube() -> HypercubeSampler:
    """Appendix B's hypercube for the default rate, without covering: Algorithm 1 needs no rollout."""
    return HypercubeSampler(half_width=appendix_b_half_width(DEFAULT_KAPPA, NUM_CLASSES))


def parameter_vector(model: nn.Module) -> Tensor:
    """All parameters, flattened in registration order."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def check_same_parameters(models: Sequence[nn.Module]) -> None:
    """Raise unless every model starts from exactly the same parameters."""
    reference = parameter_vector(models[0])
    for model in models[1:]:
        vector = parameter_vector(model)
        if vector.shape != reference.shape or not torch.equal(vector, reference):
            raise RuntimeError(f"{type(model).__name__} does not hold the reference parameters")


# ------------------------------------------------------ part 1: training steps
def optimisation_step(trainer: LyapunovTrainer, x: Tensor, y: Tensor) -> None:
    """zero_grad + the trainer's loss for its mode + backward + optimiser step."""
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.loss(x, y).loss.backward()
    trainer.optimizer.step()


def restorer(model: nn.Module) -> Callable[[], None]:
    """A function that puts ``model``'s current parameters and buffers back."""
    initial = copy.deepcopy(model.state_dict())

    def restore() -> None:
        model.load_state_dict(initial)

    return restore


def step_case(
    key: str, label: str, model: nn.Module, batch: tuple[Tensor, Tensor], device: torch.device, objective: Objective
) -> Case:
    """A timed optimisation step of a ``LyapunovTrainer`` (Adam) with one objective."""
    x, y = batch
    recipe = Recipe(objective=objective, lr=LEARNING_RATE)
    trainer = LyapunovTrainer(model, recipe, seed=SEED, progress=False, device=device)
    trainer.model.train()
    solution = getattr(trainer.model, "solution", None)
    with torch.no_grad():
        nfe = solution(x, torch.tensor([0.0, trainer.t_end], device=x.device)).nfe if callable(solution) else None
    return Case(key, label, restorer(trainer.model), lambda: optimisation_step(trainer, x, y), trainer.model, nfe)


def step_cases(base: ODEModel, batch: tuple[Tensor, Tensor], device: torch.device, num_samples: int) -> list[Case]:
    """The methods of part 1, each on its own copy of ``base`` (same parameters)."""

    def fresh() -> ODEModel:
        return copy.deepcopy(base)

    common = (batch, device)
    cases = [
        step_case(
            "lyanet_mc_default",
            "LyaNet Monte Carlo, default objective (rollout sampler)",
            fresh(),
            *common,
            MonteCarloObjective(num_samples=num_samples),
        ),
        step_case(
            "lyanet_mc_fixed",
            "LyaNet Monte Carlo, fixed hypercube (Algorithm 1)",
            fresh(),
            *common,
            MonteCarloObjective(
                state_sampler=fixed_hypercube(), time_sampler=UniformTimeSampler(), num_samples=num_samples
            ),
        ),
        step_case(
            "lyanet_path_default",
            "LyaNet path integral, default objective (RK4-4, Eq. 12)",
            fresh(),
            *common,
            PathIntegralObjective(),
        ),
        step_case(
            "lyanet_path_integral",
            "LyaNet path integral (Algorithm 2, Eq. 16-17), RK4-10",
            fresh(),
            *common,
            PathIntegralObjective(steps=10, form="discrete", solver="model"),
        ),
        step_case("backprop_rk4", "standard, backprop through RK4-10", fresh(), *common, SupervisedObjective()),
        step_case(
            "backprop_dopri5",
            "standard, backprop through dopri5 (odeint)",
            torchdiffeq_twin(fresh(), adjoint=False),
            *common,
            SupervisedObjective(),
        ),
        step_case(
            "adjoint_dopri5",
            "standard, adjoint dopri5 (odeint_adjoint)",
            torchdiffeq_twin(fresh(), adjoint=True),
            *common,
            SupervisedObjective(),
        ),
    ]
    check_same_parameters([case.model for case in cases])
    return cases


# ------------------------------------------------------- part 3: wrapped models
WRAPPED_PATTERNS = ("dc", "plain", "augmented", "enc_dc", "torchdiffeq")


def wrapped_epochs(*, repeats: int, device: torch.device, problem_name: str = "digits") -> dict[str, Any]:
    """Part 3: seconds per epoch of ``fit`` on digits for each wrapped pattern, default
    (path-integral) objective against standard training on the same RK4-4 grid and through
    the model's own dopri5; epochs are timed round-robin, ``repeats`` each."""
    from benchmarks.suite.patterns import build
    from benchmarks.suite.problems import load_problem
    from benchmarks.suite.runner import Batches, budget

    problem = load_problem(problem_name)
    batch_size, _ = budget(len(problem.y_train))
    grid = FixedStepSolver(method="rk4", steps=PathIntegralObjective().steps)
    objectives = {
        "path_default": None,
        "standard_same_grid": SupervisedObjective(solver=grid),
        "standard_own_solver": SupervisedObjective(),
    }
    out: dict[str, Any] = {}
    for pattern in WRAPPED_PATTERNS:
        trainers = {}
        for key, objective in objectives.items():
            model = build(pattern, problem.num_features, problem.num_classes, seed=SEED)
            trainers[key] = LyapunovTrainer(model, objective=objective, seed=SEED, progress=False, device=device)
        data = {
            key: Batches(problem.x_train.to(device), problem.y_train.to(device), batch_size, SEED) for key in objectives
        }
        seconds: dict[str, list[float]] = {key: [] for key in objectives}
        for epoch in range(1, repeats + 2):  # the first epoch of each is warm-up
            for key, trainer in trainers.items():
                record = trainer.fit(data[key], epochs=epoch)[-1]
                if epoch > 1:
                    seconds[key].append(record["train_seconds"])
        if trainers["path_default"].mode != "path_integral":
            raise RuntimeError(
                f"the default recipe for pattern {pattern!r} is {trainers['path_default'].mode!r}, "
                "not the path integral this part measures"
            )
        out[pattern] = {key: summary(v) for key, v in seconds.items()}
        out[pattern]["ratio_same_grid"] = ratio(seconds["path_default"], seconds["standard_same_grid"])
        out[pattern]["ratio_own_solver"] = ratio(seconds["path_default"], seconds["standard_own_solver"])
    return out


def wrapped_markdown(wrapped: dict[str, Any]) -> str:
    lines = [
        "| pattern (digits, wrapped unchanged) | path integral s/epoch | standard, same RK4-4 grid | "
        "x same grid | standard, own dopri5 | x own solver |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for pattern, entry in wrapped.items():
        lines.append(
            f"| {pattern} | {entry['path_default']['median_s']:.3f} | "
            f"{entry['standard_same_grid']['median_s']:.3f} | {ratio_cell(entry['ratio_same_grid'])} | "
            f"{entry['standard_own_solver']['median_s']:.3f} | {ratio_cell(entry['ratio_own_solver'])} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------- part 2: loss overhead
def sampled_inputs(
    model: ODEModel, x: Tensor, y: Tensor, num_samples: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Encoder pass and the draws of :func:`~lyapunov_plugin.monte_carlo_lyapunov_loss`,
    in its order (states, then times): ``(eta, context, t)`` flattened to ``B * Gamma`` rows."""
    context, eta0 = model.encode(x)
    batch = eta0.shape[0]
    states = fixed_hypercube().sample(SamplingContext(eta0=eta0.detach(), target=y), num_samples, generator=generator)
    times = UniformTimeSampler().sample((batch, num_samples), like=eta0, generator=generator)
    flat_context = context.unsqueeze(1).expand(batch, num_samples, *context.shape[1:])
    return (
        states.reshape(batch * num_samples, *eta0.shape[1:]),
        flat_context.reshape(batch * num_samples, *context.shape[1:]),
        times.reshape(batch * num_samples),
    )


def lyapunov_pass(model: ODEModel, x: Tensor, y: Tensor, num_samples: int, generator: torch.Generator) -> None:
    """Forward + backward of the Monte Carlo Lyapunov loss (Algorithm 1, Eq. 45)."""
    out = monte_carlo_lyapunov_loss(
        model,
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=DEFAULT_KAPPA,
        state_sampler=fixed_hypercube(),
        time_sampler=UniformTimeSampler(),
        num_samples=num_samples,
        generator=generator,
    )
    out.loss.backward()


def objective_pass(model: ODEModel, x: Tensor, y: Tensor, num_samples: int, generator: torch.Generator) -> None:
    """The same loss through :meth:`MonteCarloObjective.compute`, as the trainer computes it:
    the public function's argument checks are done once per batch where the batch enters
    (``LyapunovTrainer`` checks it), not on every call. Same draws in the same order."""
    objective = MonteCarloObjective(
        state_sampler=fixed_hypercube(), time_sampler=UniformTimeSampler(), num_samples=num_samples
    )
    objective.compute(model, x, y, kappa=DEFAULT_KAPPA, generator=generator).loss.backward()


def field_pass(model: ODEModel, x: Tensor, y: Tensor, num_samples: int, generator: torch.Generator) -> None:
    """Forward + backward of ``sum f(eta, x, t)`` at the same samples: Algorithm 1's floor."""
    eta, context, t = sampled_inputs(model, x, y, num_samples, generator)
    model.vector_field(eta, context, t).sum().backward()


def overhead_cases(base: ODEModel, x: Tensor, y: Tensor, num_samples: int, device: torch.device) -> list[Case]:
    """Part 2: the Lyapunov loss and the bare field, on one model, from one seed per repeat."""
    model = copy.deepcopy(base).train()
    generator = torch.Generator(device=device)
    restore = restorer(model)

    def prepare() -> None:
        restore()
        model.zero_grad(set_to_none=True)
        generator.manual_seed(SEED)

    return [
        Case(
            "lyapunov_loss",
            "Monte Carlo Lyapunov loss, forward + backward",
            prepare,
            lambda: lyapunov_pass(model, x, y, num_samples, generator),
            model,
        ),
        Case(
            "lyapunov_objective",
            "Monte Carlo Lyapunov loss through the objective (the trainer's path), forward + backward",
            prepare,
            lambda: objective_pass(model, x, y, num_samples, generator),
            model,
        ),
        Case(
            "vector_field",
            "bare vector field f (sum), forward + backward",
            prepare,
            lambda: field_pass(model, x, y, num_samples, generator),
            model,
        ),
    ]


# ----------------------------------------------------------------- timing
def time_once(case: Case, device: torch.device) -> float:
    """Seconds for one ``case.run()`` after an untimed ``case.prepare()``."""
    case.prepare()
    synchronize(device)
    start = time.perf_counter()
    case.run()
    synchronize(device)
    return time.perf_counter() - start


def time_round_robin(
    cases: Sequence[Case], *, repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """``warmup`` untimed runs of each case, then ``repeats`` rounds timing every case once."""
    for case in cases:
        for _ in range(warmup):
            time_once(case, device)
    samples: dict[str, list[float]] = {case.key: [] for case in cases}
    for _ in range(repeats):
        for case in cases:
            samples[case.key].append(time_once(case, device))
    return samples


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile (all equal for one value)."""
    if len(values) < 2:
        only = float(values[0])
        return only, only, only
    q1, median, q3 = statistics.quantiles(values, n=QUARTILES, method="inclusive")
    return q1, median, q3


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """Median, quartiles and IQR of per-repeat seconds, with the raw samples."""
    q1, median, q3 = quartiles(samples)
    return {"median_s": median, "q1_s": q1, "q3_s": q3, "iqr_s": q3 - q1, "samples_s": list(samples)}


def ratio(samples: Sequence[float], reference: Sequence[float]) -> dict[str, float]:
    """Ratio of medians, with the quartiles of the per-round (paired) ratios as spread."""
    paired = [a / b for a, b in zip(samples, reference, strict=False)]
    q1, _, q3 = quartiles(paired)
    return {"ratio": statistics.median(samples) / statistics.median(reference), "paired_q1": q1, "paired_q3": q3}


def method_results(cases: Sequence[Case], samples: dict[str, list[float]]) -> dict[str, Any]:
    """Per method: label, timing summary, forward NFE where known, ratios to the references."""
    results: dict[str, Any] = {}
    for case in cases:
        entry = {"label": case.label, **summary(samples[case.key])}
        nfe = case.forward_nfe
        if nfe is not None:
            entry["forward_nfe"] = int(nfe)
        entry["ratios"] = {ref: ratio(samples[case.key], samples[ref]) for ref in REFERENCES}
        results[case.key] = entry
    return results


# ----------------------------------------------------------------- report
def machine_line(machine: dict[str, Any]) -> str:
    """One sentence: processor, torch, threads, device."""
    gpu = f" ({machine['gpu']})" if "gpu" in machine else ""
    return (
        f"Machine: {machine['processor']} ({machine['system']}), torch {machine['torch']}, "
        f"intra-op threads {machine['threads']}, device {machine['device']}{gpu}."
    )


def ratio_cell(value: dict[str, float]) -> str:
    """``ratio (paired q1-q3)``."""
    return f"{value['ratio']:.2f} ({value['paired_q1']:.2f}-{value['paired_q3']:.2f})"


def markdown(payload: dict[str, Any]) -> str:
    """The ratios table (Table 2 as ratios), the loss-overhead line and the machine line."""
    setup = payload["setup"]
    lines = [
        "| method | median ms | IQR ms | fwd NFE | x LyaNet MC fixed (Alg. 1) | x backprop RK4-10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for entry in payload["methods"].values():
        ratios = entry["ratios"]
        lines.append(
            f"| {entry['label']} | {1e3 * entry['median_s']:.2f} | {1e3 * entry['iqr_s']:.2f} | "
            f"{entry.get('forward_nfe', '-')} | {ratio_cell(ratios[REFERENCES[0]])} | "
            f"{ratio_cell(ratios[REFERENCES[1]])} |"
        )
    overhead = payload["loss_overhead"]
    if payload.get("wrapped"):
        lines += [
            "",
            wrapped_markdown(payload["wrapped"]),
            "",
            "Seconds per epoch of `LyapunovTrainer.fit` (median over epochs after one warm-up epoch, "
            "epochs of the three trainers interleaved) for the suite's model patterns on digits.",
        ]
    lines += [
        "",
        (
            f"Loss overhead of Algorithm 1: Lyapunov loss forward + backward "
            f"{1e3 * overhead['lyapunov_loss']['median_s']:.2f} ms vs bare vector field "
            f"{1e3 * overhead['vector_field']['median_s']:.2f} ms at the same samples: "
            f"ratio {ratio_cell(overhead['ratio'])} (the public function, which checks its arguments on "
            f"every call); through the objective as the trainer calls it (the batch checked once where it "
            f"enters) {1e3 * overhead['lyapunov_objective']['median_s']:.2f} ms: ratio "
            f"{ratio_cell(overhead['objective_ratio'])}."
        ),
        "",
        (
            f"One optimisation step (zero_grad + loss + backward + Adam step) on {setup['data']}; "
            f"batch {setup['batch_size']}, Gamma = {setup['num_samples']}, kappa = {setup['kappa']}; "
            f"median of {setup['repeats']} round-robin repeats after {setup['warmup']} warm-up runs, "
            f"parameters restored before each repeat. Ratios are ratios of medians; in brackets the "
            f"quartiles of the per-round (paired) ratios. fwd NFE: vector-field evaluations of the "
            f"forward solve (backward passes not counted)."
        ),
        "",
        machine_line(payload["machine"]),
    ]
    return "\n".join(lines) + "\n"


def main(
    *,
    repeats: int = DEFAULT_REPEATS,
    warmup: int = DEFAULT_WARMUP,
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    out_dir: Path | str = RESULTS_DIR,
    device: Optional[str | torch.device] = None,
    threads: Optional[int] = None,
    wrapped_models: bool = True,
) -> dict[str, Any]:
    """Time parts 1-3 (module docstring); write ``timing.json`` and ``timing.md``.

    Arguments:
        repeats: timed rounds (each times every method once), ``>= 1``.
        warmup: untimed runs of each method first.
        batch_size: examples per step.
        num_samples: ``Gamma`` for the Monte Carlo losses (the trainer's and part 2's).
        out_dir: where the JSON and markdown go.
        device: default CUDA when available, else the CPU.
        threads: torch intra-op threads during the run (restored afterwards); default
            torch's current setting.
        wrapped_models: also time part 3 (epochs of the wrapped model patterns).

    Returns:
        The JSON payload.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device) if device is not None else default_device()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        payload = measure(
            repeats=repeats,
            warmup=warmup,
            batch_size=batch_size,
            num_samples=num_samples,
            device=device,
            wrapped_models=wrapped_models,
        )
    finally:
        torch.set_num_threads(previous_threads)
    table = markdown(payload)
    write_outputs(Path(out_dir), RESULTS_NAME, payload, table)
    print(table)
    return payload


def measure(
    *, repeats: int, warmup: int, batch_size: int, num_samples: int, device: torch.device, wrapped_models: bool = True
) -> dict[str, Any]:
    """Build the cases, time both parts and assemble the JSON payload."""
    started = time.perf_counter()
    base, x, y, data = base_model_and_batch(batch_size, device)
    steps = step_cases(base, (x, y), device, num_samples)
    step_samples = time_round_robin(steps, repeats=repeats, warmup=warmup, device=device)
    losses = overhead_cases(base, x, y, num_samples, device)
    loss_samples = time_round_robin(losses, repeats=repeats, warmup=warmup, device=device)
    wrapped = wrapped_epochs(repeats=max(3, repeats // 5), device=device) if wrapped_models else {}
    payload: dict[str, Any] = {
        "machine": machine_description(device),
        "wrapped": wrapped,
        "setup": {
            "data": data,
            "batch_size": batch_size,
            "num_samples": num_samples,
            "kappa": DEFAULT_KAPPA,
            "repeats": repeats,
            "warmup": warmup,
            "encoder_lipschitz": ENCODER_LIPSCHITZ,
            "optimizer": f"Adam lr {LEARNING_RATE}",
            "dopri5_tolerance": DOPRI5_TOLERANCE,
            "references": list(REFERENCES),
        },
        "methods": method_results(steps, step_samples),
        "loss_overhead": {
            "lyapunov_loss": summary(loss_samples["lyapunov_loss"]),
            "vector_field": summary(loss_samples["vector_field"]),
            "ratio": ratio(loss_samples["lyapunov_loss"], loss_samples["vector_field"]),
            "lyapunov_objective": summary(loss_samples["lyapunov_objective"]),
            "objective_ratio": ratio(loss_samples["lyapunov_objective"], loss_samples["vector_field"]),
        },
    }
    payload["setup"]["wall_clock_seconds"] = round(time.perf_counter() - started, 1)
    return payload


def _parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS)
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES)
    parser.add_argument("--out-dir", default=str(RESULTS_DIR))
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    main(
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        num_samples=args.num_samples,
        out_dir=args.out_dir,
        device=args.device,
        threads=args.threads,
    )
