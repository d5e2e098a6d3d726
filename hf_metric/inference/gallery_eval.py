"""`hf-metric evaluate --gallery`: identification, open-set identification and verification of a labelled file
against an enrolled gallery.

Query labels are matched by NAME against the gallery's labels, so identities the model was never trained on
are fine; a query whose identity is not enrolled (in its group, for within-group search) has R = 0: it cannot
be identified, only rejected, and counts as unknown. The numbers are the `IdentificationEvaluator`'s (the same
object, names and definitions as validation during training; `evaluation.identification`), computed against
the gallery's targets (its rows, or its identity centroids when it matches per identity), plus, when the
gallery has a calibrated unknown-identity threshold, what that threshold decides on this file
(`unknown_rejection_rate`, `known_identification_rate`, `open_set_identification_accuracy`). The file is streamed
(`embed_rows`); its embeddings, one float32 row per query, are what stays in memory.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..atomic import atomic_directory, write_json_atomic, write_text_atomic
from ..errors import DataError
from .gallery import Gallery
from .gallery_build import embed_rows
from .predict import StreamSettings

KS = (1, 5, 10)


def threshold_metrics(found: Any, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """What the gallery's unknown-identity threshold decides: unknown = best match below it (or no match)."""
    top = found.scores[:, 0] if found.scores.shape[1] else np.full(len(labels), -np.inf)
    unknown = ~(np.nan_to_num(top, nan=-np.inf) >= threshold)
    known = found.relevant > 0
    correct = found.labels[:, 0] == labels if found.labels.shape[1] else np.zeros(len(labels), bool)
    out = {"gallery_threshold": float(threshold)}
    if (~known).any():
        out["unknown_rejection_rate"] = float(unknown[~known].mean())
    if known.any():
        out["known_identification_rate"] = float((correct & ~unknown)[known].mean())
    out["open_set_identification_accuracy"] = float(np.where(known, correct & ~unknown, unknown).mean())
    return out


def gallery_metrics(
    gallery: Gallery,
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    within_group: bool = False,
    ks: tuple[int, ...] = KS,
    plots_dir: str | None = None,
) -> dict[str, Any]:
    """Every number of the module doc for embedded queries: `{"metrics": flat, "per_group": group -> metrics,
    "plots": name -> file}` (ROC/DET, CMC and genuine/impostor score pictures with `plots_dir`)."""
    from ..evaluation.identification import IdentificationEvaluator

    if within_group and groups is None:
        raise DataError("--within-group needs a 'group' column in the evaluated file")
    evaluator = IdentificationEvaluator(ks=ks, within_group=within_group)
    targets, target_labels, target_groups, _ = gallery.targets()
    labels = np.asarray([str(x) for x in labels], dtype=object)
    metrics = {"gallery_rows": float(len(gallery)), "gallery_identities": float(len(gallery.identities))}
    metrics.update(
        evaluator.evaluate(
            embeddings, labels, targets, target_labels, query_groups=groups, gallery_groups=target_groups
        )
    )
    if gallery.threshold is not None:
        metrics.update(threshold_metrics(evaluator.details["search"], labels, gallery.threshold))
    plots: dict[str, str] = {}
    if plots_dir is not None:
        from ..evaluation.identification_plots import identification_plots

        os.makedirs(plots_dir, exist_ok=True)
        plots = identification_plots(plots_dir, "test", evaluator.details, labels)
    per_group = evaluator.details.get("per_group", {})
    return {"metrics": metrics, "per_group": {str(g): v for g, v in per_group.items()}, "plots": plots}


def evaluate_gallery_file(
    path: str,
    backend: Any,
    featurizer: Any,
    gallery: Gallery,
    settings: StreamSettings | None = None,
    within_group: bool = False,
    out_dir: str | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Stream `path` (labelled; optional `group`) through the model and score it against `gallery`; with
    `out_dir`, write metrics.json, report.md and plots/ there atomically."""
    rows = embed_rows(path, backend, featurizer, settings)

    def run(folder: str | None) -> dict[str, Any]:
        plots_dir = os.path.join(folder, "plots") if folder and plots else None
        summary = gallery_metrics(gallery, rows.embeddings, rows.labels, rows.groups, within_group, plots_dir=plots_dir)
        summary["metrics"]["rows"] = float(len(rows.labels))
        if folder:
            summary["plots"] = {k: os.path.relpath(v, folder) for k, v in summary["plots"].items()}
            write_json_atomic(os.path.join(folder, "metrics.json"), summary)
            write_text_atomic(os.path.join(folder, "report.md"), report(path, summary))
        return summary

    if out_dir is None:
        return run(None)
    with atomic_directory(out_dir) as tmp:
        return run(tmp)


def report(path: str, summary: dict[str, Any]) -> str:
    """report.md: the metrics, then the groups with the lowest precision@1."""
    from ..evaluation.tables import metrics_markdown_table

    lines = [f"# Identification: {os.path.basename(path)}", "", metrics_markdown_table(summary["metrics"]), ""]
    per_group = summary["per_group"]
    if per_group:
        worst = sorted(per_group, key=lambda g: (per_group[g].get("precision_at_1", 1.0), g))[:20]
        lines += ["## Groups with the lowest precision@1", "", "| group | precision@1 | MAP@R | queries |"]
        lines += ["|---|---|---|---|"]
        lines += [
            f"| {g} | {per_group[g]['precision_at_1']:.4f} | {per_group[g]['map_at_r']:.4f} | "
            f"{int(per_group[g]['identification_queries'])} |"
            for g in worst
        ]
    for name, file in sorted(summary.get("plots", {}).items()):
        lines += ["", f"## {name.replace('_', ' ')}", "", f"![{name}]({file})"]
    return "\n".join(lines) + "\n"
