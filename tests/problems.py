"""Known-answer problems and independent reference computations for the tests.

References here never call the library: they use reverse-mode double backward and
plain formulas, so agreement is evidence, not a tautology.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

DTYPES = st.sampled_from([torch.float32, torch.float64])


def reference_v_and_vdot(value_fn, eta, velocity):
    """V(eta) and grad V(eta) . velocity by reverse-mode autodiff, per sample."""
    eta = eta.detach().clone().requires_grad_(True)
    v = value_fn(eta)
    (grad,) = torch.autograd.grad(v.sum(), eta)
    return v.detach(), (grad * velocity).flatten(1).sum(-1).detach()


def ce_reference(logits, target):
    return F.cross_entropy(logits, target, reduction="none")


@st.composite
def classification_batch(draw, max_batch=8, max_classes=6, dtype=None, scale=6.0):
    """(eta, velocity, target) with identity readout: states are logits."""
    batch = draw(st.integers(1, max_batch))
    classes = draw(st.integers(2, max_classes))
    dtype = dtype or draw(DTYPES)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    eta = (torch.rand(batch, classes, generator=g, dtype=torch.float64) * 2 - 1) * scale
    velocity = (torch.rand(batch, classes, generator=g, dtype=torch.float64) * 2 - 1) * scale
    target = torch.randint(0, classes, (batch,), generator=g)
    return eta.to(dtype), velocity.to(dtype), target
