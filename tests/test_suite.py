"""Smoke test of the benchmark suite (python -m benchmarks.suite) at a tiny budget.

Two epochs say nothing about accuracy or speed: the test checks that every cell is run and
reported with the metrics the README's table shows, and that the baseline is tuned."""

import json
import math

from benchmarks.suite import __main__ as suite
from benchmarks.suite.patterns import PATTERNS, build
from benchmarks.suite.problems import DEVELOPMENT, HELD_OUT, PROBLEMS, load_problem
from benchmarks.suite.runner import budget, time_to


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
        trainer = LyapunovTrainer(build(pattern, 4, 3, seed=0), progress=False)
        modes[pattern] = trainer.mode
    assert modes["paper"] == "monte_carlo"
    assert all(modes[p] == "path_integral" for p in PATTERNS if p != "paper")


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
