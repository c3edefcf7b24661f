"""Shared test settings: Hypothesis profiles sized for a 2-core CI machine."""

import os

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

# Two cores on CI: more intra-op threads than cores only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))
