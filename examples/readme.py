"""Run the README's quick start exactly as written and put what it prints into the README.

The README shows the quick start's output under the code; that text is never typed by
hand: ``python -m examples.readme --update-readme`` executes the quick-start blocks (one
intra-op thread, as the test suite does) and embeds their standard output, and
``tests/test_readme.py`` runs the same blocks and checks that they print it again.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

README = Path(__file__).resolve().parents[1] / "README.md"
OUTPUT_MARKER = "quickstart-output"


def quickstart_blocks(readme: Path = README) -> list[str]:
    """The ```python blocks between ``<!-- quickstart -->`` and ``<!-- /quickstart -->``."""
    text = readme.read_text()
    section = text.split("<!-- quickstart -->", 1)[1].split("<!-- /quickstart -->", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def run_quickstart(readme: Path = README) -> tuple[str, dict[str, Any]]:
    """Execute the quick start in one namespace; return what it printed and the namespace."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    namespace: dict[str, Any] = {"__name__": "readme_quickstart"}
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            for block in quickstart_blocks(readme):
                exec(compile(block, str(readme), "exec"), namespace)  # noqa: S102 - the README is ours
    finally:
        torch.set_num_threads(previous)
    return out.getvalue(), namespace


def shown_output(readme: Path = README) -> str:
    """The output the README shows (inside the ``quickstart-output`` block)."""
    text = readme.read_text()
    block = text.split(f"<!-- {OUTPUT_MARKER} -->", 1)[1].split(f"<!-- /{OUTPUT_MARKER} -->", 1)[0]
    match = re.search(r"```text\n(.*?)```", block, flags=re.S)
    return match.group(1) if match else ""


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e-?\d+)?")


def outputs_agree(printed: str, shown: str, *, percent_points: float = 3.0, relative: float = 0.5) -> bool:
    """Whether ``printed`` is the README's ``shown`` output up to machine-level noise.

    The text around the numbers must be identical. The numbers may differ a little: another
    CPU (other SIMD kernels) rounds differently, and an adaptive solver such as dopri5 turns
    that into a different step sequence and a slightly different trained model. Percentages
    may differ by ``percent_points``; other numbers by ``relative`` of the shown value (or
    0.1 absolute, for values near zero).
    """
    if _NUMBER.sub("#", printed) != _NUMBER.sub("#", shown):
        return False
    percent = re.compile(r"(-?\d+(?:\.\d+)?)%")
    pairs_pct = zip(percent.findall(printed), percent.findall(shown), strict=False)
    if any(abs(float(a) - float(b)) > percent_points for a, b in pairs_pct):
        return False
    others_printed = _NUMBER.findall(percent.sub("%", printed))
    others_shown = _NUMBER.findall(percent.sub("%", shown))
    return all(
        abs(float(a) - float(b)) <= max(relative * abs(float(b)), 0.1)
        for a, b in zip(others_printed, others_shown, strict=False)
    )


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--update-readme", action="store_true", help="embed the printed output in README.md")
    args = parser.parse_args(argv)
    printed, _ = run_quickstart()
    print(printed, end="")
    if args.update_readme:
        from .common.report import embed_markdown

        embed_markdown(README, OUTPUT_MARKER, f"```text\n{printed}```")
    return printed


if __name__ == "__main__":
    main()
