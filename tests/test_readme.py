"""The README's quick-start is code users will paste: run it exactly as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("<!-- quickstart -->", 1)[1].split("<!-- /quickstart -->", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[0] == "```bash"
    assert lines[1].startswith("bash scripts/with-venv.sh python -m examples.compare_digits")
    assert lines[2].startswith("bash scripts/with-venv.sh python -m pytest -q")
    assert lines[3] == "```"
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "bash scripts/with-venv.sh python -m pytest -q" in ci


def test_quickstart_runs_as_written():
    pytest.importorskip("torchdyn")
    pytest.importorskip("torchdiffeq")
    blocks = _quickstart_blocks()
    assert len(blocks) == 4
    namespace: dict = {"__name__": "readme_quickstart"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - the README is ours
    trainer = namespace["trainer"]
    assert namespace["logits"].shape == (397, 10)
    assert trainer.history and trainer.history[-1]["train_loss"] >= 0
    assert namespace["out"].loss.item() >= 0
