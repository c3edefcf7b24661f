"""Shared test settings: Hypothesis profiles sized for a 2-core CI machine.

- ``ci`` (selected when ``CI=true``, as the CI run sets it): derandomized, so every CI run
  tries the same examples and a red build is never a lucky draw; the failing example's
  reproduction blob is printed.
- ``dev`` (the default elsewhere): random exploration, so local runs keep finding new
  inputs; fix what they find before it is committed.
- ``thorough``: random, ten times the examples, for a fuzzing session
  (``HYPOTHESIS_PROFILE=thorough``).

``HYPOTHESIS_PROFILE`` overrides the choice in every environment.
"""

import os
import sys

import torch
from hypothesis import HealthCheck, settings

_QUIET_HEALTH_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]

settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    print_blob=True,
    deadline=None,
    database=None,
    suppress_health_check=_QUIET_HEALTH_CHECKS,
)
settings.register_profile(
    "dev",
    max_examples=40,
    print_blob=True,
    deadline=None,
    suppress_health_check=_QUIET_HEALTH_CHECKS,
)
settings.register_profile(
    "thorough",
    max_examples=400,
    print_blob=True,
    deadline=None,
    suppress_health_check=_QUIET_HEALTH_CHECKS,
)


def _profile() -> str:
    chosen = os.environ.get("HYPOTHESIS_PROFILE")
    if chosen:
        return chosen
    return "ci" if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes") else "dev"


settings.load_profile(_profile())

# Tiny tensors: one intra-op thread is as fast and does not stall when the 2-core CI
# machine is busy with another process.
torch.set_num_threads(1)


def pytest_report_header(config):
    """Say which Hypothesis profile ran, so a failure can be reproduced with the same one."""
    return f"hypothesis profile: {settings.get_current_profile_name()} (derandomize={settings.default.derandomize})"


def pytest_terminal_summary(terminalreporter):
    """Report how many inputs the reliability fuzzes tried (tests/reliability)."""
    # One dict, shared by every fuzz module in tests/reliability (they import it from here).
    module = sys.modules.get("tests.reliability.test_boundaries")
    counts = getattr(module, "FUZZ_COUNTS", None)
    if counts:
        tried = ", ".join(f"{name}: {n}" for name, n in sorted(counts.items()))
        terminalreporter.write_line(f"reliability fuzz: {sum(counts.values())} bad or edge inputs tried ({tried})")
