"""Final-metrics tables, shared by the console summary, the model card and the training report."""

from __future__ import annotations

from collections.abc import Mapping


def _format_value(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_metrics_table(metrics: Mapping[str, object]) -> str:
    """A plain two-column table for the console, metrics sorted by name."""
    width = max((len(k) for k in metrics), default=6)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    lines += [f"{key.ljust(width)}  {_format_value(metrics[key])}" for key in sorted(metrics)]
    return "\n".join(lines)


def metrics_markdown_table(metrics: Mapping[str, object], columns: tuple[str, str] = ("metric", "value")) -> str:
    """The same table in Markdown (model cards, `report.md`); `|` in names is escaped. `columns` names the two
    columns, for other name-value tables (the card's data summary)."""
    lines = [f"| {columns[0]} | {columns[1]} |", "|---|---|"]
    lines += [f"| {key.replace('|', chr(92) + '|')} | {_format_value(metrics[key])} |" for key in sorted(metrics)]
    return "\n".join(lines)
