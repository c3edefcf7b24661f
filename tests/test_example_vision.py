"""Smoke test of ``examples/vision.py`` (paper Table 1) on FakeData at a tiny budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from examples.common.vision_models import RESNET18_WIDTH, narrow_resnet18, resnet18
from examples.vision import LABELS, main

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


def test_bad_arguments_name_the_argument(tmp_path):
    with pytest.raises(ValueError, match="models"):
        main(models=("mlp",), out_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="select no row"):
        main(models=("resnet18",), methods=("lyanet",), out_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="epochs"):
        main(**{**TINY, "epochs": 0}, out_dir=tmp_path)
