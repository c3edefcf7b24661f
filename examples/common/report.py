"""Result files: JSON for machines, markdown tables for people (numbers come only from runs)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the raw values (NaN-free values only)."""
    finite = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "values": list(values)}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "values": [float(v) for v in values]}


def _fmt(cell: dict[str, Any]) -> str:
    mean, std = cell["mean"], cell["std"]
    if math.isnan(mean):
        return "n/a"
    digits = 0 if abs(mean) >= 100 else (1 if abs(mean) >= 1 else 3)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(summary: dict[str, dict[str, Any]], *, columns: Sequence[str], headers: Sequence[str]) -> str:
    """Rows are metrics, columns are methods; cells are ``mean ± std``."""
    metrics = list(summary[columns[0]].keys())
    lines = ["| metric | " + " | ".join(headers) + " |", "|---|" + "---:|" * len(columns)]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_fmt(summary[c][metric]) for c in columns) + " |")
    return "\n".join(lines)


def write_json(out_dir: Path, name: str, payload: dict[str, Any]) -> Path:
    """``<out_dir>/<name>.json`` (folder created as needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1, default=_jsonable))
    return path


def write_outputs(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``<name>.json`` and ``<name>.md`` in ``out_dir``."""
    json_path = write_json(out_dir, name, payload)
    md_path = out_dir / f"{name}.md"
    md_path.write_text(markdown)
    return json_path, md_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend (examples run headless)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def embed_markdown(document: Path, marker: str, markdown: str) -> None:
    """Replace the text between ``<!-- marker -->`` and ``<!-- /marker -->`` in ``document``
    (how generated tables get into the README and the docs)."""
    text = document.read_text()
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        raise ValueError(f"{document} has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    document.write_text(f"{head}{start}\n{markdown.strip()}\n{end}{tail}")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m examples.common.report DOC marker=result.md ...``: embed generated tables."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("document", type=Path)
    parser.add_argument("pairs", nargs="+", help="marker=path/to/table.md")
    args = parser.parse_args(argv)
    for pair in args.pairs:
        marker, _, path = pair.partition("=")
        if not path:
            raise ValueError(f"pairs must look like marker=path, got {pair!r}")
        embed_markdown(args.document, marker, Path(path).read_text())


if __name__ == "__main__":
    main()
