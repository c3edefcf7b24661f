"""Boundary fuzz of the entry points this round added (issue 17): ``Recipe``,
``default_recipe``, ``LyapunovTrainer``'s recipe shortcuts, ``anytime_predict``, ``certify``,
``register_adapter`` and the torchode adapter. Each is called with every value of
:data:`~tests.reliability.test_boundaries.GARBAGE` in place of each argument (the others
valid); an oracle says which values are valid. A valid value must give a result, an invalid one
a ``TypeError``/``ValueError`` that names the argument. Counted in ``FUZZ_COUNTS``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lyapunov_plugin import (
    CrossEntropyPotential,
    FixedStepSolver,
    KappaSchedule,
    LyapunovTrainer,
    MonteCarloObjective,
    Objective,
    ODEModel,
    Potential,
    Recipe,
    SolverError,
    anytime_predict,
    certify,
    default_recipe,
    register_adapter,
    unregister_adapter,
)
from lyapunov_plugin.blocks import MLPDynamics

from .test_boundaries import FUZZ_COUNTS, fuzz_arguments


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return _real(v) and v > 0


def _non_negative(v: Any) -> bool:
    return _real(v) and v >= 0


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**63


def _none(v: Any) -> bool:
    return v is None


def _model() -> ODEModel:
    torch.manual_seed(0)
    return ODEModel(
        MLPDynamics(2, 2, (8,)),
        state_shape=(2,),
        encoder=nn.Identity(),
        solver=FixedStepSolver(method="rk4", steps=2),
    )


X = torch.tensor([[1.0, -1.0], [0.5, 0.2], [-1.0, 1.0]])
Y = torch.tensor([0, 1, 1])


def _recipe(**kw: Any) -> Any:
    return Recipe(**kw)


def _trainer_shortcuts(**kw: Any) -> Any:
    return LyapunovTrainer(_model(), progress=False, **kw)


def _register(**kw: Any) -> Any:
    entry = register_adapter(**kw)
    unregister_adapter(kw["name"])
    return entry


CASES: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, Callable[[Any], bool]]]] = {
    "Recipe": (
        _recipe,
        {},
        {
            "objective": lambda v: v is None or isinstance(v, Objective),
            "potential": lambda v: v is None or isinstance(v, Potential),
            # None: resolved with the objective (10 / 1e-2, or the bare flow's 3 / 3e-2)
            "kappa": lambda v: v is None or _positive(v) or isinstance(v, KappaSchedule),
            "optimizer": lambda v: v in ("adam", "adamw", "sgd", "nero"),
            "lr": lambda v: v is None or _positive(v),
            "weight_decay": _non_negative,
            "schedule": lambda v: v in ("cosine", "constant"),
            "schedule_interval": lambda v: v in ("epoch", "step"),
            "grad_clip": lambda v: v is None or _positive(v),
        },
    ),
    "default_recipe": (
        default_recipe,
        {"model": _model(), "x": X, "potential": None},
        {"potential": lambda v: v is None or isinstance(v, Potential)},
    ),
    "LyapunovTrainer(recipe/objective/kappa)": (
        _trainer_shortcuts,
        {},
        {
            "recipe": lambda v: v is None or isinstance(v, (Recipe, Objective)),
            "objective": lambda v: v is None or isinstance(v, Objective),
            "kappa": lambda v: v is None or _positive(v) or isinstance(v, KappaSchedule),
        },
    ),
    "anytime_predict": (
        anytime_predict,
        {"model": _model(), "x": X, "solver": "dopri5"},
        {
            # 0: never stop early; None: DEFAULT_LEVEL (classification; required for regression)
            "level": lambda v: v is None or _non_negative(v),
            "kappa": _non_negative,
            "patience": _positive_int,
            "potential": lambda v: v is None or isinstance(v, Potential),
            "solver": lambda v: v in ("auto", "dopri5", "rk4"),
            "steps": _none,  # steps apply to solver="rk4" only
            "rtol": _positive,
            "atol": _positive,
            "t_end": lambda v: v is None or _positive(v),
            "max_steps": _positive_int,
            "first_step": lambda v: v is None or v == "torchdiffeq" or _positive(v),
        },
    ),
    "certify": (
        certify,
        {"model": _model(), "x": X, "y": Y, "eps": 0.01},
        {
            "eps": _non_negative,
            "norm": lambda v: v in ("linf", "l2"),
            "solver": _none,
            "domain": _none,
            "dtype": lambda v: False,  # torch.float32 / torch.float64 only; GARBAGE holds neither
            "batch_size": _positive_int,
        },
    ),
    "register_adapter": (
        _register,
        {"name": "fuzz-adapter", "matches": lambda m: False, "wrap": lambda m: m},
        {
            "name": lambda v: isinstance(v, str) and v != "",
            "matches": callable,
            "wrap": callable,
            "requires": lambda v: v is None or (isinstance(v, str) and v != ""),
            "description": lambda v: isinstance(v, str),
            "fallback": lambda v: isinstance(v, bool),
            "replace": lambda v: isinstance(v, bool),
        },
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_argument_of_the_new_entry_points_is_checked(name):
    call, base, oracle = CASES[name]
    # SolverError is the documented answer to a valid but too small budget (max_steps=1).
    problems = fuzz_arguments(f"entry:{name}", call, base, oracle, documented=(SolverError,))
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_the_torchode_adapter_names_bad_settings():
    pytest.importorskip("torchode")
    from lyapunov_plugin.adapters.torchode import TorchodeModel

    field = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))

    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = field

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.net(y)

    oracle: dict[str, Callable[[Any], bool]] = {
        "method": lambda v: v is None or v in ("dopri5", "tsit5", "euler", "midpoint", "heun"),
        "atol": lambda v: v is None or _positive(v),
        "rtol": lambda v: v is None or _positive(v),
        "max_steps": _positive_int,
        "t_end": _positive,
        "state_shape": _none,  # a zero initial state needs a conditioned field
    }
    problems = fuzz_arguments("entry:TorchodeModel", lambda **kw: TorchodeModel(Field(), **kw), {}, oracle)
    assert not problems, "\n".join(problems)


def test_certify_and_anytime_refuse_bad_tensors_by_name():
    model = _model()
    # (a wrong feature width is only known to the model's own layers, as in the trainer)
    for bad, name in (([[1.0, 2.0]], "x"), (torch.tensor([[math.nan, 0.0]]), "x"), (torch.zeros(0, 2), "x")):
        with pytest.raises((TypeError, ValueError), match=name):
            anytime_predict(model, bad)
        FUZZ_COUNTS["entry:tensors"] = FUZZ_COUNTS.get("entry:tensors", 0) + 1
    for y, name in ((torch.tensor([0, 1]), "y"), (torch.tensor([0, 1, 5]), "y"), (torch.ones(3), "y")):
        with pytest.raises((TypeError, ValueError), match=name):
            certify(model, X, y, eps=0.01)
        FUZZ_COUNTS["entry:tensors"] = FUZZ_COUNTS.get("entry:tensors", 0) + 1
    assert isinstance(CrossEntropyPotential(), Potential) and isinstance(MonteCarloObjective(), Objective)
