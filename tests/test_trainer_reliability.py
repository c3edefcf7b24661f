"""The trainer's guarantees that the refactor had to keep or add: solver faults follow the
non-finite policy, a bad device names ``device``, regression trains through fit/evaluate/resume,
and an interrupted shuffled run resumed in a new process reproduces the uninterrupted one
(history and parameters) bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from lyapunov_plugin import LyapunovTrainer, MSEPotential, NonFiniteLossError, ODEModel, Recipe, SupervisedObjective

from .models import PlainField, blobs, loader

ROOT = Path(__file__).resolve().parents[1]


class _InfAfter(nn.Module):
    """A torchdiffeq field that returns Inf once ``armed`` (a solver fault mid-training)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = PlainField()
        self.armed = False

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.inner(t, y)
        return out * float("inf") if self.armed else out


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_a_solver_fault_during_a_step_follows_the_non_finite_policy(policy):
    pytest.importorskip("torchdiffeq")
    from lyapunov_plugin.adapters.torchdiffeq import TorchdiffeqModel

    torch.manual_seed(0)
    field = _InfAfter()
    model = TorchdiffeqModel(field, readout=nn.Linear(2, 2), method="dopri5")
    trainer = LyapunovTrainer(model, objective=SupervisedObjective(), nonfinite=policy, progress=False)
    x, y = blobs(32)
    trainer.fit(loader(x, y, shuffle=False, batch_size=16), epochs=1)
    before = [p.detach().clone() for p in model.parameters()]
    field.armed = True
    if policy == "raise":
        with pytest.raises(NonFiniteLossError, match=r"non-finite solver result .* at epoch 2, step 0"):
            trainer.fit(loader(x, y, shuffle=False, batch_size=16), epochs=2)
    else:
        trainer.fit(loader(x, y, shuffle=False, batch_size=16), epochs=2)
        assert trainer.skipped_steps == 2 and trainer.history[-1]["skipped_steps"] == 2
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize("device", [10**30, -(10**30), "gpu:x", 3.5])
def test_an_impossible_device_is_named(device):
    torch.manual_seed(0)
    model = ODEModel(lambda eta, x, t: -eta + x, state_shape=(2,), readout=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="device"):
        LyapunovTrainer(model, device=device)


def _regression_model() -> ODEModel:
    class Field(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

        def forward(self, eta: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([eta, x], dim=-1))

    return ODEModel(Field(), state_shape=(1,))


def test_regression_trains_through_fit_evaluate_and_resume(tmp_path):
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 128, dtype=torch.float64).unsqueeze(1)  # numpy-like float64 features
    y = torch.sin(x)  # float64 targets of shape (B, 1)
    data = loader(x, y, batch_size=32)
    trainer = LyapunovTrainer(_regression_model(), Recipe(potential=MSEPotential()), seed=0, progress=False)
    before = trainer.evaluate((x, y))["loss"]
    trainer.fit(data, epochs=6, val_loader=[(x, y)], checkpoint_path=tmp_path / "reg.pt")
    after = trainer.evaluate((x, y))
    assert "error" not in after and after["loss"] < 0.5 * before
    assert "ref_violation" in trainer.history[-1] and "ref_error" not in trainer.history[-1]
    resumed = LyapunovTrainer(_regression_model(), Recipe(potential=MSEPotential()), seed=0, progress=False)
    assert resumed.resume(tmp_path / "reg.pt") == 6
    torch.testing.assert_close(resumed.predict(x), trainer.predict(x), rtol=0, atol=0)


_RUN = textwrap.dedent(
    """
    import json, sys, torch
    from torch import nn
    from lyapunov_plugin import LyapunovTrainer
    from tests.models import blobs, torchdyn_data_controlled

    torch.set_num_threads(1)
    mode, ckpt, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.manual_seed(0)
    x, y = blobs(96, seed=4)
    # Shuffled by the global RNG, whose state the checkpoint holds.
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    torch.manual_seed(1)
    trainer = LyapunovTrainer(torchdyn_data_controlled(), seed=3, progress=False)

    class Interrupt:
        def __init__(self, inner, after):
            self.inner, self.after, self.seen = inner, after, 0
        def __iter__(self):
            for batch in self.inner:
                self.seen += 1
                if self.seen == self.after:
                    raise KeyboardInterrupt
                yield batch

    if mode == "interrupted":
        try:
            trainer.fit(Interrupt(data, after=6 * 2 + 3), epochs=4, checkpoint_path=ckpt)
        except KeyboardInterrupt:
            pass
        sys.exit(0)
    if mode == "resumed":
        trainer.resume(ckpt)
    trainer.fit(data, epochs=4, checkpoint_path=ckpt if mode == "resumed" else None)
    history = [{k: v for k, v in r.items() if "seconds" not in k} for r in trainer.history]
    params = [p.detach().double().flatten().tolist() for p in trainer.model.parameters()]
    with open(out, "w") as f:
        json.dump({"history": history, "params": params}, f)
    """
)


def _run(mode: str, ckpt: Path, out: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, mode, str(ckpt), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_an_interrupted_shuffled_fit_resumed_in_a_new_process_matches_the_uninterrupted_run(tmp_path):
    pytest.importorskip("torchdyn")
    _run("full", tmp_path / "unused.pt", tmp_path / "full.json")
    _run("interrupted", tmp_path / "ckpt.pt", tmp_path / "none.json")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["epoch"] == 2  # interrupted during epoch 3
    _run("resumed", tmp_path / "ckpt.pt", tmp_path / "resumed.json")
    full = json.loads((tmp_path / "full.json").read_text())
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    assert resumed["history"] == full["history"]  # ref_* numbers included: the reference set is saved
    assert resumed["params"] == full["params"]
