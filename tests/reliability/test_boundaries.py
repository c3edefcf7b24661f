"""Every public entry point checks its input at the boundary.

A bad argument ends in a ``TypeError``/``ValueError`` (or a documented library error) that
names the argument; never an error from inside torch, torchdyn or torchdiffeq, never a
silently defaulted result, and a trainer call that raised leaves parameters, optimizer and
scheduler state, epoch and history exactly as they were. The Hypothesis fuzzes count the
inputs they tried; ``pytest`` prints the totals at the end of the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    LyapunovTrainer,
    MarginPotential,
    MonteCarloObjective,
    NonFiniteLossError,
    ODEModel,
    PathIntegralObjective,
    SamplingContext,
    SolverError,
    StratifiedTimeSampler,
    TrajectorySampler,
    UniformTimeSampler,
)
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.trainer import MODES

from ..models import blobs, loader
from .state import assert_unchanged, snapshot

#: Inputs tried by the fuzzes of this module, reported by conftest's terminal summary.
FUZZ_COUNTS: dict[str, int] = {}

GARBAGE = [
    None,
    True,
    False,
    0,
    1,
    -1,
    3,
    0.5,
    2.5,
    -0.5,
    1e-9,
    math.nan,
    math.inf,
    -math.inf,
    10**30,
    "",
    "x",
    "1",
    "cpu",
    "raise",
    "skip",
    "cosine",
    "constant",
    "adam",
    "epoch",
    "monte_carlo",
    [],
    {},
    (1,),
    object(),
    torch.tensor(1.0),
    torch.tensor([1.0, 2.0]),
    torch.device("cpu"),
]


#: A valid value too large to run (the fuzz oracles accept it; it is not called).
TOO_BIG = 10**30


def fuzz_arguments(
    key: str,
    call: Callable[..., Any],
    base: dict[str, Any],
    oracle: dict[str, Callable[[Any], bool]],
    *,
    skip: Callable[[str, Any], bool] = lambda argument, value: False,
    documented: tuple[type[Exception], ...] = (),
) -> list[str]:
    """Call ``call(**base)`` with each value of :data:`GARBAGE` in place of each argument the
    ``oracle`` covers; return the problems: a valid value refused, an invalid one accepted, a
    ``TypeError``/``ValueError`` that does not name the argument, or any other error from
    inside (``documented`` library errors are fine for valid values when they name the
    argument, e.g. a ``SolverError`` for ``max_steps=1``). Counted under ``key``."""
    problems = []
    for argument, valid_of in oracle.items():
        for value in GARBAGE:
            valid = valid_of(value)
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if (valid and is_int and value == TOO_BIG) or skip(argument, value):
                continue
            FUZZ_COUNTS[key] = FUZZ_COUNTS.get(key, 0) + 1
            try:
                call(**{**base, argument: value})
            except documented as err:
                if not (valid and argument in str(err)):
                    problems.append(f"{argument}={value!r}: {type(err).__name__}: {err}")
                continue
            except (TypeError, ValueError) as err:
                if valid:
                    problems.append(f"{argument}={value!r} is valid but was refused: {type(err).__name__}: {err}")
                elif argument not in str(err):
                    problems.append(
                        f"{argument}={value!r}: the message does not name {argument}: {type(err).__name__}: {err}"
                    )
                continue
            except Exception as err:  # noqa: BLE001 - the fuzz reports any other error as a defect
                problems.append(f"{argument}={value!r}: {type(err).__name__} from inside: {err}")
                continue
            if not valid:
                problems.append(f"{argument}={value!r} was accepted")
    return problems


def _count(name: str) -> None:
    FUZZ_COUNTS[name] = FUZZ_COUNTS.get(name, 0) + 1


def _model(seed: int = 0) -> ODEModel:
    torch.manual_seed(seed)
    return ODEModel(
        MLPDynamics(2, 2, (8,)), state_shape=(2,), encoder=nn.Identity(), solver=FixedStepSolver(method="rk4", steps=2)
    )


def _real(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


#: For each constructor argument: whether a value is valid (the oracle the fuzz checks against).
#: The deprecated keyword settings (``lr``, ``mode``, ...) take ``None`` for "the recipe's value".
VALID = {
    "kappa": lambda v: v is None or (_real(v) and v > 0),  # None: the recipe's kappa
    "lr": lambda v: v is None or (_real(v) and v > 0),
    "weight_decay": lambda v: v is None or (_real(v) and v >= 0),
    "grad_clip": lambda v: v is None or (_real(v) and v > 0),
    "nonfinite": lambda v: v in ("raise", "skip") and isinstance(v, str),
    "scheduler": lambda v: v is None or (isinstance(v, str) and v in ("cosine", "constant")),
    "scheduler_interval": lambda v: v is None or (isinstance(v, str) and v in ("epoch", "step")),
    "optimizer": lambda v: v is None or (isinstance(v, str) and v in ("adam", "adamw", "sgd")),
    "progress": lambda v: isinstance(v, bool),
    "seed": lambda v: v is None or (_int(v) and 0 <= v < 2**64),
    "device": lambda v: v is None or (isinstance(v, str) and v == "cpu") or isinstance(v, torch.device),
    "t_end": lambda v: v is None or (_real(v) and math.isclose(v, 1.0)),
    "mode": lambda v: v is None or (isinstance(v, str) and v in MODES),
    "num_samples": lambda v: v is None or (_int(v) and 1 <= v < 2**63),
    "path_steps": lambda v: v is None or (_int(v) and 1 <= v < 2**63),
    "detach_v": lambda v: v is None or isinstance(v, bool),
}


@given(argument=st.sampled_from(sorted(VALID)), value=st.sampled_from(GARBAGE))
def test_the_trainer_constructor_accepts_exactly_the_valid_values(argument, value):
    _count("LyapunovTrainer(...) arguments")
    try:
        trainer = (
            LyapunovTrainer(_model(), progress=False, **{argument: value})
            if argument != "progress"
            else LyapunovTrainer(_model(), progress=value)
        )
    except (TypeError, ValueError) as err:
        assert not VALID[argument](value), f"{argument}={value!r} is valid but was refused: {err}"
        assert argument in str(err), f"the message does not name {argument}: {err}"
        return
    assert VALID[argument](value), f"{argument}={value!r} was accepted"
    assert isinstance(trainer, LyapunovTrainer)


@given(
    dtype=st.sampled_from([torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float32, torch.bool]),
    low=st.integers(-3, 4),
    high=st.integers(-3, 6),
    batch=st.integers(1, 5),
    extra_dim=st.booleans(),
    potential=st.sampled_from([CrossEntropyPotential(), MarginPotential()]),
)
def test_class_labels_are_used_or_refused_with_the_argument_named(dtype, low, high, batch, extra_dim, potential):
    _count("potential targets")
    classes = 3
    logits = torch.randn(batch, classes, dtype=torch.float64)
    low, high = min(low, high), max(low, high)
    values = torch.linspace(low, high, batch).round().to(torch.int64)
    if dtype in (torch.uint8, torch.bool):
        values = values.clamp(min=0)
    target = values.to(dtype)
    if extra_dim:
        target = target[:, None]
    valid = (
        dtype not in (torch.float32, torch.bool)
        and not extra_dim
        and int(values.min()) >= 0
        and int(values.max()) < classes
    )
    try:
        v = potential.value(logits, target)
    except (TypeError, ValueError) as err:
        assert not valid, f"valid labels {target} refused: {err}"
        assert "target" in str(err)
        return
    assert valid, f"labels {target} (dtype {dtype}) were accepted"
    assert v.shape == (batch,) and bool(torch.isfinite(v).all())
    if isinstance(potential, CrossEntropyPotential):
        torch.testing.assert_close(v, F.cross_entropy(logits, values, reduction="none"))


@pytest.fixture
def trained():
    x, y = blobs(64, seed=1)
    trainer = LyapunovTrainer(_model(), progress=False, seed=0)
    trainer.fit(loader(x, y), epochs=1)
    return trainer, x, y


def _calls(tmp_path, x, y):
    nan_x = x.clone()
    nan_x[3, 0] = math.nan
    return {
        # fit: loaders, epochs, paths, batches
        "fit(None)": (lambda t: t.fit(None, 2), TypeError, "train_loader"),
        "fit(tensor)": (lambda t: t.fit(x, 2), TypeError, "train_loader"),
        "fit(epochs=0)": (lambda t: t.fit(loader(x, y), 0), ValueError, "epochs"),
        "fit(epochs='3')": (lambda t: t.fit(loader(x, y), "3"), TypeError, "epochs"),
        "fit(val_loader=5)": (lambda t: t.fit(loader(x, y), 2, val_loader=5), TypeError, "val_loader"),
        "fit(checkpoint_path=dir)": (
            lambda t: t.fit(loader(x, y), 2, checkpoint_path=tmp_path),
            ValueError,
            "checkpoint_path",
        ),
        "fit(checkpoint_path=3)": (lambda t: t.fit(loader(x, y), 2, checkpoint_path=3), TypeError, "checkpoint_path"),
        "fit(metrics_path=.txt)": (
            lambda t: t.fit(loader(x, y), 2, metrics_path=tmp_path / "m.txt"),
            ValueError,
            "metrics_path",
        ),
        "fit(labels out of range)": (lambda t: t.fit([(x, y + 5)], 2), ValueError, "target"),
        "fit(float labels)": (lambda t: t.fit([(x, y.float())], 2), TypeError, "target"),
        "fit(y batch)": (lambda t: t.fit([(x, y[:5])], 2), ValueError, "y"),
        "fit(batch not a pair)": (lambda t: t.fit([x], 2), TypeError, "batches"),
        "fit(x a string)": (lambda t: t.fit([("a", y)], 2), TypeError, "x"),
        "fit(NaN input)": (lambda t: t.fit([(nan_x, y)], 2), NonFiniteLossError, "epoch 2, step 0"),
        "fit(integer x)": (lambda t: t.fit([((x * 10).long(), y)], 2), TypeError, "x of dtype torch.int64"),
        # inference
        "predict('x')": (lambda t: t.predict("x"), TypeError, "x"),
        "predict(t_end=-1)": (lambda t: t.predict(x, t_end=-1), ValueError, "t_end"),
        "predict(t_end=nan)": (lambda t: t.predict(x, t_end=math.nan), ValueError, "t_end"),
        "predict(empty)": (lambda t: t.predict(x[:0]), ValueError, "x"),
        "predict(NaN)": (lambda t: t.predict(nan_x), ValueError, "x"),
        "evaluate([])": (lambda t: t.evaluate([]), ValueError, "loader"),
        "evaluate(None)": (lambda t: t.evaluate(None), TypeError, "loader"),
        "evaluate(labels out of range)": (lambda t: t.evaluate([(x, y + 5)]), ValueError, "target"),
        "loss_error_curve(labels out of range)": (lambda t: t.loss_error_curve([(x, y + 5)]), ValueError, "target"),
        "loss_error_curve([])": (lambda t: t.loss_error_curve([]), ValueError, "data"),
        # checkpoints
        "save(None)": (lambda t: t.save(None), TypeError, "path"),
        "save(dir)": (lambda t: t.save(tmp_path), ValueError, "path"),
        "resume(None)": (lambda t: t.resume(None), TypeError, "path"),
        "resume(missing)": (lambda t: t.resume(tmp_path / "missing.pt"), FileNotFoundError, "missing.pt"),
    }


def test_every_trainer_call_names_the_bad_argument_and_changes_nothing(trained, tmp_path):
    trainer, x, y = trained
    for name, (call, error, mentioned) in _calls(tmp_path, x, y).items():
        before = snapshot(trainer)
        with pytest.raises(error) as caught:
            call(trainer)
        assert mentioned in str(caught.value), f"{name}: {caught.value}"
        assert_unchanged(trainer, before)
        _count("trainer calls")


def test_a_bad_validation_batch_leaves_a_consistent_trainer(trained):
    """The epoch completes before validation runs: if validation raises, the trainer's
    epoch and history describe its (trained) parameters."""
    trainer, x, y = trained
    with pytest.raises(ValueError, match="target"):
        trainer.fit(loader(x, y), 2, val_loader=[(x, y + 2)])
    assert trainer.epoch == 2 and len(trainer.history) == 2 and trainer.history[-1]["epoch"] == 2


class _NaNDynamics(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, eta, x, t):
        return self.lin(torch.cat([eta, x], 1)) * math.nan


def test_a_certificate_of_nan_dynamics_is_refused_not_reported():
    x, y = blobs(16, seed=1)
    trainer = LyapunovTrainer(ODEModel(_NaNDynamics(), state_shape=(2,)), progress=False, seed=0)
    with pytest.raises(ValueError, match="NaN/Inf at"):
        trainer.certificate(loader(x, y), num_samples=4)


def test_numpy_style_inputs_are_cast_to_the_model():
    """float64 features (numpy's default) and uint8 labels train a float32 model exactly as
    float32 features and int64 labels do."""
    x, y = blobs(64, seed=1)
    runs = []
    for features, labels in ((x, y), (x.double(), y.to(torch.uint8))):
        torch.manual_seed(0)
        trainer = LyapunovTrainer(_model(), progress=False, seed=0)
        trainer.fit(loader(features, labels, shuffle=False), epochs=2)
        runs.append(trainer)
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert runs[1].predict(x.double()).dtype == torch.float32
    assert runs[1].evaluate((x.double(), y.to(torch.int16))) == runs[0].evaluate((x, y))


def test_objectives_and_losses_name_bad_arguments():
    x, y = blobs(8, seed=1)
    model = _model()
    cases = [
        (lambda: MonteCarloObjective()(model, x, y, generator="g"), TypeError, "generator"),
        (lambda: MonteCarloObjective()(model, x, y, kappa=-1.0), ValueError, "kappa"),
        (lambda: MonteCarloObjective()(nn.Linear(2, 2), x, y), TypeError, "not supported"),
        (lambda: PathIntegralObjective()(model, x, y + 4), ValueError, "target"),
        (lambda: MonteCarloObjective(num_samples=0), ValueError, "num_samples"),
        (lambda: PathIntegralObjective(steps="4"), TypeError, "steps"),
        (lambda: PathIntegralObjective(detach_v="false"), TypeError, "detach_v"),
        (lambda: PathIntegralObjective(form="exact"), ValueError, "form"),
    ]
    for call, error, mentioned in cases:
        with pytest.raises(error, match=mentioned):
            call()
        _count("objective calls")


@given(
    like=st.sampled_from(["x", None, torch.zeros(1, dtype=torch.long), torch.zeros(2)]),
    shape=st.sampled_from([(2, 3), "ab", (2, -1), (True, 2), 3, [4]]),
    sampler=st.sampled_from([UniformTimeSampler(), StratifiedTimeSampler()]),
)
def test_time_samplers_name_a_bad_like_or_shape(like, shape, sampler):
    _count("time sampler calls")
    valid_like = isinstance(like, torch.Tensor) and like.is_floating_point()
    valid_shape = shape in ((2, 3), 3, [4])
    try:
        times = sampler.sample(shape, like=like)
    except (TypeError, ValueError) as err:
        assert not (valid_like and valid_shape), err
        assert ("like" in str(err)) if not valid_like else ("shape" in str(err))
        return
    assert valid_like and valid_shape
    assert times.dtype == like.dtype and bool(((times >= 0) & (times <= 1)).all())


def test_sampling_contexts_keep_one_dtype():
    with pytest.raises(TypeError, match="trajectory must have dtype torch.float32"):
        SamplingContext(eta0=torch.zeros(2, 3), trajectory=torch.zeros(4, 2, 3, dtype=torch.float64))
    context = SamplingContext(eta0=torch.zeros(2, 3), trajectory=torch.zeros(4, 2, 3))
    assert TrajectorySampler(noise_std=0.1).sample(context, 5).dtype == torch.float32


# ----------------------------------------------------------------------------- adapters
class _NaNField(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x):
        return self.lin(x) * math.nan


class _NaNFunc(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, t, y):
        return self.lin(y) * math.nan


def test_a_nan_field_under_dopri5_ends_in_a_solver_error_not_a_hang():
    pytest.importorskip("torchdyn")
    pytest.importorskip("torchdiffeq")
    from torchdyn.core import NeuralODE

    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

    started = time.perf_counter()
    trainer = LyapunovTrainer(NeuralODE(_NaNField(), solver="dopri5", return_t_eval=False), progress=False)
    with pytest.raises(SolverError, match="NaN/Inf"):
        trainer.predict(torch.randn(4, 2))
    with pytest.raises(SolverError, match="NaN/Inf"):
        TorchdiffeqModel(_NaNFunc()).trajectory(torch.randn(4, 2), torch.tensor([0.0, 1.0]))
    stiff = TorchdiffeqModel(lambda t, y: -1e7 * y, rtol=1e-9, atol=1e-9, max_evaluations=500)
    with pytest.raises(SolverError, match="max_evaluations=500"):
        stiff.trajectory(torch.randn(4, 2), torch.tensor([0.0, 1.0]))
    assert time.perf_counter() - started < 60  # a hang would run for ever; generous for a busy CI machine


def test_adapters_validate_their_settings_and_time_grids():
    pytest.importorskip("torchdyn")
    pytest.importorskip("torchdiffeq")
    from torchdyn.core import NeuralODE

    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel
    from lyapunov_plugin.adapters.torchdyn import TorchdynModel

    node = NeuralODE(nn.Linear(2, 2), solver="rk4", return_t_eval=False)
    func = lambda t, y: -y  # noqa: E731
    cases = [
        (lambda: TorchdynModel(node, t_end=math.nan), ValueError, "t_end"),
        (lambda: TorchdynModel(node, t_end=0), ValueError, "t_end"),
        (lambda: TorchdynModel(node, max_evaluations=0), ValueError, "max_evaluations"),
        (lambda: TorchdiffeqModel(func, encoder=3), TypeError, "encoder"),
        (lambda: TorchdiffeqModel(func, readout=3), TypeError, "readout"),
        (lambda: TorchdiffeqModel(func, adjoint="false"), TypeError, "adjoint"),
        (lambda: TorchdiffeqModel(func, options=[1]), TypeError, "options"),
        (lambda: TorchdiffeqModel(func, rtol=-1), ValueError, "rtol"),
    ]
    model = TorchdiffeqModel(func)
    for ts in (
        torch.tensor([0.0, math.nan]),
        torch.tensor([0.0, 1.0, 0.5]),
        torch.zeros(2, 2),
        torch.tensor([0.0]),
        torch.tensor([0, 1]),
    ):
        cases.append((lambda ts=ts: model.trajectory(torch.randn(3, 2), ts), (TypeError, ValueError), "ts"))
    for call, error, mentioned in cases:
        with pytest.raises(error, match=mentioned):
            call()
        _count("adapter calls")


class _WrongShape(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x):
        return self.lin(x)


def test_a_field_of_the_wrong_shape_is_named_not_crashed_inside_torchdyn():
    pytest.importorskip("torchdyn")
    from torchdyn.core import NeuralODE

    trainer = LyapunovTrainer(NeuralODE(_WrongShape(), solver="dopri5", return_t_eval=False), progress=False)
    with pytest.raises(SolverError, match=r"state's shape \(4, 2\), got \(4, 1\)"):
        trainer.predict(torch.randn(4, 2))
