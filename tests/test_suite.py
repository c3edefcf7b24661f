"""Smoke test of the benchmark suite (python -m benchmarks.suite) at a tiny budget.

Two epochs say nothing about accuracy or speed: the test checks that every cell is run and
reported with the metrics the README's table shows, and that the baseline is tuned."""

import json
import math

import numpy as np
import pytest
import torch

from benchmarks.suite import __main__ as suite
from benchmarks.suite.patterns import IMAGE_PATTERNS, PATTERNS, applies, build
from benchmarks.suite.problems import (
    BARE_EXTRA,
    DEVELOPMENT,
    HELD_OUT,
    HELD_OUT_BARE,
    HELD_OUT_REGRESSION,
    IMAGE,
    PROBLEMS,
    REGRESSION,
    load_problem,
)
from benchmarks.suite.runner import budget, run, time_to
from benchmarks.suite.variants import DEFAULT, STANDARD


def test_problems_are_split_the_same_way_every_time_and_stratified():
    assert set(DEVELOPMENT).isdisjoint(HELD_OUT) and len(PROBLEMS) >= 8
    a, b = load_problem("wine"), load_problem("wine")
    assert a.x_train.equal(b.x_train) and a.y_test.equal(b.y_test)
    assert abs(float(a.x_train.mean())) < 1e-5  # standardised with training statistics
    counts = a.y_train.bincount().float() / len(a.y_train)
    assert float((counts - a.y_test.bincount().float() / len(a.y_test)).abs().max()) < 0.05


def test_every_pattern_builds_a_model_the_trainer_accepts():
    from lyapunov_plugin import LyapunovTrainer

    modes = {}
    for pattern in PATTERNS:
        d, m = (3, 3) if pattern == "bare" else (4, 3)
        trainer = LyapunovTrainer(build(pattern, d, m, seed=0), progress=False)
        modes[pattern] = trainer.mode
    assert modes["paper"] == "monte_carlo"
    assert all(modes[p] == "path_integral" for p in PATTERNS if p != "paper")


def test_the_bare_pattern_is_torchdyns_neural_ode_with_the_state_as_logits():
    from torchdyn.core import NeuralODE

    from lyapunov_plugin import LyapunovTrainer, PathIntegralObjective

    model = build("bare", 2, 2, seed=0)
    assert isinstance(model, NeuralODE)  # no readout: the user's model is the NeuralODE itself
    assert LyapunovTrainer(model, progress=False).recipe.objective == PathIntegralObjective(form="discrete", steps=8)
    with pytest.raises(ValueError, match="d=4, m=3"):
        build("bare", 4, 3, seed=0)
    assert applies("bare", 2, 2) and not applies("bare", 4, 3) and applies("dc", 4, 3)
    for name in BARE_EXTRA + HELD_OUT_BARE:
        problem = load_problem(name)
        assert problem.num_features == problem.num_classes and not problem.is_regression


def test_image_patterns_put_a_conv_encoder_before_the_flow_and_train_both_ways():
    """On flattened (1, 8, 8) images every image pattern builds a model whose first layer is
    a convolution, which both methods train a step of; the flat-only patterns are refused."""
    from lyapunov_plugin import LyapunovTrainer

    x, y = torch.rand(6, 64), torch.tensor([0, 1, 2, 0, 1, 2])
    for pattern in IMAGE_PATTERNS:
        assert applies(pattern, 64, 3, image=True)
        model = build(pattern, 64, 3, seed=0, image_shape=(1, 8, 8))
        assert any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
        for mode in ("default", "standard"):
            trainer = LyapunovTrainer(model, progress=False, **({} if mode == "default" else {"mode": "standard"}))
            before = [p.detach().clone() for p in trainer.model.parameters()]
            trainer.fit([(x, y)], epochs=1)
            assert trainer.predict(x).shape == (6, 3)
            assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    for pattern in set(PATTERNS) - set(IMAGE_PATTERNS):
        assert not applies(pattern, 64, 3, image=True)
        with pytest.raises(ValueError, match="image problem"):
            build(pattern, 64, 3, seed=0, image_shape=(1, 8, 8))


def test_the_image_problem_is_mnist5k_as_flat_pixels_in_the_unit_interval():
    problem = load_problem(IMAGE[0])
    assert problem.image_shape == (1, 28, 28) and problem.num_features == 784 and problem.num_classes == 10
    assert len(problem.y_train) + len(problem.y_val) + len(problem.y_test) == 5000
    assert 0.0 <= float(problem.x_train.min()) and float(problem.x_train.max()) <= 1.0


def test_regression_problems_have_standardised_float_targets_and_a_fixed_split():
    assert set(REGRESSION).isdisjoint(HELD_OUT_REGRESSION) and len(REGRESSION) >= 3
    for name in REGRESSION + HELD_OUT_REGRESSION:
        a, b = load_problem(name), load_problem(name)
        assert a.is_regression and a.num_classes == 1
        assert a.y_train.dtype == torch.float32 and a.y_train.shape == (len(a.x_train), 1)
        assert a.x_test.equal(b.x_test) and a.y_test.equal(b.y_test)
        y = a.y_train.double().numpy()
        assert abs(y.mean()) < 1e-6 and abs(y.std() - 1.0) < 1e-5  # training statistics
        assert len(a.y_train) + len(a.y_val) + len(a.y_test) in (442, 600, 700, 800, 1000)


@pytest.mark.parametrize("method", [DEFAULT, STANDARD], ids=["lyanet", "standard"])
def test_a_regression_cell_trains_through_fit_and_reports_the_test_mse(method):
    problem = load_problem("sine")
    keep: dict = {}
    result = run(problem, "paper", method, seed=0, epochs=4, keep=keep)
    trainer = keep["trainer"]
    assert result["task"] == "regression" and result["objective"] == ("monte_carlo" if method.lyanet else "standard")
    assert type(trainer.potential).__name__ == "MSEPotential"
    with torch.no_grad():
        prediction = trainer.predict(problem.x_test).double().numpy()
    independent = float(np.mean((prediction - problem.y_test.double().numpy()) ** 2))
    assert result["test_mse"] == pytest.approx(independent, rel=1e-9)
    # The curve's last point is the trainer's own evaluate() on the test set (mean MSEPotential).
    assert result["curve"][-1][2] == pytest.approx(trainer.evaluate([(problem.x_test, problem.y_test)])["loss"])
    assert result["curve"][-1][2] == pytest.approx(independent, rel=1e-5)
    assert all(np.isfinite(result[k]) for k in ("test_mse", "val_mse", "test_mse_t0.25", "test_mse_t0.5"))
    assert result["test_mse"] < 0.9  # four epochs already beat predicting the training mean (MSE 1)


def test_budget_and_time_to_target():
    assert budget(90) == (32, 100) and budget(1077) == (64, 20)
    curve = [(1, 0.5, 0.7), (2, 1.0, 0.9), (3, 1.5, 0.95)]
    assert time_to(curve, 0.9) == 1.0 and math.isinf(time_to(curve, 0.99))


def test_quick_suite_reports_every_cell(tmp_path):
    payload = suite.main(["--quick", "--jobs", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "suite_quick.json").read_text())
    assert len(written["cells"]) == len(payload["cells"]) == 4
    for cell in written["cells"]:
        assert set(cell["lyanet"]) >= {
            "acc",
            "err_t0.25",
            "err_t0.5",
            "time_to_target",
            "nfe",
            "v_monotone",
            "test_violation",
        }
        assert cell["standard"]["lr"] == 1e-2  # the quick budget tunes over one learning rate
    markdown = (tmp_path / "suite_quick.md").read_text()
    assert markdown.startswith("| problem | pattern | LyaNet objective")
    assert "machine:" in markdown and "development problems" in markdown


def test_markdown_is_rendered_again_from_the_json(tmp_path):
    suite.main(["--quick", "--jobs", "1", "--out", str(tmp_path)])
    first = (tmp_path / "suite_quick.md").read_text()
    suite.main(["--from-json", str(tmp_path / "suite_quick.json")])
    assert (tmp_path / "suite_quick.md").read_text() == first


def test_quick_regression_and_bare_subsets_write_their_own_tables(tmp_path):
    payload = suite.main(
        [
            "--regression",
            "--quick",
            "--jobs",
            "1",
            "--problems",
            "sine",
            "--patterns",
            "dc",
            "bare",
            "--out",
            str(tmp_path),
        ]
    )
    cells = json.loads((tmp_path / "suite_regression_quick.json").read_text())["cells"]
    assert [(c["problem"], c["pattern"]) for c in cells] == [("sine", "dc"), ("sine", "bare")]  # 1-D in, 1-D out
    for cell in cells:
        assert all(math.isfinite(cell[side]["mse"]) and cell[side]["mse"] > 0 for side in ("lyanet", "standard"))
        # the table stores the ratio rounded to 4 places
        assert cell["mse_ratio"] == pytest.approx(cell["lyanet"]["mse"] / cell["standard"]["mse"], abs=1e-4)
    assert payload["targets"]["regression"]["cells"] == 2
    assert (
        (tmp_path / "suite_regression_quick.md")
        .read_text()
        .startswith("| problem | pattern | LyaNet objective | test MSE")
    )

    suite.main(
        ["--patterns", "bare", "--quick", "--jobs", "1", "--problems", "circles", "iris", "--out", str(tmp_path)]
    )
    bare = json.loads((tmp_path / "suite_bare_quick.json").read_text())
    assert [(c["problem"], c["pattern"]) for c in bare["cells"]] == [("circles", "bare")]  # iris: 4 features, 3 classes
    assert bare["kind"] == "bare" and 0.0 <= bare["cells"][0]["lyanet"]["acc"] <= 1.0

    suite.main(["--image", "--quick", "--jobs", "1", "--patterns", "plain", "paper", "dc", "--out", str(tmp_path)])
    image = json.loads((tmp_path / "suite_image_quick.json").read_text())
    assert image["kind"] == "image"  # dc is not an image pattern: it is enc_dc on conv features
    assert [(c["problem"], c["pattern"]) for c in image["cells"]] == [("mnist5k", "plain"), ("mnist5k", "paper")]
    assert "image problem (convolutional encoder)" in (tmp_path / "suite_image_quick.md").read_text()


def test_regression_levers_and_a_rerun_of_the_default_against_a_saved_baseline(tmp_path):
    """The regression lever table (MSE ratios per variant), and --baseline-from with
    --rerun-default: the standard runs come from the saved JSON, the default is trained again."""
    common = ["--regression", "--quick", "--jobs", "1", "--problems", "sine", "--patterns", "dc", "--no-pictures"]
    first = suite.main([*common, "--variants", "path_steps_4", "--out", str(tmp_path)])
    levers = (tmp_path / "suite_regression_quick_levers.md").read_text()
    assert levers.startswith("| variant | cells <= 1.05x | median ratio | geometric mean ratio")
    assert [row["name"] for row in first["levers"]] == ["lyanet", "path_steps_4"]
    assert all(len(row["ratios"]) == 1 and row["ratios"][0] > 0 for row in first["levers"])
    # A marked copy: a reused default run would carry the mark, a retrained one cannot.
    saved = json.loads((tmp_path / "suite_regression_quick.json").read_text())
    for r in saved["runs"]["lyanet"]:
        r["test_mse"] = 123.0
    (tmp_path / "marked.json").write_text(json.dumps(saved))
    (tmp_path / "partial.json").write_text(json.dumps({**saved, "runs": {**saved["runs"], "standard": []}}))
    with pytest.raises(ValueError, match="--baseline-from must hold the standard runs .* missing: sine/dc seed 0"):
        suite.main([*common, "--baseline-from", str(tmp_path / "partial.json"), "--rerun-default"])
    with pytest.raises(SystemExit):
        suite.main([*common, "--rerun-default"])  # without --baseline-from: refused by the parser
    reused_default = suite.main(
        [*common, "--baseline-from", str(tmp_path / "marked.json"), "--name", "reuse", "--out", str(tmp_path)]
    )
    assert [r["test_mse"] for r in reused_default["runs"]["lyanet"]] == [123.0]
    again = suite.main(
        [
            *common,
            "--baseline-from",
            str(tmp_path / "marked.json"),
            "--rerun-default",
            "--name",
            "again",
            "--out",
            str(tmp_path),
        ]
    )
    reused = [(r["seed"], r["lr"], r["train_seconds"]) for r in again["runs"]["standard"]]
    saved = first["runs"]["standard"]
    assert reused == [(r["seed"], r["lr"], pytest.approx(r["train_seconds"], abs=1e-6)) for r in saved]
    assert again["reused"] == {"from": "marked.json", "default": False}
    (default,) = [r for r in again["runs"]["lyanet"] if r["method"] == "lyanet"]
    assert default["test_mse"] == pytest.approx(
        next(r for r in first["runs"]["lyanet"] if r["method"] == "lyanet")["test_mse"], rel=1e-6
    )  # trained again, seeded: the same model
    assert "the standard runs reused from `marked.json`" in (tmp_path / "again.md").read_text()
