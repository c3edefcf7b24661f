"""LyapunovTrainer: modes, checkpoints, resume, non-finite policy, validation, inference."""

import json
import math

import pytest
import torch
import torch.nn as nn

from lyapunov_plugin import (
    FixedStepSolver,
    HypercubeSampler,
    KappaWarmup,
    LyapunovTrainer,
    MonteCarloObjective,
    NonFiniteLossError,
    ODEModel,
    PathIntegralObjective,
    Recipe,
    SupervisedObjective,
    UniformTimeSampler,
)

from .models import blobs, loader


class Dynamics(nn.Module):
    """f(eta, x, t) = MLP([eta, x, t]) with dropout, so resume must restore the global RNG."""

    def __init__(self, state=2, inp=2, hidden=16, dropout=0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state + inp + 1, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, state)
        )

    def forward(self, eta, x, t):
        return self.net(torch.cat([eta, x, t[:, None]], dim=1))


def make_model(seed=0):
    torch.manual_seed(seed)
    return ODEModel(Dynamics(), state_shape=(2,), solver=FixedStepSolver(method="rk4", steps=4))


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def make_trainer(model=None, recipe=None, **kw):
    """A trainer on ``model`` (default :func:`make_model`): Monte Carlo with 8 samples per
    example unless ``objective`` is given, Adam at 1e-2 unless ``recipe`` is."""
    kw.setdefault("progress", False)
    kw.setdefault("seed", 0)
    kw.setdefault("objective", MonteCarloObjective(num_samples=8))
    recipe = recipe if recipe is not None else Recipe(lr=1e-2)
    return LyapunovTrainer(model if model is not None else make_model(), recipe, **kw)


def step_lr(opt):
    return torch.optim.lr_scheduler.StepLR(opt, 1, 0.5)


@pytest.mark.parametrize("mode", ["monte_carlo", "path_integral", "standard"])
def test_every_mode_trains_the_same_model(mode):
    x, y = blobs(96, seed=1)
    objective = {
        "monte_carlo": MonteCarloObjective(
            num_samples=8, state_sampler=HypercubeSampler(half_width=2.0), time_sampler=UniformTimeSampler()
        ),
        "path_integral": PathIntegralObjective(steps=4),
        "standard": SupervisedObjective(),
    }[mode]
    trainer = make_trainer(objective=objective, kappa=1.0)
    history = trainer.fit(loader(x, y), epochs=3, val_loader=loader(*blobs(64, seed=2)))
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert all(r["mode"] == mode for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert {"val_error", "val_loss", "train_loss", "lr", "train_seconds"} <= set(history[-1])
    assert ("train_violation" in history[-1]) == (mode != "standard")


def test_resume_reproduces_uninterrupted_training_bit_for_bit(tmp_path):
    x, y = blobs(96, seed=1)
    torch.manual_seed(123)
    full = make_trainer(make_model(), Recipe(schedule=step_lr))
    full.fit(loader(x, y), epochs=4)
    reference = params(full.model)

    torch.manual_seed(123)
    first = make_trainer(make_model(), Recipe(schedule=step_lr))
    first.fit(loader(x, y), epochs=2, checkpoint_path=tmp_path / "ckpt.pt")
    torch.manual_seed(999)  # anything the process does in between must not matter
    second = make_trainer(make_model(seed=7), Recipe(schedule=step_lr), seed=42)
    assert second.resume(tmp_path / "ckpt.pt") == 2
    second.fit(loader(x, y), epochs=4)
    for a, b in zip(reference, params(second.model), strict=False):
        assert torch.equal(a, b)
    assert [r["train_loss"] for r in second.history] == [r["train_loss"] for r in full.history]


class _InterruptingLoader:
    """Yields batches, then raises KeyboardInterrupt in the middle of a chosen epoch."""

    def __init__(self, inner, interrupt_epoch, after_batches):
        self.inner, self.interrupt_epoch, self.after = inner, interrupt_epoch, after_batches
        self.epoch = 0

    def __iter__(self):
        self.epoch += 1
        for i, batch in enumerate(self.inner):
            if self.epoch == self.interrupt_epoch and i == self.after:
                raise KeyboardInterrupt
            yield batch


def test_ctrl_c_leaves_a_valid_checkpoint_that_resumes_exactly(tmp_path):
    x, y = blobs(96, seed=1)
    torch.manual_seed(5)
    full = make_trainer(make_model())
    full.fit(loader(x, y), epochs=3)

    torch.manual_seed(5)
    trainer = make_trainer(make_model())
    ckpt = tmp_path / "run" / "ckpt.pt"
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(
            _InterruptingLoader(loader(x, y), interrupt_epoch=2, after_batches=1), epochs=3, checkpoint_path=ckpt
        )
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["ckpt.pt"]  # no temporary files left
    resumed = make_trainer(make_model(seed=3))
    assert resumed.resume(ckpt) == 1
    resumed.fit(loader(x, y), epochs=3)
    for a, b in zip(params(full.model), params(resumed.model), strict=False):
        assert torch.equal(a, b)


def test_metrics_are_written_as_csv_and_json(tmp_path):
    x, y = blobs(64, seed=1)
    trainer = make_trainer()
    trainer.fit(loader(x, y), epochs=2, metrics_path=tmp_path / "m.json")
    rows = json.loads((tmp_path / "m.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    trainer.write_metrics(tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,mode,kappa") and len(lines) == 3
    with pytest.raises(ValueError, match=r"metrics_path must end in .csv or .json, got 'm.txt'"):
        trainer.fit(loader(x, y), epochs=3, metrics_path="m.txt")


def test_nan_input_raises_and_leaves_parameters_unchanged():
    x, y = blobs(32, seed=1)
    x[3, 1] = math.nan
    trainer = make_trainer()
    before = params(trainer.model)
    with pytest.raises(NonFiniteLossError, match=r"input batch x \(1 NaN/Inf entries\) at epoch 1, step 0"):
        trainer.fit(loader(x, y, shuffle=False), epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, params(trainer.model), strict=False))
    assert trainer.epoch == 0 and trainer.history == []


def test_nan_input_batch_is_skipped_and_counted_under_skip():
    x, y = blobs(64, seed=1)
    x[40, 1] = math.nan  # in the second batch of 32
    trainer = make_trainer(nonfinite="skip")
    history = trainer.fit(loader(x, y, shuffle=False, batch_size=32), epochs=1)
    assert trainer.skipped_steps == 1 and history[-1]["skipped_steps"] == 1
    assert trainer.epoch == 1


class _Exploding(nn.Module):
    """Dynamics that return Inf for one example: the loss becomes non-finite."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, eta, x, t):
        out = self.lin(torch.cat([eta, x], 1))
        return torch.where(x[:, :1] > 100, torch.full_like(out, math.inf), out)


def test_non_finite_loss_raises_by_default_and_never_updates():
    model = ODEModel(_Exploding(), state_shape=(2,))
    x, y = blobs(16, seed=1)
    x[0] = 1000.0
    trainer = make_trainer(model)
    before = params(model)
    with pytest.raises(
        NonFiniteLossError, match="non-finite (loss|gradient) at epoch 1, step 0; parameters were not updated"
    ):
        trainer.fit(loader(x, y, batch_size=16, shuffle=False), epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, params(model), strict=False))


def test_non_finite_loss_can_be_skipped_and_counted():
    model = ODEModel(_Exploding(), state_shape=(2,))
    x, y = blobs(32, seed=1)
    x[0] = 1000.0  # only the first batch explodes
    trainer = make_trainer(model, nonfinite="skip")
    history = trainer.fit(loader(x, y, batch_size=16, shuffle=False), epochs=2)
    assert [r["skipped_steps"] for r in history] == [1, 1]
    assert trainer.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_rejects_a_checkpoint_of_another_model_without_touching_state(tmp_path):
    x, y = blobs(32, seed=1)
    trainer = make_trainer()
    trainer.fit(loader(x, y), epochs=1, checkpoint_path=tmp_path / "a.pt")
    other_model = ODEModel(Dynamics(hidden=8), state_shape=(2,))
    other = make_trainer(other_model)
    before = params(other_model)
    with pytest.raises(ValueError, match="checkpoint shapes differ from the model"):
        other.resume(tmp_path / "a.pt")
    assert other.epoch == 0 and all(torch.equal(a, b) for a, b in zip(before, params(other_model), strict=False))
    with pytest.raises(ValueError, match="trained with mode='monte_carlo', this trainer uses 'standard'"):
        make_trainer(objective=SupervisedObjective()).resume(tmp_path / "a.pt")
    (tmp_path / "junk.pt").write_bytes(b"")
    with pytest.raises(FileNotFoundError):
        trainer.resume(tmp_path / "missing.pt")


def test_predict_early_termination_and_solver_override():
    x, y = blobs(32, seed=1)
    trainer = make_trainer()
    trainer.fit(loader(x, y), epochs=2)
    full = trainer.predict(x)
    early = trainer.predict(x, t_end=0.25)
    rk = trainer.predict(x, solver=FixedStepSolver(method="rk4", steps=4))
    assert full.shape == early.shape == (32, 2)
    torch.testing.assert_close(full, rk)  # the model's own solver is RK4 with 4 steps
    assert not torch.allclose(full, early)
    assert trainer.model.training  # predict restores the train/eval mode


def test_inference_diagnostics_run_through_the_trainer():
    x, y = blobs(64, seed=1)
    trainer = make_trainer()
    trainer.fit(loader(x, y), epochs=3)
    curve = trainer.loss_error_curve(loader(x, y), ts=torch.linspace(0, 1, 5))
    assert len(curve.error) == 5 and curve.error[-1] == 0.0 and curve.num_points > 0
    assert trainer.nfe(x) == 16  # RK4, 4 steps
    cert = trainer.certificate(loader(x, y), num_samples=16)
    assert 0.0 <= cert["condition_rate"] <= 1.0 and cert["num_points"] > 0


def test_kappa_warmup_schedule_is_used_per_epoch():
    x, y = blobs(32, seed=1)
    trainer = make_trainer(
        kappa=KappaWarmup(start=0.1, end=1.0, epochs=2, shape="linear"),
        objective=MonteCarloObjective(num_samples=8, state_sampler=HypercubeSampler(half_width=2.0)),
    )
    history = trainer.fit(loader(x, y), epochs=3)
    assert [round(r["kappa"], 6) for r in history] == [0.1, 0.55, 1.0]


def test_optimizer_choices():
    nero = make_trainer(recipe=Recipe(optimizer="nero", lr=0.05)).optimizer
    assert type(nero).__name__ == "Nero" and nero.param_groups[0]["lr"] == 0.05
    sgd = make_trainer(recipe=Recipe(optimizer="sgd", lr=0.1, weight_decay=1e-4)).optimizer
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.param_groups[0]["lr"], sgd.param_groups[0]["momentum"], sgd.param_groups[0]["weight_decay"]) == (
        0.1,
        0.9,
        1e-4,
    )
    model = make_model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    assert make_trainer(model, Recipe(optimizer=lambda params: opt)).optimizer is opt
    with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'adamw', 'sgd', 'nero'\], got 'lbfgs'"):
        Recipe(optimizer="lbfgs")
    with pytest.raises(TypeError, match="a recipe is reusable: pass a factory"):
        Recipe(optimizer=opt)


def test_legacy_keywords_warn_and_still_build_the_same_trainer():
    """The keyword form of a recipe (deprecated) maps onto the Recipe fields, with a
    FutureWarning; what only the keyword form accepts (an optimizer instance, which is
    checked against the model's parameters) keeps working there."""
    model = make_model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    with pytest.warns(FutureWarning, match=r"\['optimizer'\] are deprecated"):
        assert LyapunovTrainer(model, MonteCarloObjective(), optimizer=opt, progress=False).optimizer is opt
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="optimizer holds 1 parameter"):
        LyapunovTrainer(make_model(), optimizer=torch.optim.Adam([nn.Parameter(torch.zeros(1))]), progress=False)
    with pytest.warns(FutureWarning, match=r"\['lr', 'mode', 'num_samples'\] are deprecated.*Recipe\(lr=\.\.\.\)"):
        legacy = LyapunovTrainer(make_model(), mode="monte_carlo", num_samples=8, lr=3e-3, progress=False)
    assert legacy.recipe == Recipe(objective=MonteCarloObjective(num_samples=8), lr=3e-3)
    assert legacy.optimizer.param_groups[0]["lr"] == 3e-3
    with pytest.warns(FutureWarning, match=r"\['scheduler', 'scheduler_interval'\] are deprecated"):
        legacy = LyapunovTrainer(make_model(), scheduler=None, scheduler_interval="step", progress=False)
    assert (legacy.recipe.schedule, legacy.recipe.schedule_interval) == ("constant", "step")
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"mode must be one of \['monte_carlo', "):
        LyapunovTrainer(make_model(), mode="adjoint")
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="num_samples must be an int, got float 8.5"):
        LyapunovTrainer(make_model(), num_samples=8.5)
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="potential must be a lyapunov_plugin.Potential"):
        LyapunovTrainer(make_model(), potential=nn.CrossEntropyLoss())


class TestValidation:
    def test_unsupported_model_lists_what_is_supported(self):
        with pytest.raises(
            TypeError,
            match="(?s)model of type Linear is not supported.*torchdyn NeuralODE.*"
            "torchdiffeq vector field.*LyapunovModel protocol",
        ):
            LyapunovTrainer(nn.Linear(2, 2))

    def test_bad_settings(self):
        with pytest.raises(ValueError, match="kappa must be > 0, got -1.0"):
            make_trainer(kappa=-1.0)
        with pytest.raises(ValueError, match=r"nonfinite must be one of \['raise', 'skip'\], got 'ignore'"):
            make_trainer(nonfinite="ignore")
        with pytest.raises(TypeError, match="num_samples must be an int, got float 8.5"):
            MonteCarloObjective(num_samples=8.5)
        with pytest.raises(
            TypeError, match="potential must be a lyapunov_plugin.Potential or None, got CrossEntropyLoss"
        ):
            Recipe(potential=nn.CrossEntropyLoss())
        with pytest.raises(TypeError, match="objective must be a lyapunov_plugin Objective, got str"):
            make_trainer(objective="standard")

    def test_bad_batches(self):
        trainer = make_trainer()
        with pytest.raises(ValueError, match=r"y must have batch size 4 \(the batch size of x\), got shape \(3,\)"):
            trainer.fit([(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long))], epochs=1)
        with pytest.raises(TypeError, match="train_loader must yield \\(x, y\\) batches, got Tensor"):
            trainer.fit([torch.zeros(4, 2)], epochs=1)
        with pytest.raises(ValueError, match=r"target must lie in \[0, 1\] for 2 classes, got values in \[0, 5\]"):
            trainer.fit([(torch.zeros(4, 2), torch.tensor([0, 1, 5, 0]))], epochs=1)


def test_fit_checks_the_model_once_before_any_update():
    class WrongShape(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, eta, x, t):
            return self.lin(torch.cat([eta, x], 1))  # 3 outputs for a 2-dimensional state

    model = ODEModel(WrongShape(), state_shape=(2,))
    trainer = make_trainer(model)
    before = params(model)
    with pytest.raises(ValueError, match=r"returned shape \(2, 3\) for states of shape \(2, 2\)"):
        trainer.fit(loader(*blobs(16, seed=1)), epochs=1)
    assert all(torch.equal(a, b) for a, b in zip(before, params(model), strict=False))


def test_fit_says_when_it_would_do_nothing_and_refuses_an_empty_loader():
    x, y = blobs(32, seed=1)
    trainer = make_trainer()
    trainer.fit(loader(x, y), epochs=1)
    with pytest.warns(
        UserWarning,
        match=r"fit\(epochs=1\) does nothing: epochs is the total, and 1 epoch\(s\) are "
        r"already done; pass epochs=2 to train 1 more",
    ):
        assert len(trainer.fit(loader(x, y), epochs=1)) == 1
    fresh = make_trainer()
    before = params(fresh.model)
    with pytest.raises(ValueError, match="train_loader yielded no batches in epoch 1"):
        fresh.fit([], epochs=2)
    assert (
        fresh.epoch == 0
        and fresh.history == []
        and all(torch.equal(a, b) for a, b in zip(before, params(fresh.model), strict=False))
    )
