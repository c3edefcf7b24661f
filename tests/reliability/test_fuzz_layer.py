"""Boundary fuzz of the loss / potential / sampler / diagnostic layer (issue 17).

Every public function and class of ``losses``, ``potentials``, ``samplers``,
``diagnostics``, ``solvers``, ``schedules`` and ``budget`` is called with each value of
:data:`~tests.reliability.test_boundaries.GARBAGE` in place of each of its arguments (all
other arguments valid). The oracle says which of those values are valid; a valid value must
give a result, an invalid one a ``TypeError``/``ValueError`` whose message names the
argument. The counts go into the shared ``FUZZ_COUNTS`` that conftest prints.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st

from lyapunov_plugin import (
    CounterexampleSearch,
    CrossEntropyPotential,
    FixedStepSolver,
    HypercubeSampler,
    HypersphereSampler,
    MarginPotential,
    MixtureSampler,
    MSEPotential,
    ODEModel,
    RolloutSampler,
    SamplingContext,
    StratifiedTimeSampler,
    TrajectorySampler,
    UniformTimeSampler,
    appendix_b_half_width,
    discrete_path_lyapunov_loss,
    lyapunov_loss,
    monte_carlo_lyapunov_loss,
    path_lyapunov_loss,
)
from lyapunov_plugin import diagnostics as dg
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.budget import EvaluationBudget
from lyapunov_plugin.potentials import Potential, readout_jvp
from lyapunov_plugin.schedules import ConstantKappa, KappaWarmup, constant_kappa

from .test_boundaries import FUZZ_COUNTS, fuzz_arguments

B, S, T = 4, 2, 3


def _real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def pos(v: Any) -> bool:
    return _real(v) and v > 0


def nonneg(v: Any) -> bool:
    return _real(v) and v >= 0


def unit(v: Any) -> bool:
    return _real(v) and 0 < v < 1


def pint(v: Any) -> bool:
    return _int(v) and 1 <= v < 2**63


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def never(v: Any) -> bool:
    return False


def is_none(v: Any) -> bool:
    return v is None


def none_or(pred: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or pred(v)


def callable_or_none(v: Any) -> bool:
    return v is None or callable(v)


def grid(v: Any) -> bool:
    """A time grid: 1-D floating tensor of >= 2 increasing times."""
    return (
        isinstance(v, torch.Tensor)
        and v.is_floating_point()
        and v.ndim == 1
        and v.numel() >= 2
        and bool((v[1:] > v[:-1]).all())
    )


def _model(seed: int = 0) -> ODEModel:
    torch.manual_seed(seed)
    return ODEModel(
        MLPDynamics(S, S, (8,)), state_shape=(S,), encoder=nn.Identity(), solver=FixedStepSolver(method="rk4", steps=2)
    )


def _data() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, S, generator=g)
    y = torch.arange(B) % S
    return {
        "model": _model(),
        "x": x,
        "y": y,
        "eta": torch.randn(B, S, generator=g),
        "velocity": torch.randn(B, S, generator=g),
        "trajectory": torch.randn(T, B, S, generator=g),
        "ts": torch.linspace(0.0, 1.0, T),
    }


D = _data()
CE = CrossEntropyPotential()
CUBE = HypercubeSampler(half_width=1.0)
CONTEXT = SamplingContext(eta0=D["eta"], target=D["y"], trajectory=D["trajectory"], trajectory_times=D["ts"])


def _ctx_ok(v: Any) -> bool:
    return isinstance(v, SamplingContext)


#: name -> (call(**kwargs), valid kwargs, {argument: oracle}).
CASES: dict[str, tuple[Callable[..., Any], dict[str, Any], dict[str, Callable[[Any], bool]]]] = {
    "lyapunov_loss": (
        lambda eta, velocity, target, **kw: lyapunov_loss(eta, velocity, target, **kw),
        dict(
            eta=D["eta"], velocity=D["velocity"], target=D["y"], potential=CE, kappa=1.0, readout=None, detach_v=False
        ),
        dict(
            eta=never,
            velocity=never,
            target=never,
            potential=never,
            kappa=pos,
            readout=callable_or_none,
            detach_v=boolean,
        ),
    ),
    "monte_carlo_lyapunov_loss": (
        lambda model, x, target, **kw: monte_carlo_lyapunov_loss(model, x, target, **kw),
        dict(
            model=D["model"],
            x=D["x"],
            target=D["y"],
            potential=CE,
            kappa=1.0,
            state_sampler=CUBE,
            time_sampler=UniformTimeSampler(),
            num_samples=3,
            detach_v=False,
            trajectory=None,
            trajectory_times=None,
            generator=None,
            counterexamples=None,
            velocity_penalty=0.0,
        ),
        dict(
            model=never,
            x=never,
            target=never,
            potential=never,
            kappa=pos,
            state_sampler=never,
            time_sampler=never,
            num_samples=pint,
            detach_v=boolean,
            trajectory=is_none,
            trajectory_times=lambda v: (
                v is None or (isinstance(v, torch.Tensor) and v.ndim == 1 and v.is_floating_point())
            ),
            generator=is_none,
            counterexamples=is_none,
            velocity_penalty=nonneg,
        ),
    ),
    "discrete_path_lyapunov_loss": (
        lambda trajectory, target, **kw: discrete_path_lyapunov_loss(trajectory, target, **kw),
        dict(trajectory=D["trajectory"], target=D["y"], potential=CE, kappa=0.5, readout=None, detach_v=False),
        dict(trajectory=never, target=never, potential=never, kappa=unit, readout=callable_or_none, detach_v=boolean),
    ),
    "path_lyapunov_loss": (
        lambda model, x, target, ts, **kw: path_lyapunov_loss(model, x, target, ts, **kw),
        dict(
            model=D["model"],
            x=D["x"],
            target=D["y"],
            ts=D["ts"],
            potential=CE,
            kappa=1.0,
            trajectory=None,
            solver=None,
            detach_states=False,
            detach_v=False,
        ),
        dict(
            model=never,
            x=never,
            target=never,
            ts=grid,
            potential=never,
            kappa=pos,
            trajectory=is_none,
            solver=is_none,
            detach_states=boolean,
            detach_v=boolean,
        ),
    ),
    "CounterexampleSearch": (
        lambda **kw: CounterexampleSearch(**kw),
        dict(steps=3, step_size=0.25, fraction=0.5),
        dict(steps=pint, step_size=pos, fraction=lambda v: _real(v) and 0 < v <= 1),
    ),
    **{
        f"{type(p).__name__}.evaluate": (
            lambda eta, velocity, target, p=p, **kw: p.evaluate(eta, velocity, target, **kw),
            dict(eta=D["eta"], velocity=D["velocity"], target=t, readout=None, validate=True),
            dict(eta=never, velocity=never, target=never, readout=callable_or_none, validate=boolean),
        )
        for p, t in ((CE, D["y"]), (MarginPotential(), D["y"]), (MSEPotential(), torch.zeros(B, S)))
    },
    **{
        f"{type(p).__name__}.value": (
            lambda output, target, p=p: p.value(output, target),
            dict(output=D["eta"], target=t),
            dict(output=never, target=never),
        )
        for p, t in ((CE, D["y"]), (MarginPotential(), D["y"]), (MSEPotential(), torch.zeros(B, S)))
    },
    "CrossEntropyPotential": (lambda **kw: CrossEntropyPotential(**kw), dict(gamma=0.0), dict(gamma=nonneg)),
    "readout_jvp": (
        lambda readout, eta, velocity: readout_jvp(readout, eta, velocity),
        dict(readout=None, eta=D["eta"], velocity=D["velocity"]),
        dict(readout=callable_or_none, eta=never, velocity=never),
    ),
    "SamplingContext": (
        lambda **kw: SamplingContext(**kw),
        dict(eta0=D["eta"], target=D["y"], trajectory=D["trajectory"], trajectory_times=D["ts"]),
        dict(eta0=never, target=is_none, trajectory=is_none, trajectory_times=is_none),
    ),
    "HypercubeSampler": (
        lambda **kw: HypercubeSampler(**kw),
        dict(half_width=1.0, center="origin", cover=None),
        dict(
            half_width=pos,
            center=lambda v: isinstance(v, str) and v in ("origin", "initial"),
            cover=lambda v: v is None or (_real(v) and v >= 1),
        ),
    ),
    **{
        f"{type(s).__name__}.sample": (
            lambda context, num_samples, s=s, **kw: s.sample(context, num_samples, **kw),
            dict(context=CONTEXT, num_samples=3, generator=None),
            dict(context=never, num_samples=pint, generator=is_none),
        )
        for s in (
            CUBE,
            HypercubeSampler(half_width=1.0, cover=1.5, center="initial"),
            HypersphereSampler(radius=1.0),
            TrajectorySampler(noise_std=0.1),
            RolloutSampler(),
            MixtureSampler((CUBE, TrajectorySampler()), (0.5, 0.5)),
        )
    },
    "RolloutSampler.sample_with_times": (
        lambda context, num_samples, **kw: RolloutSampler().sample_with_times(context, num_samples, **kw),
        dict(context=CONTEXT, num_samples=3, generator=None),
        dict(context=never, num_samples=pint, generator=is_none),
    ),
    "HypersphereSampler": (
        lambda **kw: HypersphereSampler(**kw),
        dict(radius=1.0, center="origin"),
        dict(radius=pos, center=lambda v: isinstance(v, str) and v in ("origin", "initial")),
    ),
    "HypersphereSampler.around_hypercube": (
        lambda half_width, state_dim, **kw: HypersphereSampler.around_hypercube(half_width, state_dim, **kw),
        dict(half_width=1.0, state_dim=2, center="origin"),
        dict(half_width=pos, state_dim=pint, center=lambda v: isinstance(v, str) and v in ("origin", "initial")),
    ),
    "TrajectorySampler": (lambda **kw: TrajectorySampler(**kw), dict(noise_std=0.1), dict(noise_std=nonneg)),
    "RolloutSampler": (
        lambda **kw: RolloutSampler(**kw),
        dict(noise_scales=(0.0, 0.1)),
        dict(noise_scales=lambda v: isinstance(v, tuple) and len(v) > 0 and all(nonneg(s) for s in v)),
    ),
    "MixtureSampler": (
        lambda samplers, weights: MixtureSampler(samplers, weights),
        dict(samplers=(CUBE,), weights=(1.0,)),
        dict(samplers=never, weights=lambda v: isinstance(v, tuple) and len(v) == 1 and pos(v[0])),
    ),
    "MixtureSampler.allocation": (
        lambda num_samples: MixtureSampler((CUBE, CUBE), (0.3, 0.7)).allocation(num_samples),
        dict(num_samples=5),
        dict(num_samples=pint),
    ),
    **{
        f"{cls.__name__}": (
            lambda cls=cls, **kw: cls(**kw),
            dict(t_start=0.0, t_end=1.0),
            dict(t_start=lambda v: _real(v) and v < 1.0, t_end=lambda v: _real(v) and v > 0.0),
        )
        for cls in (UniformTimeSampler, StratifiedTimeSampler)
    },
    **{
        f"{cls.__name__}.sample": (
            lambda shape, cls=cls, **kw: cls().sample(shape, **kw),
            dict(shape=(2, 3), like=D["eta"], generator=None),
            dict(
                shape=lambda v, cls=cls: (
                    (_int(v) and 0 <= v < 2**63)
                    or (isinstance(v, (tuple, list)) and (len(v) > 0 or cls is UniformTimeSampler))
                ),
                like=lambda v: isinstance(v, torch.Tensor) and v.is_floating_point(),
                generator=is_none,
            ),
        )
        for cls in (UniformTimeSampler, StratifiedTimeSampler)
    },
    "appendix_b_half_width": (
        lambda kappa, num_classes: appendix_b_half_width(kappa, num_classes),
        dict(kappa=1.0, num_classes=3),
        dict(kappa=pos, num_classes=lambda v: _int(v) and 2 <= v < 2**63),
    ),
    "FixedStepSolver": (
        lambda **kw: FixedStepSolver(**kw),
        dict(method="rk4", steps=2),
        dict(method=lambda v: isinstance(v, str) and v in ("euler", "midpoint", "rk4"), steps=lambda v: pint(v)),
    ),
    "FixedStepSolver.__call__": (
        lambda func, y0, ts: FixedStepSolver(steps=2)(func, y0, ts),
        dict(func=lambda t, y: -y, y0=D["eta"], ts=D["ts"]),
        dict(
            func=never,
            y0=lambda v: isinstance(v, torch.Tensor) and v.is_floating_point(),
            ts=lambda v: grid(v) or (isinstance(v, torch.Tensor) and v.ndim == 1 and v.numel() == 2),
        ),
    ),
    "ConstantKappa": (lambda **kw: ConstantKappa(**kw), dict(value=1.0), dict(value=pos)),
    "constant_kappa": (lambda value: constant_kappa(value), dict(value=1.0), dict(value=pos)),
    "KappaWarmup": (
        lambda **kw: KappaWarmup(**kw),
        dict(start=1.0, end=2.0, epochs=3, shape="linear"),
        dict(
            start=lambda v: pos(v) and v < 1e300,
            end=pos,
            epochs=pint,
            shape=lambda v: isinstance(v, str) and v in ("linear", "geometric"),
        ),
    ),
    "KappaWarmup.__call__": (
        lambda epoch: KappaWarmup(start=1.0, end=2.0, epochs=3)(epoch),
        dict(epoch=2),
        dict(epoch=lambda v: _int(v) and v >= 0),
    ),
    "EvaluationBudget": (
        lambda max_evaluations, **kw: EvaluationBudget(max_evaluations, **kw),
        dict(max_evaluations=10, source="the field"),
        dict(max_evaluations=pint, source=lambda v: isinstance(v, str)),
    ),
    # ------------------------------------------------------------------ diagnostics
    "iter_batches": (
        lambda data: list(dg.iter_batches(data)),
        dict(data=(D["x"], D["y"])),
        dict(data=lambda v: isinstance(v, (list, tuple)) and len(v) == 0),
    ),
    "states_along": (
        lambda model, x, ts, **kw: dg.states_along(model, x, ts, **kw),
        dict(model=D["model"], x=D["x"], ts=D["ts"], solver=None),
        dict(model=never, x=never, ts=grid, solver=is_none),
    ),
    "loss_error_curve": (
        lambda model, data, ts, **kw: dg.loss_error_curve(model, data, ts, **kw),
        dict(model=D["model"], data=(D["x"], D["y"]), ts=D["ts"], potential=None, solver=None, only_correct=True),
        dict(model=never, data=never, ts=grid, potential=is_none, solver=is_none, only_correct=boolean),
    ),
    "nfe_to_end": (
        lambda model, x, **kw: dg.nfe_to_end(model, x, **kw),
        dict(model=D["model"], x=D["x"], t_end=1.0, solver=None),
        dict(model=never, x=never, t_end=pos, solver=is_none),
    ),
    "lyapunov_condition_rate": (
        lambda model, data, **kw: dg.lyapunov_condition_rate(model, data, **kw),
        dict(
            model=D["model"],
            data=(D["x"], D["y"]),
            potential=CE,
            kappa=1.0,
            state_sampler=CUBE,
            time_sampler=None,
            num_samples=3,
            trajectory_ts=None,
            generator=None,
        ),
        dict(
            model=never,
            data=never,
            potential=never,
            kappa=pos,
            state_sampler=never,
            time_sampler=is_none,
            num_samples=pint,
            trajectory_ts=lambda v: v is None or grid(v),
            generator=is_none,
        ),
    ),
    "trajectory_violation_rate": (
        lambda model, data, **kw: dg.trajectory_violation_rate(model, data, **kw),
        dict(model=D["model"], data=(D["x"], D["y"]), potential=None, kappa=1.0, ts=D["ts"], solver=None),
        dict(model=never, data=never, potential=is_none, kappa=pos, ts=grid, solver=is_none),
    ),
    "decay_statistics": (
        lambda model, data, **kw: dg.decay_statistics(model, data, **kw),
        dict(
            model=D["model"],
            data=(D["x"], D["y"]),
            potential=CE,
            kappa=1.0,
            ts=D["ts"],
            solver=None,
            only_correct=True,
            tolerance=1e-6,
        ),
        dict(
            model=never,
            data=never,
            potential=never,
            kappa=pos,
            ts=grid,
            solver=is_none,
            only_correct=boolean,
            tolerance=nonneg,
        ),
    ),
    "theorem3_radius": (
        lambda delta, lipschitz, kappa: dg.theorem3_radius(delta, lipschitz, kappa),
        dict(delta=0.1, lipschitz=1.0, kappa=1.0),
        dict(
            # A loss: >= 0 and finite, as a number or in every entry of a floating tensor.
            delta=lambda v: (
                nonneg(v)
                or (isinstance(v, torch.Tensor) and v.is_floating_point() and bool((v.isfinite() & (v >= 0)).all()))
            ),
            lipschitz=pos,
            kappa=pos,
        ),
    ),
    "spectral_lipschitz_bound": (
        lambda module: dg.spectral_lipschitz_bound(module),
        dict(module=nn.Linear(2, 2)),
        dict(module=never),
    ),
    "empirical_lipschitz": (
        lambda fn, x, **kw: dg.empirical_lipschitz(fn, x, **kw),
        dict(fn=torch.tanh, x=D["x"], iterations=2, generator=None),
        dict(fn=never, x=never, iterations=pint, generator=is_none),
    ),
    "theorem3_certificate": (
        lambda model, x, y, **kw: dg.theorem3_certificate(model, x, y, **kw),
        dict(
            model=D["model"],
            x=D["x"],
            y=D["y"],
            potential=CE,
            kappa=1.0,
            lipschitz=1.0,
            state_sampler=CUBE,
            num_samples=3,
            time_sampler=None,
            solver=None,
            t_end=1.0,
            generator=None,
        ),
        dict(
            model=never,
            x=never,
            y=never,
            potential=never,
            kappa=pos,
            lipschitz=pos,
            state_sampler=never,
            num_samples=pint,
            time_sampler=is_none,
            solver=is_none,
            t_end=pos,
            generator=is_none,
        ),
    ),
}

#: (case, argument, repr(value)) whose check belongs to the model, not to this layer: the
#: shape of ``x`` is only known to the model's input layer (``ODEModel.encode`` in model.py).
_LEFT_TO_THE_MODEL = {(name, "x", "tensor([1., 2.])") for name in ("nfe_to_end", "states_along")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_argument_is_checked_at_the_boundary(name):
    call, base, oracle = CASES[name]
    problems = fuzz_arguments(
        f"layer:{name}",
        call,
        base,
        oracle,
        skip=lambda argument, value: (name, argument, repr(value)) in _LEFT_TO_THE_MODEL,
    )
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_every_public_name_of_the_layer_is_fuzzed():
    """A new public function or class of these modules must get a fuzz case."""
    import lyapunov_plugin.budget as budget
    import lyapunov_plugin.losses as losses
    import lyapunov_plugin.potentials as potentials
    import lyapunov_plugin.samplers as samplers
    import lyapunov_plugin.schedules as schedules
    import lyapunov_plugin.solvers as solvers

    # Abstract bases, result records and exceptions are exercised through their users.
    covered_elsewhere = {
        "LyapunovLossOutput",
        "Potential",
        "MarginPotential",
        "MSEPotential",
        "readout_of",
        "StateSampler",
        "TimeSampler",
        "KappaSchedule",
        "SolverError",
        "DEFAULT_MAX_EVALUATIONS",
        "FINITE_CHECK_EVERY",
        "InferenceCurve",
        "DecayStatistics",
        "Theorem3Certificate",
    }
    fuzzed = {name.split(".")[0] for name in CASES}
    for module in (losses, potentials, samplers, dg, solvers, schedules, budget):
        missing = set(module.__all__) - fuzzed - covered_elsewhere
        assert not missing, f"{module.__name__}: no fuzz case for {sorted(missing)}"
    assert issubclass(MSEPotential, Potential)


# ------------------------------------------------------------------ issue 17, one by one
def _numpy_style_pair(loss: Callable[..., Any]) -> None:
    """float64 features (numpy's default) for a float32 model give the float32 result."""
    model, x, y = _model(), D["x"], D["y"]
    outs = [loss(model, features, y) for features in (x, x.double())]
    assert outs[1].loss.dtype == torch.float32
    torch.testing.assert_close(outs[0].loss, outs[1].loss, rtol=0, atol=0)
    torch.testing.assert_close(outs[0].pointwise, outs[1].pointwise, rtol=0, atol=0)


def test_float64_features_are_cast_to_the_models_dtype_in_the_losses():
    _numpy_style_pair(
        lambda m, x, y: monte_carlo_lyapunov_loss(
            m,
            x,
            y,
            potential=CE,
            kappa=1.0,
            state_sampler=CUBE,
            time_sampler=UniformTimeSampler(),
            num_samples=4,
            generator=torch.Generator().manual_seed(3),
        )
    )
    _numpy_style_pair(lambda m, x, y: path_lyapunov_loss(m, x, y, D["ts"], potential=CE, kappa=1.0))
    _numpy_style_pair(
        lambda m, x, y: path_lyapunov_loss(m, x, y, D["ts"], potential=CE, kappa=1.0, solver=FixedStepSolver(steps=4))
    )
    # Regression targets in float64 for a float32 model are cast the same way.
    target = torch.randn(B, S, dtype=torch.float64)
    out32 = path_lyapunov_loss(_model(), D["x"], target.float(), D["ts"], potential=MSEPotential(), kappa=1.0)
    out64 = path_lyapunov_loss(_model(), D["x"].double(), target, D["ts"], potential=MSEPotential(), kappa=1.0)
    torch.testing.assert_close(out32.loss, out64.loss, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("call", "error", "names"),
    [
        (
            lambda: discrete_path_lyapunov_loss(D["trajectory"], None, potential=CE, kappa=0.5),
            TypeError,
            ["target"],
        ),
        (lambda: CUBE.sample(D["eta"], 3), TypeError, ["context", "SamplingContext"]),
        (lambda: RolloutSampler().sample_with_times(D["eta"], 3), TypeError, ["context", "SamplingContext"]),
        (lambda: MSEPotential().value(D["eta"], torch.zeros(B, S + 1)), ValueError, ["target", f"({B}, {S})"]),
        (
            lambda: lyapunov_loss(D["eta"], D["velocity"], D["y"], potential=CE, kappa=1.0, readout=3),
            TypeError,
            ["readout"],
        ),
        (lambda: CE.evaluate(D["eta"], D["velocity"], D["y"], readout=3), TypeError, ["readout"]),
        (
            lambda: discrete_path_lyapunov_loss(D["trajectory"], D["y"], potential=CE, kappa=0.5, readout=3),
            TypeError,
            ["readout"],
        ),
        (lambda: MixtureSampler(CUBE, 1.0), TypeError, ["samplers", "tuple"]),
        (lambda: MixtureSampler((CUBE,), 1.0), TypeError, ["weights", "tuple"]),
        (lambda: dg.states_along(D["model"], D["x"], D["ts"], solver=3), TypeError, ["solver"]),
        (lambda: dg.nfe_to_end(D["model"], D["x"], solver=3), TypeError, ["solver"]),
        (lambda: dg.loss_error_curve(D["model"], (D["x"], D["y"]), D["ts"], solver=3), TypeError, ["solver"]),
        (lambda: dg.trajectory_violation_rate(D["model"], [], kappa=1.0, ts=D["ts"]), ValueError, ["data"]),
        (lambda: dg.decay_statistics(D["model"], [], potential=CE, kappa=1.0, ts=D["ts"]), ValueError, ["data"]),
        (lambda: dg.loss_error_curve(D["model"], [(D["x"], "y")], D["ts"]), TypeError, ["data", "y"]),
        (
            lambda: monte_carlo_lyapunov_loss(
                D["model"],
                D["x"],
                D["y"],
                potential=CE,
                kappa=1.0,
                state_sampler=CUBE,
                time_sampler=UniformTimeSampler(),
                num_samples=10**30,
            ),
            ValueError,
            ["num_samples", "2**63"],
        ),
    ],
)
def test_issue_17_inputs_get_a_message_naming_the_argument(call, error, names):
    FUZZ_COUNTS["layer:issue 17 cases"] = FUZZ_COUNTS.get("layer:issue 17 cases", 0) + 1
    with pytest.raises(error) as caught:
        call()
    for name in names:
        assert name in str(caught.value), caught.value


# ------------------------------------------------------------------ tensors, by Hypothesis
_CORRUPTIONS = {
    None: None,
    "float64 features": None,  # valid: cast to the model's dtype
    "NaN feature": "x",
    "integer features": "x",
    "short target": "target",
    "label too high": "target",
    "negative label": "target",
    "float labels": "target",
    "2-D labels": "target",
}


def _losses(model: ODEModel, x: torch.Tensor, y: torch.Tensor, which: str) -> Any:
    if which == "monte_carlo":
        return monte_carlo_lyapunov_loss(
            model,
            x,
            y,
            potential=CE,
            kappa=1.0,
            state_sampler=RolloutSampler(),
            num_samples=3,
            trajectory=torch.zeros(T, x.shape[0], S),
            trajectory_times=D["ts"],
        )
    if which == "path":
        return path_lyapunov_loss(model, x, y, D["ts"], potential=CE, kappa=1.0, solver=FixedStepSolver(steps=2))
    if which == "discrete":
        # The rollout stands in for x: corrupted features become a corrupted trajectory.
        return discrete_path_lyapunov_loss(x[None].expand(T, *x.shape), y, potential=CE, kappa=0.5)
    return lyapunov_loss(x, -x, y, potential=CE, kappa=1.0)


@given(
    batch=st.integers(1, 5),
    corruption=st.sampled_from(sorted(_CORRUPTIONS, key=str)),
    which=st.sampled_from(["monte_carlo", "path", "discrete", "pointwise"]),
    seed=st.integers(0, 2**16),
)
def test_loss_tensors_are_used_or_refused_with_the_argument_named(batch, corruption, which, seed):
    FUZZ_COUNTS["layer:loss tensors (hypothesis)"] = FUZZ_COUNTS.get("layer:loss tensors (hypothesis)", 0) + 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, S, generator=g)
    y = torch.randint(0, S, (batch,), generator=g)
    if corruption == "float64 features":
        x = x.double()
    elif corruption == "NaN feature":
        x[torch.randint(0, batch, (1,), generator=g), 0] = math.nan
    elif corruption == "integer features":
        x = (10 * x).long()
    elif corruption == "short target":
        y = torch.cat([y, y])[: batch + 1]
    elif corruption == "label too high":
        y[0] = S
    elif corruption == "negative label":
        y[-1] = -1
    elif corruption == "float labels":
        y = y.float()
    elif corruption == "2-D labels":
        y = y[:, None]
    named = _CORRUPTIONS[corruption]
    if which in ("discrete", "pointwise") and named == "x":
        named = "trajectory" if which == "discrete" else "eta"
    if which in ("discrete", "pointwise") and corruption == "float64 features":
        named = None  # a float64 trajectory / state is simply computed in float64
    try:
        out = _losses(_model(), x, y, which)
    except (TypeError, ValueError) as err:
        assert named is not None, f"{corruption} ({which}) was refused: {err}"
        assert named in str(err), f"{corruption} ({which}): the message does not name {named}: {err}"
        return
    assert named is None, f"{corruption} ({which}) was accepted"
    loss = out if isinstance(out, torch.Tensor) else out.pointwise
    assert bool(torch.isfinite(loss).all()) and bool((loss >= 0).all())
    expected = {"monte_carlo": (batch * 3,), "path": (T * batch,), "discrete": (T - 1, batch), "pointwise": (batch,)}
    assert tuple(loss.shape) == expected[which]
