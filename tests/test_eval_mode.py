"""EvalMode: eval mode inside, every module's own mode restored after (a layer frozen in
eval mode stays frozen), an override of ``train()`` honoured, and the trainer's rollouts and
predictions leave a model's modes as they found them."""

from __future__ import annotations

import torch
from torch import nn

from lyapunov_plugin import LyapunovTrainer, ODEModel, certify
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.inference import EvalMode
from lyapunov_plugin.solvers import FixedStepSolver


def _model_with_batch_norm() -> ODEModel:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    return ODEModel(MLPDynamics(3, 3, (8,)), state_shape=(3,), encoder=encoder)


def _modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_eval_mode_restores_each_modules_own_mode():
    model = _model_with_batch_norm().train()
    frozen = model.encoder[1]
    frozen.eval()  # a BatchNorm kept at its running statistics while the rest trains
    before = _modes(model)
    assert not frozen.training and model.training
    with EvalMode(model):
        assert not any(_modes(model))
    assert _modes(model) == before and not frozen.training


def test_eval_mode_leaves_an_eval_model_alone_and_restores_after_an_exception():
    model = _model_with_batch_norm().eval()
    with EvalMode(model):
        assert not any(_modes(model))
    assert not any(_modes(model))
    model.train()
    try:
        with EvalMode(model):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert all(_modes(model))


class _KeepsNormFrozen(nn.Module):
    """A user module that overrides ``train()`` (a common way to keep a norm layer frozen)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> _KeepsNormFrozen:
        self.calls.append(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_eval_mode_calls_an_overridden_train_both_ways():
    module = _KeepsNormFrozen().train()
    with EvalMode(module):
        assert not module.training and not module.linear.training
    assert module.calls == [True, False, True] and module.training and module.linear.training


class _FusesOnEval(nn.Module):
    """An override with a side effect besides the flags (fuse for inference, unfuse to train)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.fused = False

    def train(self, mode: bool = True) -> _FusesOnEval:
        super().train(mode)
        self.fused = not mode
        return self


def test_eval_mode_undoes_an_overrides_side_effect_and_sees_an_instance_override():
    module = _FusesOnEval().train()
    with EvalMode(module):
        assert module.fused
    assert module.training and not module.fused
    plain = nn.Sequential(nn.Linear(2, 2)).train()
    calls: list[bool] = []
    inner_train = plain.train

    def recording(mode: bool = True) -> nn.Module:
        calls.append(mode)
        return inner_train(mode)

    plain.train = recording  # an override on the instance, not the class
    with EvalMode(plain):
        assert not plain[0].training
    assert calls == [False, True] and plain[0].training


def test_eval_mode_instance_entered_twice_restores_the_outer_mode():
    model = _model_with_batch_norm().train()
    model.encoder[1].eval()
    before = _modes(model)
    mode = EvalMode(model)
    with mode:
        with mode:
            assert not any(_modes(model))
        assert not any(_modes(model))
    assert _modes(model) == before


def test_predictions_and_certify_keep_a_frozen_layer_frozen():
    model = _model_with_batch_norm()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    LyapunovTrainer(model).fit([(x, y)], epochs=1)
    trainer = LyapunovTrainer(model)
    model.train()
    model.encoder[1].eval()
    before = _modes(model)
    stats = model.encoder[1].running_mean.clone()
    trainer.predict(x)
    trainer.anytime_predict(x)
    assert _modes(model) == before
    assert torch.equal(model.encoder[1].running_mean, stats)  # predictions never update the statistics
    plain = ODEModel(
        MLPDynamics(3, 4, (8,)),
        state_shape=(3,),
        encoder=nn.Linear(4, 4),
        solver=FixedStepSolver(method="rk4", steps=5),
    ).train()
    plain.encoder.eval()
    before = _modes(plain)
    certify(plain, torch.rand(4, 4), torch.randint(0, 3, (4,)), eps=0.001)
    assert _modes(plain) == before
