"""Code hygiene of the whole tree: ruff (pyflakes, pycodestyle, isort, pyupgrade, bugbear) and
ruff's formatter over the library, adapters, examples, benchmarks and tests, and mypy (untyped
definitions refused) over the library and adapters, configured in pyproject.toml, report
nothing. Run by the README's test command, hence by CI; .pre-commit-config.yaml runs the same
tools before a commit."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREE = ("lyapunov_plugin", "adapters", "examples", "benchmarks", "tests")


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_reports_nothing():
    pytest.importorskip("ruff")
    done = _run("ruff", "check", *TREE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_would_change_nothing():
    pytest.importorskip("ruff")
    done = _run("ruff", "format", "--check", *TREE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_reports_nothing():
    pytest.importorskip("mypy")
    done = _run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
