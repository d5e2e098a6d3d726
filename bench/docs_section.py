"""Replace one benchmark's section of docs/benchmarks.md in place, so each script rewrites only its own table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def table_row(cells: list[Any]) -> str:
    """One markdown table row from already formatted cells."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def append_result(path: str | Path, row: dict[str, Any]) -> None:
    """Print one benchmark result and append it as a JSON line to `path` (results accumulate across runs)."""
    print(json.dumps(row), flush=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Every row `append_result` wrote to `path`, in order (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_section(path: Path, section: str, marks: tuple[str, str]) -> None:
    """Replace the text between `marks` (kept, `section` must hold them) in `path`, or append `section`."""
    start, end = marks
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
