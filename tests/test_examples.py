"""Every example and benchmark runs end to end at a tiny budget (numbers not meaningful)."""

import json
import math

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("torchattacks")


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_compare_digits_quick(tmp_path):
    from examples.compare_digits import main

    payload = main(epochs=1, seeds=(0,), quick=True, out_dir=tmp_path)
    header = (tmp_path / "digits_comparison.md").read_text().splitlines()[0]
    assert header == (
        "| metric | standard, plain encoder | LyaNet, plain encoder | standard, lipschitz encoder "
        "| LyaNet, lipschitz encoder |"
    )
    saved = json.loads((tmp_path / "digits_comparison.json").read_text())
    assert {(r["method"], r["encoder"]) for r in saved["runs"]} == {
        (m, e) for m in ("standard", "lyanet") for e in ("plain", "lipschitz")
    }
    lyanet = next(r for r in saved["runs"] if r["method"] == "lyanet")
    assert lyanet["lr"] == 1e-2  # LyapunovTrainer(model) defaults
    assert saved["setup"]["standard_lr"]["plain"]["lr"] in (1e-3, 1e-2)  # tuned on a validation split
    for column in payload["summary"]:
        row = payload["summary"][column]
        assert _finite(row["clean error, RK4-10 (%)"]["mean"])
        assert _finite(row["worst case over all l_inf 0.1 attacks (%)"]["mean"])
    assert {
        "plain encoder: clean within 0.5 pt of standard",
        "lipschitz encoder: worst-case l_inf 0.1 >= 10 pt lower",
    } <= set(payload["goals"])
    sanity = saved["runs"][0]["robustness"]["sanity"]
    assert {
        "sweep_reaches_high_error",
        "more_steps_never_help",
        "square_not_stronger_than_pgd",
        "transfer_not_stronger_than_direct",
        "all_ok",
    } <= set(sanity)


def test_circles(tmp_path):
    from examples.circles import main

    results = main(epochs=2, n=64, resolution=16, out_dir=tmp_path)
    assert (tmp_path / "circles.png").stat().st_size > 0
    for name in ("mlp_test_error", "Neural ODE_test_error", "LyaNet_test_error"):
        assert 0.0 <= results[name] <= 1.0


def test_early_termination(tmp_path):
    from examples.early_termination import main

    payload = main(epochs=1, seeds=(0,), grid=5, quick=True, out_dir=tmp_path)
    assert (tmp_path / "early_termination.png").exists()
    for method in ("standard", "lyanet"):
        assert len(payload["summary"][method]["mean_error"]) == 5
        assert set(payload["summary"][method]["mean_nfe_dopri5"]) == {"0.25", "0.5", "1.0"}


def test_kappa_ablation(tmp_path):
    from examples.kappa_ablation import main

    payload = main(kappas=(5.0,), seeds=(0,), epochs=1, quick=True, out_dir=tmp_path)
    assert "| 5 |" in (tmp_path / "kappa_ablation.md").read_text()
    assert _finite(payload["summary"]["5"]["clean error (%)"]["mean"])


def test_lever_study_subset_and_merge(tmp_path):
    from benchmarks.lever_study import VARIANTS, main, merge

    main(seeds=(0,), epochs=1, only=[1], quick=True, out_dir=tmp_path, name="a")
    main(seeds=(0,), epochs=1, only=[15], quick=True, out_dir=tmp_path, name="b")
    merged = merge([tmp_path / "b.json", tmp_path / "a.json"], out_dir=tmp_path, name="merged")
    assert list(merged["summary"]) == [VARIANTS[1].name, VARIANTS[15].name]  # the order of VARIANTS


def test_region_coverage(tmp_path):
    from benchmarks.region_coverage import main

    payload = main(seeds=(0,), epochs=1, quick=True, out_dir=tmp_path)
    assert set(payload["summary"]) == {
        "fixed Appendix-B cube",
        "covering cube (issue-4 default)",
        "rollout sampler (default sampler)",
    }
    assert (tmp_path / "region_coverage.md").exists()


def test_embed_markdown(tmp_path):
    from examples.common.report import embed_markdown, main

    doc = tmp_path / "doc.md"
    doc.write_text("a\n<!-- t -->\nold\n<!-- /t -->\nb\n")
    embed_markdown(doc, "t", "| x |\n")
    assert doc.read_text() == "a\n<!-- t -->\n| x |\n<!-- /t -->\nb\n"
    (tmp_path / "table.md").write_text("new")
    main([str(doc), f"t={tmp_path / 'table.md'}"])
    assert "new" in doc.read_text()
    with pytest.raises(ValueError, match="has no <!-- u --> ... <!-- /u --> block"):
        embed_markdown(doc, "u", "x")


def test_initial_state_benchmark(tmp_path):
    pytest.importorskip("torchdyn")
    from benchmarks.initial_state import main

    payload = main(seeds=(0,), epochs=1, out_dir=tmp_path, limit=128)
    assert [row["mode"] for row in payload["summary"].values()] == ["monte_carlo", "path_integral", "standard"]
    assert (tmp_path / "initial_state.md").read_text().startswith("| method | test error (%)")


def test_fixed_step_benchmark(tmp_path):
    pytest.importorskip("torchdyn")
    from benchmarks.fixed_step import METHODS, main

    rows = main(seeds=(0,), epochs=1, out_dir=tmp_path, train_size=256)
    assert list(rows) == list(METHODS)
    assert all(0.0 <= r["own_solver"][0] <= 100.0 for r in rows.values())
    assert (tmp_path / "fixed_step.md").read_text().startswith("| method | test error, the model's own solver")


def test_solver_fidelity_benchmark(tmp_path):
    """Smoke run: both methods trained on one suite cell, each scored with its own solver and an
    accurate one, and on LyaNet's objective."""
    from benchmarks.solver_fidelity import main

    payload = main(["--cells", "circles/plain", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)])
    (row,) = payload["rows"]
    for key in ("standard", "lyanet"):
        scores = row[key]
        assert 0.0 <= scores["acc_accurate"]["mean"] <= 1.0 and 0.0 <= scores["disagreement"]["mean"] <= 1.0
        assert scores["lyanet_objective"]["mean"] >= 0.0
    assert (tmp_path / "solver_fidelity.md").read_text().startswith("| cell | standard, own solver")


def test_regression_rollout_benchmark(tmp_path):
    """Smoke run: one regression cell trained with the path integral along 4 and 8 RK4 steps,
    each model's training MSE measured along its rollout grid, its own solver and an accurate one."""
    from benchmarks.regression_rollout import RECIPES, main

    payload = main(["--cells", "friedman1/augmented", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)])
    (row,) = payload["rows"]
    for label, _, _ in RECIPES:
        assert set(row[label]) == {"train_rollout", "train_own", "train_accurate", "test_own"}
        assert all(0.0 < value["mean"] < 2.0 for value in row[label].values())
    # After one epoch the field is still gentle: every solve, the training grid included, agrees.
    eight = row["8 steps"]
    assert abs(eight["train_rollout"]["mean"] - eight["train_accurate"]["mean"]) < 0.02
    assert abs(eight["train_own"]["mean"] - eight["train_accurate"]["mean"]) < 0.02
    assert (tmp_path / "regression_rollout.md").read_text().startswith("| cell | 4 steps: train MSE, rollout")
    with pytest.raises(ValueError, match="cells must be regression cells of the suite, got 'circles/plain'"):
        main(["--cells", "circles/plain", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path)])


def test_regression_example(tmp_path):
    """Smoke run: the torchdyn regressor trained both ways for two epochs on make_friedman1."""
    from examples.regression import RECIPES, main

    payload = main(["--seeds", "0", "--epochs", "2", "--out-dir", str(tmp_path)])
    assert set(payload["mean"]) == set(RECIPES)
    for summary in payload["mean"].values():
        assert 0.0 < summary["test_mse"] < 2.0 and summary["nfe"] > 0
    assert (tmp_path / "regression.json").exists()
    with pytest.raises(ValueError, match="--epochs must be a positive integer, got 0"):
        main(["--epochs", "0", "--out-dir", str(tmp_path)])
