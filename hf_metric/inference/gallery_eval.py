"""`hf-metric evaluate --gallery`: identification, open-set identification and verification of a labelled file
against an enrolled gallery.

Query labels are matched by NAME against the gallery's labels, so identities the model was never trained on
are fine; a query whose identity is not enrolled (in its group, for within-group search) has R = 0: it cannot
be identified, only rejected, and counts as unknown. The numbers (functions of `evaluation.retrieval` and
`evaluation.verification`):

- identification of enrolled queries: precision_at_1, cmc@K, r_precision, map_at_r, mrr (R counts the gallery
  rows, or identities when matching per identity, that the search could return);
- open-set identification: dir@fpir=0.01 / 0.1 (known and unknown queries both present), and with a calibrated
  gallery the decisions of its threshold (`unknown_rejection_rate`, `known_identification_rate`);
- verification on pairs of the file's rows sampled reproducibly (`sample_pairs`, seed 0; impostors random and
  from the same group): verification_auc, eer, tar@far=0.001, tar@far=0.01, and the same against same-group
  impostors only (`same_group_eer`, ...);
- with a `group` column: the same identification numbers per group, and within-group top-1 accuracy by number
  of enrolled candidates in the group (`identification_accuracy_candidates_<bucket>`).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from ..atomic import atomic_directory, write_json_atomic, write_text_atomic
from ..errors import DataError
from ..evaluation.retrieval import (
    accuracy_by_candidates,
    identification_metrics,
    identification_metrics_by_group,
    open_set_identification,
)
from .gallery import Gallery
from .gallery_build import embed_rows
from .gallery_calibration import NO_MATCH_SCORE
from .gallery_predict import unknown_mask

KS = (1, 5, 10)
FARS = (1e-3, 1e-2)
FPIRS = (0.01, 0.1)
SAME_GROUP_KEYS = ("verification_auc", "eer", "tar@far=0.001", "tar@far=0.01")
"""Also reported on genuine pairs vs impostors of the same group only (`same_group_<name>`): the hard case."""


def relevant_in_gallery(gallery: Gallery, labels: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """R per query: the gallery targets (rows, or identities) with its label, in its group when `groups`."""
    _, target_labels, target_groups, _ = gallery.targets()
    if groups is None:
        counts = Counter(target_labels.tolist())
        return np.array([counts.get(y, 0) for y in labels.tolist()], dtype=np.int64)
    pairs = Counter(zip(target_labels.tolist(), target_groups.tolist(), strict=True))
    totals = Counter(target_labels.tolist())
    return np.array(
        [pairs.get((y, g), 0) if g is not None else totals.get(y, 0) for y, g in zip(labels, groups, strict=True)],
        dtype=np.int64,
    )


def gallery_metrics(
    gallery: Gallery,
    embeddings: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    within_group: bool = False,
    ks: tuple[int, ...] = KS,
) -> dict[str, Any]:
    """Every number of the module doc for embedded queries: `{"metrics": flat, "per_group": group -> metrics}`."""
    from ..evaluation.verification import IMPOSTOR_RANDOM, sample_pairs, verification_metrics

    if within_group and groups is None:
        raise DataError("--within-group needs a 'group' column in the evaluated file")
    search_groups = groups if within_group else None
    relevant = relevant_in_gallery(gallery, labels, search_groups)
    result = gallery.search(embeddings, max(max(ks), int(relevant.max(initial=0))), search_groups)
    metrics = {"gallery_rows": float(len(gallery)), "gallery_identities": float(len(gallery.identities))}
    metrics.update(identification_metrics(labels, result.labels, relevant, ks))
    known = relevant > 0
    top = np.where(np.isnan(result.top_score), NO_MATCH_SCORE, result.top_score)
    correct = result.top_label == labels
    if known.any() and (~known).any():
        metrics.update(open_set_identification(top[known], correct[known], top[~known], FPIRS))
    unknown = unknown_mask(result, gallery.threshold)
    if unknown is not None:
        metrics["gallery_threshold"] = float(gallery.threshold)
        if (~known).any():
            metrics["unknown_rejection_rate"] = float(unknown[~known].mean())
        if known.any():
            metrics["known_identification_rate"] = float((correct & ~unknown)[known].mean())
        metrics["open_set_identification_accuracy"] = float(np.where(known, correct & ~unknown, unknown).mean())
    pairs = sample_pairs(labels, groups=groups, seed=0)
    emb = np.asarray(embeddings, dtype=np.float64)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    same = np.asarray(pairs.same, dtype=bool)
    if same.any() and (~same).any():
        sims = (emb[np.asarray(pairs.i)] * emb[np.asarray(pairs.j)]).sum(axis=1)
        metrics.update({k: float(v) for k, v in verification_metrics(sims, same, fars=FARS).items()})
        metrics["verification_pairs"] = float(len(same))
        close = np.asarray(pairs.kind) != IMPOSTOR_RANDOM  # genuine pairs and same-group impostors
        if (close & ~same).any():
            hard = verification_metrics(sims[close], same[close], fars=FARS)
            metrics.update({f"same_group_{k}": float(hard[k]) for k in SAME_GROUP_KEYS})
    per_group: dict[str, Any] = {}
    if groups is not None:
        grouped = np.array([g is not None for g in groups], dtype=bool)
        if grouped.any():
            per_group = identification_metrics_by_group(
                labels[grouped], result.labels[grouped], relevant[grouped], groups[grouped], ks
            )
        if within_group:
            sizes = gallery.group_sizes()
            candidates = np.array([sizes.get(g, 0) if g is not None else 0 for g in groups], dtype=np.int64)
            buckets = accuracy_by_candidates(labels, result.labels, relevant, candidates, buckets=True)
            for name, (accuracy, rows) in buckets.items():
                metrics[f"identification_accuracy_candidates_{name}"] = accuracy
                metrics[f"identification_rows_candidates_{name}"] = float(rows)
    return {"metrics": metrics, "per_group": {str(g): v for g, v in per_group.items()}}


def evaluate_gallery_file(
    path: str,
    backend: Any,
    featurizer: Any,
    gallery: Gallery,
    settings: Any = None,
    within_group: bool = False,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Stream `path` (labelled; optional `group`) through the model and score it against `gallery`; with
    `out_dir`, write metrics.json and report.md there atomically."""
    rows = embed_rows(path, backend, featurizer, settings)
    summary = gallery_metrics(gallery, rows.embeddings, rows.labels, rows.groups, within_group)
    summary["metrics"]["rows"] = float(len(rows.labels))
    if out_dir is not None:
        with atomic_directory(out_dir) as tmp:
            write_json_atomic(os.path.join(tmp, "metrics.json"), summary)
            write_text_atomic(os.path.join(tmp, "report.md"), report(path, summary))
    return summary


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
    return "\n".join(lines) + "\n"
