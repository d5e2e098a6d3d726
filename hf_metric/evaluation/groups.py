"""Error analysis by group: which groups of confusable classes the errors come from, and how close they are.

When classes come in groups (trees at one address, intents of one scenario, products of one family), the
questions after a training run are: how well does the model pick the right class among the candidates of its
group, and does that fall with the number of candidates; which groups hold the errors; which classes never
work; is the right class usually the runner-up; how close the calls are. Each is a plain function on arrays
(`logits (n, C)`, `labels (n,)`, `class_group`: the group name of each class id, None for none); `group_analysis`
computes them all for the evaluator, `analysis_markdown` writes them for report.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

CANDIDATE_BUCKETS = ((2, 2, "2"), (3, 5, "3-5"), (6, 10, "6-10"), (11, None, "11+"))
"""Buckets of "number of same-group candidates" for the within-group accuracy."""


def _group_index(class_group: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Sorted group names and each class's index among them (-1: no group)."""
    names = sorted({g for g in class_group if g is not None})
    index = {g: i for i, g in enumerate(names)}
    return names, np.array([index.get(g, -1) if g is not None else -1 for g in class_group], dtype=np.int64)


def _rows_by_group(row_gid: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Row indices of each group index, in one sort (many groups stay fast)."""
    order = np.argsort(row_gid, kind="stable")
    bounds = np.searchsorted(row_gid[order], np.arange(num_groups + 1))
    return [order[bounds[g] : bounds[g + 1]] for g in range(num_groups)]


def within_group_predictions(logits: np.ndarray, labels: np.ndarray, class_group: np.ndarray) -> np.ndarray:
    """Per row, the best-scoring class among the classes of the true class's group (-1 for rows without a group):
    the "pick the individual among the candidates at its address" decision."""
    logits = np.asarray(logits)
    names, gid = _group_index(class_group)
    members = _rows_by_group(gid, len(names))
    out = np.full(len(labels), -1)
    for g, rows in enumerate(_rows_by_group(gid[labels], len(names))):
        if len(rows):
            out[rows] = members[g][logits[np.ix_(rows, members[g])].argmax(axis=1)]
    return out


def candidate_bucket_accuracy(
    logits: np.ndarray, labels: np.ndarray, class_group: np.ndarray
) -> dict[str, tuple[float, int]]:
    """Within-group accuracy by number of candidates in the group (`CANDIDATE_BUCKETS`): name -> (accuracy,
    rows); `all` covers every row whose group has at least 2 classes. Buckets without rows are left out."""
    within = within_group_predictions(logits, labels, class_group)
    names, gid = _group_index(class_group)
    sizes = np.append(np.bincount(gid[gid >= 0], minlength=len(names)), 0)  # index -1: no group, size 0
    row_size = sizes[gid[labels]]
    out: dict[str, tuple[float, int]] = {}
    for low, high, name in (*CANDIDATE_BUCKETS, (2, None, "all")):
        rows = (row_size >= low) & (row_size <= (high if high is not None else np.inf))
        if rows.any():
            out[name] = (float((within[rows] == labels[rows]).mean()), int(rows.sum()))
    return out


def per_group_accuracy(predictions: np.ndarray, labels: np.ndarray, class_group: np.ndarray) -> dict[str, tuple]:
    """Group -> (accuracy, rows, errors) of the full (all-class) prediction, over rows whose class is in it."""
    names, gid = _group_index(class_group)
    row_gid = gid[labels]
    grouped = row_gid >= 0
    rows = np.bincount(row_gid[grouped], minlength=len(names))
    correct = np.bincount(row_gid[grouped], weights=predictions[grouped] == labels[grouped], minlength=len(names))
    return {
        g: (float(correct[i]) / int(rows[i]), int(rows[i]), int(rows[i] - round(correct[i])))
        for i, g in enumerate(names)
        if rows[i]
    }


def worst_groups_error_share(predictions: np.ndarray, labels: np.ndarray, class_group: np.ndarray, top: int = 10):
    """Share of all errors made on rows of the `top` groups with the most errors (0 when there is no error)."""
    errors = int((predictions != labels).sum())
    if errors == 0:
        return 0.0
    counts = sorted((e for _, _, e in per_group_accuracy(predictions, labels, class_group).values()), reverse=True)
    return sum(counts[:top]) / errors


def always_failing_classes(predictions: np.ndarray, labels: np.ndarray, min_rows: int = 5) -> list[int]:
    """Classes with at least `min_rows` rows and not one of them right."""
    out = []
    for c in np.unique(labels):
        rows = labels == c
        if rows.sum() >= min_rows and not (predictions[rows] == c).any():
            out.append(int(c))
    return out


def correct_class_ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based rank of the true class's score among all classes (ties count in its favour) for every row."""
    logits = np.asarray(logits)
    true = logits[np.arange(len(labels)), labels]
    return 1 + (logits > true[:, None]).sum(axis=1)


def top2_margins(logits: np.ndarray, chunk_size: int = 4096) -> np.ndarray:
    """Softmax probability of the top class minus that of the runner-up, per row (in [0, 1]); in chunks of rows,
    so a large validation set with many classes needs no float64 copy of all logits."""
    logits = np.asarray(logits)
    out = np.empty(len(logits))
    if logits.shape[1] == 1:
        out[:] = 1.0
        return out
    for start in range(0, len(logits), chunk_size):
        x = np.asarray(logits[start : start + chunk_size], dtype=np.float64)
        x = x - x.max(axis=1, keepdims=True)
        top2 = np.partition(x, -2, axis=1)[:, -2:]
        out[start : start + len(x)] = (np.exp(top2[:, 1]) - np.exp(top2[:, 0])) / np.exp(x).sum(axis=1)
    return out


def within_group_error_share(predictions: np.ndarray, labels: np.ndarray, class_group: np.ndarray) -> float:
    """Share of errors whose predicted class is in the true class's group (0 when there is no error)."""
    wrong = predictions != labels
    if not wrong.any():
        return 0.0
    true_g, pred_g = class_group[labels[wrong]], class_group[predictions[wrong]]
    return float(np.mean([t is not None and t == p for t, p in zip(true_g, pred_g, strict=True)]))


def confused_pairs(
    predictions: np.ndarray, labels: np.ndarray, class_group: np.ndarray, top: int = 10
) -> list[tuple[int, int, int, bool]]:
    """The `top` class pairs with the most errors in either direction: (class a, class b, errors, same group),
    a < b, most errors first (ties: by class ids)."""
    counts: dict[tuple[int, int], int] = {}
    for y, p in zip(labels.tolist(), predictions.tolist(), strict=True):
        if y != p:
            key = (min(y, p), max(y, p))
            counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [(a, b, n, class_group[a] is not None and class_group[a] == class_group[b]) for (a, b), n in ranked]


@dataclass
class GroupAnalysis:
    """Everything `group_analysis` found: flat `metrics` (for metrics.json and the trackers) and the tables."""

    metrics: dict[str, float]
    per_group: dict[str, tuple] = field(default_factory=dict)
    failing_classes: list[int] = field(default_factory=list)
    pairs: list[tuple[int, int, int, bool]] = field(default_factory=list)
    margins: np.ndarray = field(default_factory=lambda: np.zeros(0))
    errors: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def group_errors(self) -> dict[str, float]:
        """Group -> validation error rate (what the hard-group curriculum weighs groups by)."""
        return {g: 1.0 - acc for g, (acc, _, _) in self.per_group.items()}


def group_analysis(
    logits: np.ndarray,
    labels: np.ndarray,
    class_group: np.ndarray,
    min_rows: int = 5,
    margin_threshold: float = 0.005,
    worst: int = 10,
) -> GroupAnalysis:
    """Every number of the module docstring for labelled rows (label >= 0)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    keep = labels >= 0
    logits, labels = logits[keep], labels[keep]
    predictions = logits.argmax(axis=1)
    wrong = predictions != labels
    per_group = per_group_accuracy(predictions, labels, class_group)
    ranks, margins = correct_class_ranks(logits, labels), top2_margins(logits)
    failing = always_failing_classes(predictions, labels, min_rows)
    buckets = candidate_bucket_accuracy(logits, labels, class_group)
    metrics = {f"within_group_accuracy_{k}": v for k, (v, _) in buckets.items()}
    if "within_group_accuracy_all" in metrics:
        metrics["within_group_accuracy"] = metrics.pop("within_group_accuracy_all")
    accs = [acc for acc, _, _ in per_group.values()]
    metrics.update(
        {
            "group_accuracy_min": float(min(accs)) if accs else float("nan"),
            "group_accuracy_macro": float(np.mean(accs)) if accs else float("nan"),
            f"worst{worst}_groups_error_share": worst_groups_error_share(predictions, labels, class_group, worst),
            "within_group_error_share": within_group_error_share(predictions, labels, class_group),
            "always_failing_classes": float(len(failing)),
            "error_rank2_share": float((ranks[wrong] == 2).mean()) if wrong.any() else 0.0,
            f"error_margin_below_{margin_threshold:g}_share": (
                float((margins[wrong] < margin_threshold).mean()) if wrong.any() else 0.0
            ),
        }
    )
    pairs = confused_pairs(predictions, labels, class_group)
    return GroupAnalysis(metrics, per_group, failing, pairs, margins, wrong)


def analysis_markdown(analysis: GroupAnalysis, class_names: Mapping[int, str] | Sequence[str] | None = None) -> str:
    """The analysis as a report.md section: the numbers, the 10 worst groups, failing classes, confused pairs."""

    def name(c: int) -> str:
        return str(class_names[c]) if class_names is not None else str(c)

    m = analysis.metrics
    lines = ["## Errors by group", "", "| number | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in m.items()]
    worst = sorted(analysis.per_group.items(), key=lambda kv: (-kv[1][2], kv[0]))[:10]
    lines += ["", "### Groups with the most errors", "", "| group | accuracy | rows | errors |", "|---|---|---|---|"]
    lines += [f"| {g} | {acc:.3f} | {n} | {e} |" for g, (acc, n, e) in worst]
    if analysis.failing_classes:
        lines += ["", "### Classes that always fail", "", ", ".join(name(c) for c in analysis.failing_classes)]
    if analysis.pairs:
        lines += ["", "### Most confused class pairs", "", "| class | class | errors | same group |"]
        lines += ["|---|---|---|---|"]
        lines += [f"| {name(a)} | {name(b)} | {n} | {'yes' if same else 'no'} |" for a, b, n, same in analysis.pairs]
    return "\n".join(lines) + "\n"
