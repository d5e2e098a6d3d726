"""Replace one benchmark's section of docs/benchmarks.md in place, so each script rewrites only its own table."""

from __future__ import annotations

from pathlib import Path


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
