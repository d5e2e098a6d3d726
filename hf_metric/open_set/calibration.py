"""Choose the open-set score and its threshold on validation data (never on the test set).

A row is rejected when its score is below the threshold. The candidate thresholds of a score are its distinct
values on the validation rows (reject everything below that value; the smallest rejects nothing) and the
next float32 above the largest (rejects everything): every distinct rejection rule the data allows, all
exact float32 numbers, so the model applies the rule it was calibrated with. Every candidate is evaluated in
one pass over the sorted scores (cumulative counts), and the criterion picks one:

- `accuracy` (default with out-of-scope rows): the highest accuracy over in-scope classes plus
  "out of scope" as one class; among equal ones, the lowest threshold (fewest rejections).
- `in_scope_recall` (target r, the default without out-of-scope rows, r = 0.95): the highest threshold that
  still accepts at least r of the in-scope rows.
- `fpr` (target f): the lowest threshold that accepts at most f of the out-of-scope rows.
- `accuracy_drop` (target d): the highest threshold whose in-scope accuracy stays within d of the accuracy
  without rejection.

`score="auto"` tries every score and keeps the best by the criterion (for the targets: the best OOS recall,
or for `fpr` the best in-scope accuracy, at the target); without out-of-scope rows nothing can rank the
scores, and `fused` is used.

`criterion="auto"` (the config's default) weighs the evidence first. The best validation accuracy is decided by
the few out-of-scope rows near the threshold: with 10 of them one row moves the OOS recall by 10 points, and the
chosen threshold lands wherever those rows happen to fall (it then rejects few of the out-of-scope kinds that
validation did not show). So with fewer than `MIN_OOS_ROWS` out-of-scope validation rows `auto` does not use
them to choose: it keeps `AUTO_IN_SCOPE_RECALL` of the in-scope rows (criterion `in_scope_recall`, estimated on
the in-scope rows, which are plenty; its error does not depend on the out-of-scope rows at all) on the `fused`
score (no ranking of scores on a handful of rows either). With `MIN_OOS_ROWS` or more it is `accuracy`, as
before. The returned `Calibration` says what it chose and why (`reason`, `describe()`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..model.open_set_scores import OUT_OF_SCOPE_ID

CRITERIA = ("accuracy", "in_scope_recall", "fpr", "accuracy_drop")
MIN_OOS_ROWS = 100
"""Out-of-scope validation rows below which `criterion="auto"` does not chase validation accuracy. At 100 rows
an OOS recall near 0.75 is known to about +-4 points (binomial standard error); at 50, +-6; at 10, +-14."""
AUTO_IN_SCOPE_RECALL = 0.95
"""The in-scope recall `criterion="auto"` keeps with few out-of-scope rows (unless a target is given)."""


@dataclass
class Calibration:
    """The chosen rule and what it scores on the validation rows."""

    score: str
    threshold: float
    criterion: str
    metrics: dict[str, float]
    per_score: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each score's own calibrated threshold and metrics (what `auto` chose among)."""
    target: float | None = None
    in_scope_rows: int = 0
    oos_rows: int = 0
    reason: str = ""
    """Why this criterion (and score): the evidence `criterion="auto"` weighed; empty for an explicit one."""

    def summary(self) -> dict[str, object]:
        """JSON-able record of the choice (stored in a model's config as `open_set_calibration`)."""
        return {
            "score": self.score,
            "threshold": float(self.threshold),
            "criterion": self.criterion,
            "target": self.target,
            "in_scope_rows": self.in_scope_rows,
            "oos_rows": self.oos_rows,
            "reason": self.reason,
            "metrics": {k: float(v) for k, v in self.metrics.items() if not np.isnan(v)},
        }

    def describe(self) -> str:
        """One line for logs, reports and the model card."""
        target = "" if self.target is None else f" (target {self.target:g})"
        why = f"; {self.reason}" if self.reason else ""
        return (
            f"score {self.score}, threshold {self.threshold:.6g}, criterion {self.criterion}{target}, on "
            f"{self.in_scope_rows} in-scope and {self.oos_rows} out-of-scope validation rows{why}"
        )


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Float32 distinct scores, ascending, then the next float32 above the largest."""
    values = np.unique(np.asarray(scores, dtype=np.float32))
    return np.append(values, np.nextafter(values[-1], np.float32(np.inf))) if len(values) else values


def threshold_curves(scores: np.ndarray, correct: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """For every candidate threshold (`candidate_thresholds`): counts-based in-scope recall and accuracy, OOS
    recall, FPR and open-set accuracy, in O(N log N). `correct`: the argmax class is right (in-scope rows)."""
    s = np.asarray(scores, dtype=np.float32)
    oos = np.asarray(labels) == OUT_OF_SCOPE_ID
    good = np.asarray(correct, dtype=bool) & ~oos
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    thresholds = candidate_thresholds(s)
    rejected = np.searchsorted(s_sorted, thresholds, side="left")  # rows with score < t
    cum = lambda mask: np.concatenate([[0], np.cumsum(mask[order])])  # noqa: E731
    oos_rej, in_rej, good_rej = cum(oos)[rejected], cum(~oos)[rejected], cum(good)[rejected]
    n_oos, n_in, n = int(oos.sum()), int((~oos).sum()), len(s)
    nan = np.full(len(thresholds), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "threshold": thresholds,
            "in_scope_recall": (n_in - in_rej) / n_in if n_in else nan,
            "in_scope_accuracy": (good.sum() - good_rej) / n_in if n_in else nan,
            "oos_recall": oos_rej / n_oos if n_oos else nan,
            "fpr": (n_oos - oos_rej) / n_oos if n_oos else nan,
            "open_set_accuracy": (good.sum() - good_rej + oos_rej) / n,
        }


def pick(curves: Mapping[str, np.ndarray], criterion: str, target: float | None = None) -> int:
    """Index of the candidate `criterion` chooses (module docstring); candidates are ascending."""
    if criterion == "accuracy":
        return int(np.argmax(curves["open_set_accuracy"]))  # first maximum = lowest threshold
    if criterion == "in_scope_recall":
        ok = np.flatnonzero(curves["in_scope_recall"] >= (0.95 if target is None else target))
    elif criterion == "fpr":
        ok = np.flatnonzero(curves["fpr"] <= (0.05 if target is None else target))
        return int(ok[0]) if len(ok) else len(curves["threshold"]) - 1
    elif criterion == "accuracy_drop":
        acc = curves["in_scope_accuracy"]
        ok = np.flatnonzero(acc >= acc[0] - (0.01 if target is None else target) - 1e-12)
    else:
        raise ValueError(f"unknown calibration criterion {criterion!r}; choose one of {', '.join(CRITERIA)}")
    return int(ok[-1]) if len(ok) else 0


def _rank(metrics: Mapping[str, float], criterion: str) -> float:
    """What `auto` maximises among the scores' calibrated points."""
    key = {"accuracy": "open_set_accuracy", "fpr": "in_scope_accuracy"}.get(criterion, "oos_recall")
    value = metrics[key]
    return -np.inf if np.isnan(value) else value


def auto_criterion(oos_rows: int, target: float | None = None) -> tuple[str, float | None, str]:
    """(criterion, target, reason) of `criterion="auto"` for this many out-of-scope validation rows."""
    if oos_rows >= MIN_OOS_ROWS:
        return "accuracy", None, f"{oos_rows} out-of-scope rows >= {MIN_OOS_ROWS}: best validation accuracy"
    target = AUTO_IN_SCOPE_RECALL if target is None else target
    what = "no out-of-scope rows" if oos_rows == 0 else f"only {oos_rows} out-of-scope rows (< {MIN_OOS_ROWS})"
    return "in_scope_recall", target, f"{what}: too few to choose by; keep {target:g} of the in-scope rows"


def calibrate(
    scores: Mapping[str, np.ndarray],
    logits: np.ndarray,
    labels: np.ndarray,
    score: str = "auto",
    criterion: str | None = None,
    target: float | None = None,
) -> Calibration:
    """The score and threshold for these validation rows (labels: class ids, `OUT_OF_SCOPE_ID` out of scope).

    `criterion` None means `accuracy` with out-of-scope rows and `in_scope_recall` without; `auto` weighs the
    evidence (module docstring; `target` is then its in-scope recall). Targets default to 0.95 (in-scope recall),
    0.05 (FPR) and 0.01 (accuracy drop).
    """
    labels = np.asarray(labels)
    n_oos = int((labels == OUT_OF_SCOPE_ID).sum())
    has_oos = n_oos > 0
    reason = ""
    if criterion == "auto":
        criterion, target, reason = auto_criterion(n_oos, target)
        if criterion != "accuracy" and score == "auto" and "fused" in scores:
            score = "fused"
            reason += "; score fused (not ranked on few rows)"
    criterion = criterion or ("accuracy" if has_oos else "in_scope_recall")
    if criterion in ("accuracy", "fpr") and not has_oos:
        raise ValueError(f"calibration criterion {criterion!r} needs out-of-scope validation rows; there are none")
    correct = np.asarray(logits).argmax(axis=-1) == labels
    names = list(scores) if score == "auto" else [score]
    if score == "auto" and not has_oos:
        names = ["fused"] if "fused" in scores else names[:1]
    missing = [n for n in names if n not in scores]
    if missing:
        raise ValueError(f"open-set score {missing[0]!r} is not available here (have: {', '.join(scores)})")
    per_score = {}
    for name in names:
        curves = threshold_curves(scores[name], correct, labels)
        i = pick(curves, criterion, target)
        per_score[name] = {key: float(values[i]) for key, values in curves.items()}
    best = max(names, key=lambda n: _rank(per_score[n], criterion)) if has_oos else names[0]
    chosen = per_score[best]
    if target is None and criterion != "accuracy":
        target = {"in_scope_recall": 0.95, "fpr": 0.05, "accuracy_drop": 0.01}[criterion]
    n_in = len(labels) - n_oos
    return Calibration(best, chosen["threshold"], criterion, chosen, per_score, target, n_in, n_oos, reason)
