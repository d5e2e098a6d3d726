"""`<checkpoints_dir>/report.md`: the final metrics, the latest pictures and the config of a run in one file."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..atomic import write_text_atomic
from .plots import PLOT_NAMES
from .tables import metrics_markdown_table

REPORT_FILE = "report.md"

PLOT_CAPTIONS = {
    "embedding_map": (
        "Embedding map",
        "Validation embeddings in 2-D, one colour per class: tight, separate clouds are good.",
    ),
    "confusion_matrix": (
        "Most-confused classes",
        "The confusion matrix of the classes with the most errors: true class by row, predicted by column.",
    ),
    "per_class_f1": (
        "Per-class F1",
        "F1 of every class, worst first; orange bars are the classes rarest in training.",
    ),
    "margin_histogram": (
        "Margins",
        "Nearest same-class minus nearest other-class cosine per row: mass right of 0 is good.",
    ),
    "open_set_curve": (
        "Open set: accuracy vs out-of-scope recall",
        "Each threshold of each score: in-scope accuracy (rejections count wrong) against the share of "
        "out-of-scope rows rejected; up and right is good.",
    ),
}
"""Heading and one-line explanation of each picture in the report."""


def report_markdown(
    out_dir: str,
    metrics: Mapping[str, object],
    plots: Mapping[str, str],
    config_yaml: str,
    title: str = "",
    sections: Sequence[str] = (),
) -> str:
    """The report's Markdown; picture links are relative to `out_dir`, so the folder can be moved or zipped.
    `sections`: further Markdown sections (e.g. the error analysis by group), after the metrics."""
    lines = [f"# Training report{': ' + title if title else ''}", ""]
    lines += ["## Final validation metrics (best checkpoint)", "", metrics_markdown_table(metrics), ""]
    lines += [section.rstrip("\n") + "\n" for section in sections]
    if plots:
        lines += ["## Pictures (final evaluation)", ""]
        for name in sorted(plots, key=lambda n: PLOT_NAMES.index(n) if n in PLOT_NAMES else len(PLOT_NAMES)):
            link = os.path.relpath(plots[name], out_dir).replace(os.sep, "/")
            heading, caption = PLOT_CAPTIONS.get(name, (name, ""))
            lines += [f"### {heading}", "", f"![{name}]({link})", ""] + ([caption, ""] if caption else [])
    lines += ["## Config", "", "```yaml", config_yaml.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def write_report(
    out_dir: str,
    metrics: Mapping[str, object],
    plots: Mapping[str, str],
    config_yaml: str,
    sections: Sequence[str] = (),
) -> str:
    """Write `<out_dir>/report.md` atomically and return its path."""
    path = os.path.join(out_dir, REPORT_FILE)
    text = report_markdown(out_dir, metrics, plots, config_yaml, os.path.basename(out_dir), sections)
    write_text_atomic(path, text)
    return path
