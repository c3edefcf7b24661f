"""Code hygiene of the library (``lyapunov_plugin/`` and ``adapters/``): ruff (pyflakes,
pycodestyle, isort, pyupgrade, bugbear) and mypy, configured in pyproject.toml, report
nothing. Run by the README's test command, hence by CI."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_reports_nothing():
    pytest.importorskip("ruff")
    done = _run("ruff", "check", "lyapunov_plugin", "adapters")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_reports_nothing():
    pytest.importorskip("mypy")
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
