"""Pictures of identification and verification: ROC + DET curves, the CMC curve, genuine vs impostor scores.

Plain functions on arrays that return a matplotlib `Figure` (Agg renderer, no pyplot state), drawn like the
validation pictures in `plots` and saved by its `save_png`; `identification_plots` draws the ones an
`IdentificationEvaluator` call has the data for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .plots import _figure, _finished, save_png
from .retrieval import first_hit_ranks, hit_matrix
from .verification import IMPOSTOR_SAME_GROUP, equal_error_rate, roc_points

IDENTIFICATION_PLOT_NAMES = ("roc_det", "cmc_curve", "score_histogram")


def cmc_curve(query_labels: Any, ranked_labels: Any, relevant_counts: Any) -> np.ndarray:
    """CMC at every rank 1..k of the queries whose identity is in the gallery (R >= 1); empty without any."""
    hits = hit_matrix(query_labels, ranked_labels)[np.asarray(relevant_counts) > 0]
    if not len(hits):
        return np.zeros(0)
    first = first_hit_ranks(hits)
    return np.array([(first < k).mean() for k in range(1, hits.shape[1] + 1)])


def cmc_plot(curves: Mapping[str, np.ndarray], max_rank: int | None = None) -> Figure:
    """CMC curves (share of queries identified within the first K gallery rows), one line per name, e.g. a model
    or a gallery; the first value of each is its precision@1."""
    fig, ax = _figure(8, 5)
    for name, curve in curves.items():
        curve = np.asarray(curve)[:max_rank]
        if len(curve):
            ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", markersize=3, label=f"{name} (@1 {curve[0]:.3f})")
    ax.set_xlabel("rank K")
    ax.set_ylabel("identified within the first K")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=8, loc="lower right")
    return _finished(fig, ax, "Cumulative match characteristic")


def roc_det_plot(scores: Any, same: Any, fars: Sequence[float] = (1e-3, 1e-2)) -> Figure:
    """The ROC curve (TAR against FAR, FAR on a log axis) with the target FARs marked, and the DET curve (FRR
    against FAR, both logarithmic: the low-error corner a deployment lives in, where the ROC is flat)."""
    far, tar, thresholds = roc_points(scores, same)
    eer, _ = equal_error_rate(far, tar, thresholds)
    fig = Figure(figsize=(12, 5), dpi=100)
    roc, det = fig.subplots(1, 2)
    floor = 0.5 / max(1, int((~np.asarray(same, bool)).sum()))  # one impostor's share halved: log axes need > 0
    roc.plot(np.maximum(far, floor), tar, color="tab:blue")
    for f in fars:
        reachable = far <= f
        roc.axvline(f, color="0.6", linestyle=":", linewidth=1)
        roc.plot([max(f, floor)], [tar[reachable].max()], "o", color="tab:red")
        roc.annotate(f"TAR {tar[reachable].max():.3f}", (max(f, floor), tar[reachable].max()), fontsize=8)
    roc.set_xscale("log")
    roc.set_xlabel("false accept rate (FAR)")
    roc.set_ylabel("true accept rate (TAR)")
    roc.set_ylim(0, 1.02)
    roc.grid(alpha=0.3, which="both")
    roc.set_title("ROC", fontsize=11)
    frr_floor = 0.5 / max(1, int(np.asarray(same, bool).sum()))
    det.plot(np.maximum(far, floor), np.maximum(1 - tar, frr_floor), color="tab:blue")
    det.plot([eer], [eer], "o", color="tab:red", label=f"EER {eer:.2%}")
    det.set_xscale("log")
    det.set_yscale("log")
    det.set_xlabel("false accept rate (FAR)")
    det.set_ylabel("false reject rate (FRR)")
    det.grid(alpha=0.3, which="both")
    det.legend(fontsize=8)
    det.set_title("DET", fontsize=11)
    fig.tight_layout()
    return fig


def score_histogram(scores: Any, same: Any, kind: Any = None, threshold: float | None = None, bins: int = 50) -> Figure:
    """Histograms of genuine and impostor pair scores (impostors from the same group apart, when `kind` says
    so), each normalised to its own area: where they overlap, no threshold separates them."""
    scores, same = np.asarray(scores, dtype=float), np.asarray(same, dtype=bool)
    kind = np.asarray(kind, dtype=object) if kind is not None else np.where(same, "genuine", "impostor_random")
    fig, ax = _figure(9, 5)
    edges = np.linspace(min(scores.min(), 0.0) if len(scores) else 0.0, 1.0, bins + 1)
    series = (
        (same, "tab:green", "genuine"),
        (~same & (kind != IMPOSTOR_SAME_GROUP), "tab:red", "impostor (random)"),
        (~same & (kind == IMPOSTOR_SAME_GROUP), "tab:orange", "impostor (same group)"),
    )
    for rows, color, label in series:
        if rows.any():
            ax.hist(scores[rows], bins=edges, density=True, alpha=0.5, color=color, label=f"{label} ({rows.sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("cosine similarity of the pair")
    ax.set_ylabel("density")
    if len(scores):
        ax.legend(fontsize=8)
    return _finished(fig, ax, "Genuine vs impostor pair scores")


def identification_plots(out_dir: str, tag: str, details: Mapping[str, Any], query_labels: Any) -> dict[str, str]:
    """Draw and save what an `IdentificationEvaluator` call (`details`) has data for, as `<name>_<tag>.png`
    (`IDENTIFICATION_PLOT_NAMES`); returns name -> path."""
    figures: dict[str, Figure] = {}
    found = details.get("search")
    if found is not None:
        curve = cmc_curve(query_labels, found.labels, found.relevant)
        if len(curve):
            figures["cmc_curve"] = cmc_plot({"queries": curve})
    pairs, scores = details.get("pairs"), details.get("pair_scores")
    if pairs is not None and scores is not None:
        random = pairs.kind != IMPOSTOR_SAME_GROUP
        figures["roc_det"] = roc_det_plot(scores[random], pairs.same[random])
        figures["score_histogram"] = score_histogram(scores, pairs.same, pairs.kind)
    return {name: save_png(fig, os.path.join(out_dir, f"{name}_{tag}.png")) for name, fig in figures.items()}
