"""What int8 quantisation costs, measured against the float32 PyTorch model on the same rows.

An int8 graph cannot meet the 1e-4 parity of a float32 export, so it is held to a stated tolerance instead:
the embeddings keep a mean cosine of at least `INT8_MIN_MEAN_COSINE` with the float32 ones and every row at
least `INT8_MIN_COSINE`, and, on rows with known labels, the accuracy of the prediction drops by at most
`max_accuracy_drop` points. The report also
gives the top-1 agreement and, for a model with an open-set rule, re-checks its calibrated threshold on the
int8 scores (the share of rows whose accept/reject decision flips; with out-of-scope rows among the labels,
their recall and the in-scope accuracy after rejection, float32 vs int8).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import HfMetricUserError

INT8_MIN_MEAN_COSINE = 0.99
"""The int8 embeddings must keep at least this mean cosine with the float32 ones (MiniLM-L6: 0.993)."""
INT8_MIN_COSINE = 0.95
"""Every row's int8 embedding must keep at least this cosine with the float32 one (MiniLM-L6: 0.979)."""
DEFAULT_MAX_ACCURACY_DROP = 1.0
"""Accuracy points an int8 export may lose on labelled rows (`--max-accuracy-drop`)."""


class Int8CheckError(HfMetricUserError):
    """The int8 graph is outside the stated tolerance: the export is not kept."""


def int8_report(
    reference: Any,
    quantized: Any,
    labels: list[str] | None,
    id2label: dict[int, str],
    open_set_rule: tuple[float, str] | None = None,
) -> dict[str, Any]:
    """Compare two backends' `ModelOutputs` on the same rows (`labels`: their label names, or None;
    `open_set_rule`: the model's (threshold, out-of-scope label), or None)."""
    cosine = (reference.embeddings.astype(np.float64) * quantized.embeddings).sum(axis=1)
    top_ref, top_int8 = reference.logits.argmax(axis=1), quantized.logits.argmax(axis=1)
    report: dict[str, Any] = {
        "rows": len(cosine),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "embeddings_max_abs_diff": float(np.abs(reference.embeddings - quantized.embeddings).max()),
        "top1_agreement": float((top_ref == top_int8).mean()),
    }
    names = np.asarray([id2label[i] for i in range(len(id2label))], dtype=object)
    truth = np.asarray(labels, dtype=object) if labels is not None else None
    if truth is not None and np.isin(truth, names).any():
        known = np.isin(truth, names)
        fp32, int8 = _accuracy(names[top_ref], truth, known), _accuracy(names[top_int8], truth, known)
        report.update(labelled_rows=int(known.sum()), accuracy_fp32=fp32, accuracy_int8=int8)
        report["accuracy_change_points"] = round(100 * (int8 - fp32), 4)
    if open_set_rule is not None and reference.open_set_scores is not None:
        report["open_set"] = open_set_recheck(reference, quantized, truth, *open_set_rule)
    return report


def open_set_recheck(
    reference: Any, quantized: Any, truth: np.ndarray | None, threshold: float, oos: str
) -> dict[str, float]:
    """The calibrated threshold on float32 and on int8 scores: rejected shares, flipped decisions and, with
    rows labelled `oos`, their recall (the share rejected), float32 vs int8."""
    rejected_ref = reference.open_set_scores < threshold
    rejected_int8 = quantized.open_set_scores < threshold
    out = {
        "threshold": float(threshold),
        "rejected_fp32": float(rejected_ref.mean()),
        "rejected_int8": float(rejected_int8.mean()),
        "decisions_flipped": float((rejected_ref != rejected_int8).mean()),
    }
    if truth is not None and (truth == oos).any():
        out["oos_recall_fp32"] = float(rejected_ref[truth == oos].mean())
        out["oos_recall_int8"] = float(rejected_int8[truth == oos].mean())
    return out


def _accuracy(predicted: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> float:
    return float((predicted[rows] == truth[rows]).mean())


def check_int8(report: dict[str, Any], where: str, max_accuracy_drop: float) -> None:
    """Raise `Int8CheckError` when the report is outside the stated tolerance."""
    if report["mean_cosine"] < INT8_MIN_MEAN_COSINE or report["min_cosine"] < INT8_MIN_COSINE:
        raise Int8CheckError(
            f"{where}: int8 embeddings keep a cosine with float32 of {report['mean_cosine']:.4f} on average "
            f"(>= {INT8_MIN_MEAN_COSINE} needed) and {report['min_cosine']:.4f} at worst (>= {INT8_MIN_COSINE}); "
            "export without --quantize"
        )
    drop = -report.get("accuracy_change_points", 0.0)
    if drop > max_accuracy_drop:
        raise Int8CheckError(
            f"{where}: int8 accuracy {report['accuracy_int8']:.4f} vs float32 {report['accuracy_fp32']:.4f} "
            f"(-{drop:.2f} points > --max-accuracy-drop {max_accuracy_drop})"
        )


def describe(report: dict[str, Any]) -> list[str]:
    """The report as printed lines."""
    lines = [
        f"int8 vs float32 on {report['rows']} rows: embedding cosine mean {report['mean_cosine']:.4f} "
        f"(>= {INT8_MIN_MEAN_COSINE}), min {report['min_cosine']:.4f} (>= {INT8_MIN_COSINE}); top-1 agreement "
        f"{report['top1_agreement']:.4f}"
    ]
    if "accuracy_fp32" in report:
        lines.append(
            f"int8 accuracy on {report['labelled_rows']} labelled rows: {report['accuracy_int8']:.4f} vs float32 "
            f"{report['accuracy_fp32']:.4f} ({report['accuracy_change_points']:+.2f} points)"
        )
    else:
        lines.append("int8 accuracy: not measured (the --data rows have no known labels)")
    rule = report.get("open_set")
    if rule:
        line = (
            f"open-set threshold {rule['threshold']:.6g} on int8 scores: rejects {rule['rejected_int8']:.4f} of rows "
            f"vs {rule['rejected_fp32']:.4f} in float32; {rule['decisions_flipped']:.4f} of decisions flip"
        )
        if "oos_recall_fp32" in rule:
            line += f"; out-of-scope recall {rule['oos_recall_int8']:.4f} vs {rule['oos_recall_fp32']:.4f}"
        lines.append(line)
    return lines
