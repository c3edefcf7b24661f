"""The shared shape of the opt-in levers: ``base.loss + weight * penalty`` (PenalisedObjective)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import pytest
import torch
from torch import Tensor, nn

from lyapunov_plugin import (
    CertifiedMarginObjective,
    ContractionObjective,
    LyapunovModel,
    MonteCarloObjective,
    ODEModel,
    PenalisedObjective,
    SettlingPenalty,
    SupervisedObjective,
)
from lyapunov_plugin.blocks import MLPDynamics


@dataclass(frozen=True, kw_only=True)
class _SquaredInput(PenalisedObjective):
    name: ClassVar[str] = "squared_input"

    def penalty(self, model: LyapunovModel, x: Tensor, y: Tensor, *, generator: Optional[torch.Generator] = None):
        return x.pow(2).mean()


def _model() -> ODEModel:
    torch.manual_seed(0)
    return ODEModel(MLPDynamics(3, 4, (8,)), state_shape=(3,), encoder=nn.Linear(4, 4))


def test_loss_is_base_plus_weighted_penalty_and_diagnostics_are_the_base_ones():
    model = _model()
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    base = MonteCarloObjective()
    plain = base(model, x, y, kappa=2.0, generator=torch.Generator().manual_seed(1))
    out = _SquaredInput(base=base, weight=0.5)(model, x, y, kappa=2.0, generator=torch.Generator().manual_seed(1))
    assert float(out.loss.detach()) == pytest.approx(
        float(plain.loss.detach()) + 0.5 * float(x.pow(2).mean()), rel=1e-6
    )
    assert torch.equal(out.pointwise, plain.pointwise) and torch.equal(out.v_dot, plain.v_dot)
    off = _SquaredInput(base=base, weight=0.0)(model, x, y, kappa=2.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(off.loss, plain.loss)


def test_nature_follows_the_base_and_bad_arguments_are_named():
    assert _SquaredInput(base=SupervisedObjective()).uses_lyapunov_condition is False
    assert _SquaredInput(base=MonteCarloObjective()).uses_solver is False
    with pytest.raises(TypeError, match="base"):
        _SquaredInput(base="monte_carlo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight"):
        _SquaredInput(base=MonteCarloObjective(), weight=-1.0)
    with pytest.raises(TypeError, match="penalty"):
        PenalisedObjective(base=MonteCarloObjective())  # the base class itself adds nothing


def test_the_library_levers_share_the_shape():
    for lever in (SettlingPenalty(base=MonteCarloObjective()), ContractionObjective(), CertifiedMarginObjective()):
        assert isinstance(lever, PenalisedObjective)
    # The certified term runs the unrolled solver; the contraction term does not.
    assert CertifiedMarginObjective().uses_solver is True and ContractionObjective().uses_solver is False
    assert ContractionObjective(weight=0.0, input_weight=1.0).active
    assert not ContractionObjective(weight=0.0, input_weight=0.0).active
