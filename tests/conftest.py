"""Shared test settings: Hypothesis profiles sized for a 2-core CI machine."""

import os
import sys

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=400, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Tiny tensors: one intra-op thread is as fast and does not stall when the 2-core CI
# machine is busy with another process.
torch.set_num_threads(1)


def pytest_terminal_summary(terminalreporter):
    """Report how many inputs the reliability fuzzes tried (tests/reliability)."""
    module = sys.modules.get("tests.reliability.test_boundaries")
    counts = getattr(module, "FUZZ_COUNTS", None)
    if counts:
        tried = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        terminalreporter.write_line(f"reliability fuzz: {sum(counts.values())} bad or edge inputs tried ({tried})")
