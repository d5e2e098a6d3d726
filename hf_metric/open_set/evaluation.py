"""Open-set evaluation: every out-of-scope score of a labelled set, and the metrics that judge a rejection rule.

Rows whose label id is `OUT_OF_SCOPE_ID` (-1; the data's `data.out_of_scope_label` rows) belong to no trained
class. A model with a threshold rejects rows whose score (higher = in-scope, `hf_metric.model.open_set_scores`)
is below it and answers the out-of-scope label instead. The numbers:

- `in_scope_accuracy`: accuracy over in-scope rows, a rejected in-scope row counting wrong; compare it with the
  plain accuracy (no rejection) to see what the rejection costs.
- `oos_recall`: the share of out-of-scope rows rejected; `oos_precision`: the share of rejected rows that are
  out of scope.
- `open_set_accuracy`: accuracy over all rows with "out of scope" as one more class (the CLINC150 measure).
- `auroc` (per score, threshold-free): the probability that a random in-scope row scores above a random
  out-of-scope row (ties count half); 0.5 is chance.
- `fpr95` (per score, threshold-free): the share of out-of-scope rows accepted at the threshold that keeps
  95 % of the in-scope rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..model.open_set_scores import (
    BASE_SCORES,
    OUT_OF_SCOPE_ID,
    base_scores,
    fit_mahalanobis,
    fuse,
    fusion_statistics,
    is_out_of_scope,
)


@dataclass
class OpenSetStatistics:
    """What the scores need besides a row's logits and embedding: the reference rows (kNN), the Mahalanobis
    fit and the fused score's z-normalisation (None: computed from the in-scope rows being scored)."""

    reference: np.ndarray | None = None
    means: np.ndarray | None = None
    precision: np.ndarray | None = None
    fusion_stats: dict[str, list[float]] | None = None

    @classmethod
    def fit(cls, ref_embeddings, ref_labels, num_classes: int, ridge: float = 1e-3) -> OpenSetStatistics:
        """kNN reference and Mahalanobis fit from labelled (training) embeddings."""
        ref = np.asarray(ref_embeddings, dtype=np.float32)
        labels = np.asarray(ref_labels)
        means, precision = fit_mahalanobis(ref, labels, num_classes, ridge)
        return cls(ref, means.numpy(), precision.numpy())


def all_scores(
    logits: np.ndarray,
    embeddings: np.ndarray | None,
    stats: OpenSetStatistics,
    labels: np.ndarray | None = None,
    head_logits: np.ndarray | None = None,
    energy_temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """Every score the inputs allow, plus `fused` over them: name -> (N,) float32 (higher = in-scope; float32 as
    the model computes and compares them at inference).

    `msp` uses `logits` (the prediction), `energy` the head's own logits (`head_logits`, default `logits`).
    Without `stats.fusion_stats` the fused score is normalised by the in-scope rows of `labels` (all rows when
    `labels` is None), and `stats.fusion_stats` is set to what was used.
    """
    scores = base_scores(
        head_logits if head_logits is not None else logits,
        embeddings,
        stats.reference,
        stats.means,
        stats.precision,
        names=tuple(n for n in BASE_SCORES if n != "msp"),
        energy_temperature=energy_temperature,
    )
    scores = {"msp": base_scores(logits, names=("msp",))["msp"], **scores}
    if stats.fusion_stats is None:
        in_scope = None if labels is None else np.asarray(labels) != OUT_OF_SCOPE_ID
        stats.fusion_stats = fusion_statistics(scores, in_scope)
    scores["fused"] = fuse(scores, stats.fusion_stats)
    return {name: s.numpy().astype(np.float32) for name, s in scores.items()}


def auroc(scores: np.ndarray, in_scope: np.ndarray) -> float:
    """Area under the ROC curve of `scores` separating in-scope (positive) from out-of-scope rows, by the
    Mann-Whitney rank sum with average ranks for ties (equal to `sklearn.metrics.roc_auc_score`)."""
    scores, in_scope = np.asarray(scores, dtype=np.float64), np.asarray(in_scope, dtype=bool)
    n_pos, n_neg = int(in_scope.sum()), int((~in_scope).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    average_rank = upper - (counts - 1) / 2.0  # 1-based rank, averaged over each tie group
    rank_sum = average_rank[inverse][in_scope].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def fpr_at_recall(scores: np.ndarray, in_scope: np.ndarray, recall: float = 0.95) -> float:
    """Share of out-of-scope rows accepted (score >= t) at the highest threshold t that accepts at least
    `recall` of the in-scope rows."""
    scores, in_scope = np.asarray(scores, dtype=np.float64), np.asarray(in_scope, dtype=bool)
    inside, outside = np.sort(scores[in_scope])[::-1], scores[~in_scope]
    if len(inside) == 0 or len(outside) == 0:
        return float("nan")
    threshold = inside[max(int(np.ceil(recall * len(inside))), 1) - 1]
    return float((outside >= threshold).mean())


def predict_with_rejection(logits: np.ndarray, scores: np.ndarray, threshold: float | None) -> np.ndarray:
    """Class ids by argmax, `OUT_OF_SCOPE_ID` where the score is below `threshold` (None: no rejection)."""
    predicted = np.asarray(logits).argmax(axis=-1)
    if threshold is None:
        return predicted
    return np.where(is_out_of_scope(scores, threshold).numpy(), OUT_OF_SCOPE_ID, predicted)


def operating_point(predicted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of a rejection rule's predictions (`OUT_OF_SCOPE_ID` = rejected) against labels (same id =
    out of scope); see the module docstring. Undefined shares (no such rows) are NaN, precision with nothing
    rejected is 0."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    oos, rejected = labels == OUT_OF_SCOPE_ID, predicted == OUT_OF_SCOPE_ID
    correct = predicted == labels

    def share(mask: np.ndarray, of: np.ndarray) -> float:
        return float(mask[of].mean()) if of.any() else float("nan")

    return {
        "in_scope_accuracy": share(correct, ~oos),
        "in_scope_recall": share(~rejected, ~oos),
        "oos_recall": share(rejected, oos),
        "oos_precision": float(oos[rejected].mean()) if rejected.any() else 0.0,
        "open_set_accuracy": float(correct.mean()) if len(labels) else float("nan"),
    }


def threshold_free_metrics(scores: Mapping[str, np.ndarray], labels: np.ndarray) -> dict[str, float]:
    """`oos_auroc_<score>` and `oos_fpr95_<score>` of every score (needs both in- and out-of-scope rows)."""
    in_scope = np.asarray(labels) != OUT_OF_SCOPE_ID
    out: dict[str, float] = {}
    for name, values in scores.items():
        out[f"oos_auroc_{name}"] = auroc(values, in_scope)
        out[f"oos_fpr95_{name}"] = fpr_at_recall(values, in_scope, 0.95)
    return out


def accuracy_recall_curve(
    scores: np.ndarray, logits: np.ndarray, labels: np.ndarray, points: int = 101
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, in-scope accuracy, OOS recall) at `points` quantiles of the scores: what each threshold
    costs in-scope and buys out of scope."""
    thresholds = np.unique(np.quantile(np.asarray(scores, dtype=np.float64), np.linspace(0, 1, points)))
    acc, rec = [], []
    for t in thresholds:
        point = operating_point(predict_with_rejection(logits, scores, t), labels)
        acc.append(point["in_scope_accuracy"])
        rec.append(point["oos_recall"])
    return thresholds, np.asarray(acc), np.asarray(rec)


def accuracy_recall_plot(
    scores: Mapping[str, np.ndarray], logits: np.ndarray, labels: np.ndarray, threshold: tuple[str, float] | None
):
    """Figure: in-scope accuracy against OOS recall as the threshold moves, one line per score; the model's
    operating point (score name, threshold) marked when given."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5), dpi=100)
    ax = fig.add_subplot()
    for name, values in scores.items():
        _, acc, rec = accuracy_recall_curve(values, logits, labels)
        ax.plot(rec, acc, label=name, linewidth=1.5)
    if threshold is not None and threshold[0] in scores:
        name, t = threshold
        point = operating_point(predict_with_rejection(logits, scores[name], t), labels)
        mark = f"model's rule: {name} < {t:.4g} rejected"
        ax.scatter([point["oos_recall"]], [point["in_scope_accuracy"]], color="black", zorder=3, label=mark)
    ax.set_xlabel("out-of-scope recall (rejected share of OOS rows)")
    ax.set_ylabel("in-scope accuracy (rejections count wrong)")
    ax.set_title("Open set: accuracy vs OOS recall", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


OPERATING_RECALLS = (0.90, 0.95, 0.99)
"""In-scope recalls of the operating-point table `hf-metric evaluate` reports."""


def operating_points(
    scores: Mapping[str, np.ndarray],
    logits: np.ndarray,
    labels: np.ndarray,
    rule: tuple[str, float] | None = None,
    recalls: tuple[float, ...] = OPERATING_RECALLS,
) -> list[dict[str, object]]:
    """Rows of the operating-point table: the model's own rule (score name, threshold) first when given, then for
    every score the highest threshold keeping each in-scope recall of `recalls` (the calibration's
    `in_scope_recall` criterion on these rows), with what it costs in-scope and buys out of scope."""
    from .calibration import pick, threshold_curves

    labels = np.asarray(labels)
    correct = np.asarray(logits).argmax(axis=-1) == labels
    keys = ("in_scope_recall", "in_scope_accuracy", "oos_recall")
    rows: list[dict[str, object]] = []
    if rule is not None and rule[0] in scores:
        point = operating_point(predict_with_rejection(logits, scores[rule[0]], rule[1]), labels)
        rows.append({"score": rule[0], "rule": "model", "threshold": float(rule[1]), **{k: point[k] for k in keys}})
    names = sorted(scores, key=lambda n: (rule is None or n != rule[0], n))
    for name in names:
        curves = threshold_curves(scores[name], correct, labels)
        for recall in recalls:
            i = pick(curves, "in_scope_recall", recall)
            values = {k: float(curves[k][i]) for k in keys}
            rule_name = f"in-scope recall >= {recall:g}"
            rows.append({"score": name, "rule": rule_name, "threshold": float(curves["threshold"][i]), **values})
    return rows


def operating_points_markdown(rows: list[dict[str, object]]) -> str:
    """The report section of `operating_points`: where the threshold can move, and at what price."""
    lines = [
        "## Open set: operating points",
        "",
        "The model's rule, then each score's threshold at a target in-scope recall on this file. "
        "`hf-metric calibrate --criterion in_scope_recall --target R` moves the model there (choose on validation "
        "data, not on the test set).",
        "",
        "| score | rule | threshold | in-scope recall | in-scope accuracy | OOS recall |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['score']} | {r['rule']} | {r['threshold']:.6g} | {r['in_scope_recall']:.4f} | "
            f"{r['in_scope_accuracy']:.4f} | {r['oos_recall']:.4f} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class OpenSetSettings:
    """A model's rejection rule for the evaluator: its score and threshold (None: none) and the statistics
    the score was calibrated with (None: fitted from the evaluation's reference rows each time)."""

    score: str | None = None
    threshold: float | None = None
    statistics: OpenSetStatistics | None = None
    energy_temperature: float = 1.0

    @classmethod
    def from_model(cls, model) -> OpenSetSettings:
        """The rule stored in a `MetricClassifierModel` (`set_open_set`)."""
        c = model.config
        reference = model.knn_reference_embeddings.detach().float().cpu().numpy() if c.knn_reference_size else None
        stats = OpenSetStatistics(reference, fusion_stats=c.open_set_fusion_stats)
        if c.open_set_mahalanobis:
            stats.means = model.open_set_means.detach().float().cpu().numpy()
            stats.precision = model.open_set_precision.detach().float().cpu().numpy()
        return cls(c.open_set_score, c.open_set_threshold, stats, c.open_set_energy_temperature)


def evaluate_open_set(
    logits: np.ndarray,
    embeddings: np.ndarray | None,
    labels: np.ndarray,
    settings: OpenSetSettings | None = None,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    head_logits: np.ndarray | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, scores) of one labelled set: `oos_auroc_*`/`oos_fpr95_*` per score when it has out-of-scope
    rows, and the operating point of the settings' threshold when there is one (NaN entries left out)."""
    settings = settings or OpenSetSettings()
    stats = settings.statistics or OpenSetStatistics()
    if stats.reference is None or stats.means is None:  # what the rule does not store is fitted on the reference
        fitted = OpenSetStatistics()
        if reference is not None and embeddings is not None and len(reference[1]) > 1:
            fitted = OpenSetStatistics.fit(reference[0], reference[1], np.asarray(logits).shape[1])
        stored = stats.means is not None
        stats = OpenSetStatistics(
            stats.reference if stats.reference is not None else fitted.reference,
            stats.means if stored else fitted.means,
            stats.precision if stored else fitted.precision,
            stats.fusion_stats,
        )
    else:
        stats = OpenSetStatistics(stats.reference, stats.means, stats.precision, stats.fusion_stats)
    scores = all_scores(logits, embeddings, stats, labels, head_logits, settings.energy_temperature)
    metrics: dict[str, float] = {}
    if (np.asarray(labels) == OUT_OF_SCOPE_ID).any():
        metrics.update(threshold_free_metrics(scores, labels))
    if settings.threshold is not None and settings.score in scores:
        predicted = predict_with_rejection(logits, scores[settings.score], settings.threshold)
        metrics.update(operating_point(predicted, labels))
    return {k: v for k, v in metrics.items() if not np.isnan(v)}, scores
