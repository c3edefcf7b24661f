"""Smoke test of benchmarks/timing.py (paper Table 2 and Section 5.5 as ratios).

Runs the benchmark at a tiny budget and checks the shape of its output only: numbers from
two repeats say nothing about speed, so nothing here compares timings.
"""

import json
import math

from benchmarks import timing

METHODS = (
    "lyanet_mc_default",
    "lyanet_mc_fixed",
    "lyanet_path_default",
    "lyanet_path_integral",
    "backprop_rk4",
    "backprop_dopri5",
    "adjoint_dopri5",
)


def _positive_finite(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_timing_main_writes_every_method_and_ratio(tmp_path):
    # One thread: on a shared 2-core machine more threads than free cores stall tiny ops.
    payload = timing.main(
        repeats=2, warmup=1, batch_size=16, num_samples=4, out_dir=tmp_path, threads=1, wrapped_models=False
    )

    written = json.loads((tmp_path / "timing.json").read_text())
    assert (tmp_path / "timing.md").is_file()
    assert written["methods"].keys() == payload["methods"].keys() == set(METHODS)
    for key in METHODS:
        entry = written["methods"][key]
        assert _positive_finite(entry["median_s"]), key
        assert len(entry["samples_s"]) == 2, key
        assert set(entry["ratios"]) == set(timing.REFERENCES), key
        for reference in timing.REFERENCES:
            assert _positive_finite(entry["ratios"][reference]["ratio"]), (key, reference)
    for reference in timing.REFERENCES:
        assert written["methods"][reference]["ratios"][reference]["ratio"] == 1.0
    overhead = written["loss_overhead"]
    assert _positive_finite(overhead["lyapunov_loss"]["median_s"])
    assert _positive_finite(overhead["vector_field"]["median_s"])
    assert _positive_finite(overhead["ratio"]["ratio"])
    assert _positive_finite(overhead["lyapunov_objective"]["median_s"])
    assert _positive_finite(overhead["objective_ratio"]["ratio"])
    assert written["machine"]["device"] == str(timing.default_device())
    assert written["machine"]["threads"] == 1
    assert "torch" in written["machine"]
    markdown = (tmp_path / "timing.md").read_text()
    assert "Machine:" in markdown
    assert all(written["methods"][key]["label"] in markdown for key in METHODS)


def test_wrapped_model_epochs_are_timed_against_standard_on_the_same_grid():
    import torch

    wrapped = timing.wrapped_epochs(repeats=1, device=torch.device("cpu"), problem_name="iris")
    assert set(wrapped) == set(timing.WRAPPED_PATTERNS)
    for entry in wrapped.values():
        for key in ("path_default", "standard_same_grid", "standard_own_solver"):
            assert _positive_finite(entry[key]["median_s"])
        assert _positive_finite(entry["ratio_same_grid"]["ratio"])
    assert "x same grid" in timing.wrapped_markdown(wrapped)


def test_the_objective_case_computes_the_public_loss():
    """Part 2's two loss cases time one computation: the same draws give the same loss (each
    on its own copy: the spectral-norm encoder's power iteration updates a buffer per call)."""
    import copy

    import torch

    from lyapunov_plugin import CrossEntropyPotential, UniformTimeSampler, monte_carlo_lyapunov_loss

    base, x, y, _ = timing.base_model_and_batch(16, torch.device("cpu"))
    public = monte_carlo_lyapunov_loss(
        copy.deepcopy(base),
        x,
        y,
        potential=CrossEntropyPotential(),
        kappa=timing.DEFAULT_KAPPA,
        state_sampler=timing.fixed_hypercube(),
        time_sampler=UniformTimeSampler(),
        num_samples=4,
        generator=torch.Generator().manual_seed(0),
    )
    objective = timing.MonteCarloObjective(
        state_sampler=timing.fixed_hypercube(), time_sampler=UniformTimeSampler(), num_samples=4
    ).compute(copy.deepcopy(base), x, y, kappa=timing.DEFAULT_KAPPA, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(objective.loss, public.loss)
