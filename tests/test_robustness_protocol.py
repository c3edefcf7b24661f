"""The robustness protocol (examples/common/robustness.py, docs/evaluation.md): AutoAttack in the
per-example worst case, the cascade schedule, and the sanity checks judged on worst cases."""

import pytest
import torch
import torch.nn as nn

from lyapunov_plugin import FixedStepSolver, ODEModel

pytest.importorskip("torchattacks")

from examples.common import robustness as rb  # noqa: E402

EPS = 0.1


class Dynamics(nn.Module):
    def __init__(self, state=4, context=3, hidden=8):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state + context + 1, hidden), nn.Tanh(), nn.Linear(hidden, state))

    def forward(self, eta, context, t):
        return self.net(torch.cat([eta, context, t[:, None].to(eta.dtype)], dim=1))


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return ODEModel(
        Dynamics(),
        state_shape=(4,),  # APGD-T's targeted DLR needs >= 4 classes
        encoder=nn.Sequential(nn.Flatten(), nn.Linear(4, 3)),
        solver=FixedStepSolver(method="rk4", steps=2),
    )


def tiny_data(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    # image-shaped (N, C, H, W) as torchattacks expects, pixels in [0, 1]
    return torch.rand(n, 1, 2, 2, generator=g), torch.randint(0, 4, (n,), generator=g)


# --- the cascade (AutoAttack's schedule) on a fake classifier and fake attacks -------------------


class Threshold(nn.Module):
    """Class 1 if x[0] > 0.5 else 0 (two logits)."""

    def forward(self, x):
        return torch.stack([0.5 - x[:, 0], x[:, 0] - 0.5], dim=1)


class ShiftAttack:
    """Moves feature 0 by ``shift`` for the examples whose feature 1 lies in [low, high); records
    the feature-1 values it was given (to check the cascade only attacks what still stands)."""

    def __init__(self, shift, low, high, seen):
        self.shift, self.low, self.high, self.seen = shift, low, high, seen

    def __call__(self, x, y):
        self.seen.append(x[:, 1].clone())
        hit = (x[:, 1] >= self.low) & (x[:, 1] < self.high)
        adv = x.clone()
        adv[hit, 0] = adv[hit, 0] + torch.where(y[hit] == 0, self.shift, -self.shift)
        return adv


def test_cascade_attacks_only_the_examples_still_standing_and_keeps_breaking_images():
    x = torch.zeros(8, 2)
    x[:, 0] = torch.tensor([0.45, 0.45, 0.45, 0.45, 0.55, 0.55, 0.55, 0.9])
    x[:, 1] = torch.arange(8) / 8.0
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 0])  # example 7 is wrong before any attack
    seen_a, seen_b = [], []
    comps = [
        ("a", lambda m: ShiftAttack(0.08, 0.0, 0.3, seen_a)),  # breaks examples 0, 1, 2
        ("b", lambda m: ShiftAttack(0.08, 0.0, 0.7, seen_b)),  # would break 0..5; only 3..6 stand
    ]
    images, broken, own, log = rb.run_cascade(comps, Threshold(), x, y, eps=EPS, norm="linf", batch_size=3)
    assert broken.tolist() == [True] * 6 + [False, True]
    assert own["a"].tolist() == [True, True, True] + [False] * 5
    assert own["b"].tolist() == [False, False, False, True, True, True, False, False]
    # b saw only examples 3, 4, 5, 6 (feature 1 = index / 8), in batches of 3
    assert torch.cat(seen_b).mul(8).round().long().tolist() == [3, 4, 5, 6]
    assert torch.cat(seen_a).mul(8).round().long().tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert [e["cumulative_error"] for e in log] == [1 / 8, 4 / 8, 7 / 8]
    assert [e.get("newly_broken") for e in log[1:]] == [3, 3]
    # the kept images break their examples and stay in the ball; unbroken examples keep x
    assert (Threshold()(images).argmax(1) != y).tolist() == broken.tolist()
    assert float((images - x).abs().max()) <= EPS + 1e-7
    assert torch.equal(images[6], x[6])


def test_cascade_projects_an_attack_that_leaves_the_ball_before_scoring_it():
    x = torch.tensor([[0.45, 0.0]])
    y = torch.tensor([0])
    comps = [("too_far", lambda m: ShiftAttack(0.3, 0.0, 1.0, []))]
    images, broken, own, _ = rb.run_cascade(comps, Threshold(), x, y, eps=0.04, norm="linf")
    # 0.45 + 0.3 would cross 0.5; projected to 0.49 it does not, so nothing is credited
    assert not bool(broken[0]) and torch.equal(images, x)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_project_lands_in_the_ball_and_the_pixel_box(norm):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(16, 5, generator=g, dtype=torch.float64)
    adv = x + 2.0 * torch.randn(16, 5, generator=g, dtype=torch.float64)
    out = rb.project(x, adv, eps=0.3, norm=norm)
    size = (out - x).abs().amax(1) if norm == "linf" else (out - x).norm(dim=1)
    assert float(size.max()) <= 0.3 + 1e-12
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    inside = x + 0.01 * torch.ones_like(x).clamp(max=1.0)
    inside = inside.clamp(0, 1)
    assert torch.allclose(rb.project(x, inside, eps=0.3, norm=norm), inside)
    with pytest.raises(ValueError, match="norm"):
        rb.project(x, adv, eps=0.3, norm="l1")


def test_autoattack_components_are_the_standard_version_at_the_published_budget():
    view = nn.Sequential(nn.Linear(4, 3))
    comps = rb.autoattack_components(eps=0.1, n_classes=3, seed=5)
    assert [n for n, _ in comps] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    ce, t, fab, square = (make(view) for _, make in comps)
    assert (ce.steps, ce.loss, ce.eps) == (100, "ce", 0.1)
    assert (t.steps, t.n_target_classes) == (100, 2)
    assert (fab.steps, fab.multi_targeted, fab.n_target_classes) == (100, True, 2)
    assert square.n_queries == 5000
    weak = [make(view) for _, make in rb.autoattack_components(eps=0.1, n_classes=3, steps=10, square_queries=50)]
    assert [getattr(a, "steps", None) for a in weak[:3]] == [10, 10, 10] and weak[3].n_queries == 50


# --- the sanity checks on synthetic reports ------------------------------------------------------


def mask(*idx, n=100):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(idx)] = True
    return m


def report_with(entries, n=100):
    """A report whose attacks and masks are given as {name@eps: set of broken indices}."""
    rep = rb.RobustnessReport(0.0, 0.0)
    rep.main_eps = EPS
    for key, idx in entries.items():
        name, _, eps = key.rpartition("@")
        m = mask(*idx, n=n)
        rep.masks[key] = m
        if ":" not in name:
            rep.attacks.append(rb.AttackResult(name, float(eps), float(m.double().mean()), 0.0, float(eps)))
    return rep


def checks(rep):
    return rb.sanity_checks(rep, attack_steps=10, strong_steps=20, strong_restarts=2, main_eps=EPS)


BASE = {
    "pgd10_linf@0.1": range(0, 30),
    "pgd20x2_linf@0.1": range(0, 31),
    "autoattack_linf@0.1": range(0, 35),
    "autoattack_linf:apgd_ce@0.1": range(0, 30),
    "autoattack_linf:apgd_t@0.1": range(30, 35),
    "autoattack_linf:fab_t@0.1": [],
    "autoattack_linf:square@0.1": [],
    "square_linf@0.1": range(0, 20),
    "transfer_pgd_linf@0.1": range(0, 10),
    "pgd10_linf_sweep@0.5": range(0, 90),
    "autoattack10_linf_sweep@0.5": range(0, 96),
}


def test_sanity_passes_on_a_consistent_report_and_the_large_eps_check_uses_the_worst_case():
    c = checks(report_with(BASE))
    assert c["all_ok"] is True
    # PGD alone reaches 90 %, the worst case at 0.5 reaches 96 %: judged on the latter
    assert c["sweep_reaches_high_error"]["error"] == pytest.approx(0.96)
    assert c["more_steps_never_help"]["pairs"] == [(0.1, pytest.approx(0.30), pytest.approx(0.35))]
    assert c["worst_case_relies_on_ce_pgd_only"] is False


def test_large_eps_check_fails_below_95_percent():
    entries = dict(BASE, **{"autoattack10_linf_sweep@0.5": range(0, 94)})
    c = checks(report_with(entries))
    assert c["sweep_reaches_high_error"]["ok"] is False and c["all_ok"] is False


def test_black_box_breaking_what_white_box_left_fails_even_when_its_rate_is_lower():
    # AutoAttack's Square component breaks 5 points that no white-box attack broke: a sign of
    # masked gradients, although Square's own rate (20 %) is below the white-box 35 %.
    entries = dict(BASE, **{"autoattack_linf@0.1": range(0, 40), "autoattack_linf:square@0.1": range(35, 40)})
    c = checks(report_with(entries))["square_not_stronger_than_pgd"]
    assert c["ok"] is False
    assert c["white_box"] == pytest.approx(0.35)  # the AutoAttack total (with Square) is not white-box
    assert c["breaks_beyond_white_box"] == pytest.approx(0.05)


def test_square_stronger_than_white_box_fails():
    entries = dict(BASE, **{"square_linf@0.1": range(0, 34)})
    assert checks(report_with(entries))["square_not_stronger_than_pgd"]["ok"] is True  # 34 <= 35 + 2
    entries["square_linf@0.1"] = list(range(0, 30)) + list(range(50, 58))  # 38 %, 8 beyond white-box
    c = checks(report_with(entries))["square_not_stronger_than_pgd"]
    assert c["ok"] is False and c["black_or_transfer"] == pytest.approx(0.38)


def test_transfer_stronger_than_direct_fails():
    entries = dict(BASE, **{"transfer_pgd_linf@0.1": range(0, 40)})
    c = checks(report_with(entries))
    assert c["transfer_not_stronger_than_direct"]["ok"] is False and c["all_ok"] is False


def test_more_steps_check_is_judged_on_the_worst_case_of_each_budget():
    # The strong budget's worst case (PGD-20 x 2, AutoAttack) falls 5 points below PGD-10's.
    entries = dict(
        BASE,
        **{
            "pgd10_linf@0.1": range(0, 40),
            "pgd20x2_linf@0.1": range(0, 30),
            "autoattack_linf@0.1": range(0, 35),
        },
    )
    c = checks(report_with(entries))["more_steps_never_help"]
    assert c["ok"] is False and c["pairs"] == [(0.1, pytest.approx(0.40), pytest.approx(0.35))]
    # the weak AutoAttack, when present, joins the weak side
    entries = dict(BASE, **{"autoattack10_linf@0.1": range(0, 38)})
    c = checks(report_with(entries))["more_steps_never_help"]
    assert c["ok"] is False and c["pairs"][0][1] == pytest.approx(0.38)


def test_worst_case_relying_on_ce_pgd_is_labelled():
    entries = {k: v for k, v in BASE.items() if k.startswith("pgd")}
    c = checks(report_with(entries))
    assert c["worst_case_relies_on_ce_pgd_only"] is True
    assert rb.relies_on_ce_pgd_only("apgd100_ce_linf") and rb.relies_on_ce_pgd_only("pgd10_l2")
    assert not rb.relies_on_ce_pgd_only("apgd100_dlr_linf") and not rb.relies_on_ce_pgd_only("autoattack_linf")


# --- the wiring on a real (tiny) model -----------------------------------------------------------


def test_autoattack_is_in_the_worst_case_and_the_worst_case_is_the_per_example_max():
    torch.set_num_threads(1)
    model, source = tiny_model(0), tiny_model(1)
    x, y = tiny_data()
    rep = rb.evaluate_robustness(
        model,
        x,
        y,
        linf_eps=(EPS,),
        l2_eps=(0.3,),
        sweep_eps=(0.5,),
        attack_steps=2,
        strong_steps=3,
        strong_restarts=1,
        apgd_steps=2,
        square_queries=5,
        attack_solver=FixedStepSolver(method="rk4", steps=2),
        inference_solver=FixedStepSolver(method="rk4", steps=2),
        transfer_from=source,
        autoattack=True,
        autoattack_steps=3,
        autoattack_square_queries=8,
        batch_size=10,
    )
    d = rep.as_dict()
    main = d["worst_case_attacks"]
    assert "autoattack_linf@0.1" in main and "autoattack2_linf@0.1" in main
    assert "square_linf@0.1" in main and "transfer_pgd_linf@0.1" in main
    assert not any("l2" in k or "sweep" in k or ":" in k for k in main)
    # the worst case is the per-example max (logical or) over exactly those attacks
    expected = torch.zeros(len(y), dtype=torch.bool)
    for k in main:
        expected |= rep.masks[k]
    assert torch.equal(rep.worst_case_mask, expected)
    assert rep.worst_case_error == pytest.approx(float(expected.double().mean()))
    for a in rep.attacks:
        if f"{a.name}@{a.eps:g}" in main:
            assert rep.worst_case_error >= a.error_attack_view - 1e-12
            assert a.max_perturbation <= EPS + 1e-6
    # the AutoAttack total is its clean errors plus what each component broke, and its log adds up
    aa = rep.masks["autoattack_linf@0.1"]
    parts = torch.zeros_like(aa)
    for c in rb.AUTOATTACK_COMPONENTS:
        parts |= rep.masks[f"autoattack_linf:{c}@0.1"]
    from examples.common.robustness import Classifier, error_rate

    clean_wrong = Classifier(model, solver=FixedStepSolver(method="rk4", steps=2)).eval()(x).argmax(1) != y
    assert torch.equal(aa, parts | clean_wrong)
    log = d["autoattack"]["autoattack_linf@0.1"]
    assert [e["component"] for e in log] == ["clean", *rb.AUTOATTACK_COMPONENTS]
    cumulative = [e["cumulative_error"] for e in log]
    assert cumulative == sorted(cumulative) and cumulative[-1] == pytest.approx(float(aa.double().mean()))
    assert error_rate(Classifier(model, solver=FixedStepSolver(method="rk4", steps=2)), x, y) == pytest.approx(
        cumulative[0]
    )
    # the sweep's worst case includes the tenth-budget AutoAttack at the large eps
    assert "autoattack2_linf_sweep@0.5" in d["sanity"]["sweep_reaches_high_error"]["attacks"]
    assert d["white_box_worst_case_error"] <= d["worst_case_error"] + 1e-12
    assert isinstance(d["sanity"]["all_ok"], bool)


# --- the benchmark's bookkeeping (benchmarks/robust.py) -------------------------------------------


def fake_run(method, seed, worst, clean, ok=1.0):
    from benchmarks import robust as bench

    run = {k: 0.5 for k in bench.ROWS.values()}
    run.update(
        method=method,
        seed=seed,
        worst_case=worst,
        clean_error=clean,
        sanity_all_ok=ok,
        sanity={"all_ok": bool(ok), "more_steps_never_help": {"ok": bool(ok)}},
        train_cpu_seconds=1.0 if method == "standard" else 2.0,
        attack_cpu_seconds=1.0,
    )
    return run


def test_benchmark_targets_and_merge_of_per_seed_files(tmp_path):
    import json

    from benchmarks import robust as bench

    runs = {
        0: [fake_run("standard", 0, 0.50, 0.020), fake_run("robust_objective", 0, 0.30, 0.025)],
        1: [fake_run("standard", 1, 0.54, 0.022), fake_run("robust_objective", 1, 0.40, 0.035, ok=0.0)],
    }
    for seed, rs in runs.items():
        payload = {"setup": {"problem": "digits", "wall_clock_seconds": 1.0}, "runs": rs}
        (tmp_path / f"robust_digits_s{seed}.json").write_text(json.dumps(payload))
    (tmp_path / "robust_digits_s0_quick.json").write_text(json.dumps({"setup": {}, "runs": []}))
    merged = bench.merge(tmp_path, "digits")
    assert merged["setup"]["seeds"] == [0, 1] and len(merged["runs"]) == 4
    t = merged["targets"]["robust_objective"]
    assert t["worst_case_gain_points"] == pytest.approx(100 * (0.52 - 0.35))
    assert t["clean_error_delta_points"] == pytest.approx(100 * (0.030 - 0.021))
    # one seed failed a sanity check, so the target is missed despite the 17-point gain
    assert t["sanity_all_seeds"] is False and t["target_met"] is False
    assert bench.merge(tmp_path, "mnist5k") is None
    # the generated reading names the failed check, the cost and the verdict
    reading = bench.reading_markdown({"digits": merged})
    assert "failed: more_steps_never_help" in reading
    assert "training CPU time 2.0x standard's" in reading and "missed" in reading


def test_the_smoothing_candidate_is_the_default_objective_with_only_the_potential_changed():
    import dataclasses

    from benchmarks import robust as bench
    from examples.common.models import digits_node
    from lyapunov_plugin import CrossEntropyPotential, default_objective

    model = digits_node(torch.rand(8, 64))
    candidate = bench._candidates(model)["default_smoothing"]()
    expected = dataclasses.replace(default_objective(model), potential=CrossEntropyPotential(smoothing=bench.SMOOTHING))
    assert candidate == expected
