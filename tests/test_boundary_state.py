"""A rejected call leaves the trainer, the model and the files as they were (review findings)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lyapunov_plugin as lp
from lyapunov_plugin.blocks import MLPDynamics
from lyapunov_plugin.checkpoint import CheckpointError
from lyapunov_plugin.robust import InputPerturbedObjective
from tests.models import blobs, loader


def _model(**kwargs) -> lp.ODEModel:
    torch.manual_seed(0)
    return lp.ODEModel(MLPDynamics(2, 2, (16,)), state_shape=(2,), **kwargs)


def _data():
    return blobs(64)


def test_a_rejected_batch_does_not_become_the_reference_set() -> None:
    # The batch was remembered as the per-epoch reference set before its labels were checked,
    # so every later fit trained an epoch and then failed on it.
    x, y = _data()
    trainer = lp.LyapunovTrainer(_model(), progress=False, seed=0)
    with pytest.raises(ValueError, match="target must have shape"):
        trainer.fit([(x, y[:, None])], epochs=1)
    assert trainer.epoch == 0
    history = trainer.fit(loader(x, y), epochs=1)
    assert trainer.epoch == 1 and len(history) == 1 and "ref_violation" in history[0]


@pytest.mark.parametrize("bad", ["range", "shape", "float"])
def test_labels_are_checked_before_the_model_runs(bad: str) -> None:
    x, y = _data()
    encoder = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    trainer = lp.LyapunovTrainer(_model(encoder=encoder), progress=False, seed=0)
    labels = {"range": y + 7, "shape": y[:, None], "float": y.float()}[bad]
    statistics, draws = encoder[1].running_mean.clone(), trainer.generator.get_state().clone()
    with pytest.raises((ValueError, TypeError), match="target"):
        trainer.loss(x, labels)
    assert torch.equal(statistics, encoder[1].running_mean)
    assert torch.equal(draws, trainer.generator.get_state())
    # The same trainer then computes exactly what a fresh one does.
    fresh = lp.LyapunovTrainer(_model(encoder=nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))), seed=0)
    fresh.model.load_state_dict(trainer.model.state_dict())
    assert float(trainer.loss(x, y).loss.detach()) == pytest.approx(float(fresh.loss(x, y).loss.detach()), abs=1e-6)


def test_a_failed_fit_keeps_the_models_train_and_eval_flags() -> None:
    x, y = _data()
    model = _model()
    model.eval()
    trainer = lp.LyapunovTrainer(model, progress=False)
    with pytest.raises(ValueError):
        trainer.fit([(x, y[:, None])], epochs=1)
    assert not any(m.training for m in model.modules())


def test_robust_inputs_outside_the_projection_range_are_refused() -> None:
    # They were clamped into [0, 1], i.e. moved far outside the eps-ball, silently.
    x, y = _data()  # standardised blobs, outside [0, 1]
    with pytest.raises(ValueError, match=r"x must lie in .*\[0, 1\]"):
        lp.robust_objective(_model(), x)
    objective = InputPerturbedObjective(eps=0.1, steps=1)
    with pytest.raises(ValueError, match="input_range"):
        objective.perturb(_model(), x, y, kappa=1.0)
    free = InputPerturbedObjective(eps=0.1, steps=1, input_range=None)
    moved = free.perturb(_model(), x, y, kappa=1.0)
    assert float((moved - x).abs().max()) <= 0.1 + 1e-6
    pixels = (x - x.min()) / (x.max() - x.min())
    lp.robust_objective(_model(), pixels)  # inputs in [0, 1]: accepted


def test_fit_warns_before_overwriting_a_checkpoint_it_did_not_write(tmp_path) -> None:
    x, y = _data()
    path = tmp_path / "run.pt"
    first = lp.LyapunovTrainer(_model(), progress=False, seed=0)
    first.fit(loader(x, y), epochs=2, checkpoint_path=path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        first.fit(loader(x, y), epochs=3, checkpoint_path=path)  # its own file
    assert not [w for w in seen if "did not write" in str(w.message)]
    other = lp.LyapunovTrainer(_model(), progress=False, seed=1)
    with pytest.warns(UserWarning, match="did not write or resume from"):
        other.fit(loader(x, y), epochs=1, checkpoint_path=path)
    resumed = lp.LyapunovTrainer(_model(), progress=False, seed=1)
    resumed.resume(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resumed.fit(loader(x, y), epochs=2, checkpoint_path=path)  # resumed from it
    assert not [w for w in seen if "did not write" in str(w.message)]


def _checkpoint(tmp_path):
    x, y = _data()
    path = tmp_path / "good.pt"
    lp.LyapunovTrainer(_model(), progress=False, seed=0).fit(loader(x, y), epochs=1, checkpoint_path=path)
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s["rng"].__setitem__("generator", torch.zeros(3, dtype=torch.uint8)),
        lambda s: s.__setitem__("epoch", -5),
        lambda s: s.__setitem__("epoch", "abc"),
        lambda s: s.__setitem__("history", 5),
        lambda s: s.__setitem__("base_lrs", ["x"]),
        lambda s: s["rng"].__setitem__("python", (3, (1, 2), None)),
        lambda s: s["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(7)),
    ],
    ids=["generator", "negative-epoch", "text-epoch", "history", "base-lrs", "python-rng", "adam-moment"],
)
def test_resume_refuses_a_bad_checkpoint_and_changes_nothing(tmp_path, corrupt) -> None:
    state = _checkpoint(tmp_path)
    corrupt(state)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    trainer = lp.LyapunovTrainer(_model(), progress=False, seed=2)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    draws, global_draws = trainer.generator.get_state().clone(), torch.get_rng_state().clone()
    with pytest.raises(CheckpointError):
        trainer.resume(bad)
    assert trainer.epoch == 0 and trainer.history == []
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert torch.equal(draws, trainer.generator.get_state()) and torch.equal(global_draws, torch.get_rng_state())


def test_rk4_anytime_raises_on_a_field_that_returns_nan() -> None:
    class NaNField(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, eta, context, t):
            return self.linear(torch.cat([eta, context], 1)) * float("nan")

    x, _ = _data()
    model = lp.ODEModel(NaNField(), state_shape=(2,))
    with pytest.raises(lp.SolverError, match="NaN/Inf"):
        lp.anytime_predict(model, x)  # solver "auto": the model's RK4
    with pytest.raises(lp.SolverError):
        lp.choose_level(model, x)


def test_time_grids_follow_a_float64_model() -> None:
    # One Euler step to t_end = 0.1: a float32 time grid rounded t_end to 0.10000000149.
    model = _model(t_end=0.1, solver=lp.FixedStepSolver(method="euler", steps=1)).double()
    x = _data()[0].double()
    with torch.no_grad():
        context, eta0 = model.encode(x)
        exact = model.readout(eta0 + 0.1 * model.vector_field(eta0, context, torch.zeros(64, dtype=torch.float64)))
        assert torch.equal(model(x), exact)
        assert torch.equal(lp.Classifier(model)(x), exact)


def test_paths_and_grids_are_checked_before_any_training(tmp_path) -> None:
    x, y = _data()
    trainer = lp.LyapunovTrainer(_model(), progress=False)
    with pytest.raises(TypeError, match="ts must be a torch.Tensor"):
        trainer.loss_error_curve(loader(x, y), ts=[0.0, 1.0])
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for kwargs in ({"metrics_path": blocker / "m.csv"}, {"checkpoint_path": blocker / "c.pt"}):
        with pytest.raises(ValueError, match="is a file, not a folder"):
            trainer.fit(loader(x, y), epochs=1, **kwargs)
        assert trainer.epoch == 0
    with pytest.raises(ValueError, match="is a file, not a folder"):
        trainer.save(blocker / "c.pt")


@pytest.mark.parametrize("delta", [-1.0, torch.tensor([0.1, float("nan")]), torch.tensor([0.1, -0.5])])
def test_theorem3_radius_refuses_a_negative_or_non_finite_delta(delta) -> None:
    with pytest.raises(ValueError, match="delta must"):
        lp.theorem3_radius(delta, 1.0, 1.0)


def test_target_shape_errors_name_the_users_batch() -> None:
    # They were raised inside the loss, after the targets were repeated per sampled state
    # ("target must have shape (576, 1)" for a batch of 64).
    x, _ = _data()
    regressor = lp.LyapunovTrainer(_model(readout=nn.Linear(2, 1)), lp.Recipe(potential=lp.MSEPotential()))
    with pytest.raises(ValueError, match=r"target must have shape \(64, 1\)"):
        regressor.fit([(x, torch.zeros(64))], epochs=1)
    with pytest.raises(ValueError, match=r"target must have shape \(64,\)"):
        lp.LyapunovTrainer(_model(), progress=False).fit([(x, torch.zeros(64, 2, dtype=torch.long))], epochs=1)


def test_a_feature_count_the_model_does_not_take_is_a_value_error_naming_x() -> None:
    x, y = _data()
    trainer = lp.LyapunovTrainer(_model(encoder=nn.Linear(2, 2)), progress=False)
    with pytest.raises(ValueError, match=r"cannot run on inputs x of shape \(64, 3\)"):
        trainer.fit([(torch.randn(64, 3), y)], epochs=1)
    assert trainer.epoch == 0


def test_the_trainers_choose_level_uses_the_kappa_its_anytime_predict_uses() -> None:
    # choose_level's default kappa is 1; trainer.anytime_predict runs the regression rule at
    # the training kappa (10 by default), so a level chosen at 1 was 10x too loose.
    from lyapunov_plugin.anytime import choose_level

    torch.manual_seed(0)
    x = torch.rand(96, 2)
    target = (x[:, :1] - x[:, 1:]).clone()
    trainer = lp.LyapunovTrainer(
        _model(readout=nn.Linear(2, 1)), lp.Recipe(potential=lp.MSEPotential()), progress=False, seed=0
    )
    trainer.fit(loader(x, target), epochs=2)
    kappa = trainer.kappa_schedule.final
    assert kappa != 1.0
    mine = trainer.choose_level(x, tolerance=0.05)
    free = choose_level(trainer.model, x, potential=lp.MSEPotential(), kappa=kappa, tolerance=0.05)
    assert mine.level == free.level
    with pytest.raises(TypeError, match="x_val must be a torch.Tensor"):
        trainer.choose_level([0.0])


def test_diagnostics_name_the_users_batch_when_inputs_and_targets_do_not_pair() -> None:
    x, y = _data()
    model = _model()
    grid = torch.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match=r"x has shape \(32, 2\), y has shape \(4,\)"):
        lp.diagnostics.trajectory_violation_rate(model, [(x[:32], y[:4])], kappa=1.0, ts=grid)
    with pytest.raises(ValueError, match=r"x has shape \(32, 2\), y has shape \(4,\)"):
        lp.diagnostics.trajectory_violation_rate(model, (x[:32], y[:4]), kappa=1.0, ts=grid)
