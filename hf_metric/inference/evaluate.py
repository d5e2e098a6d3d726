"""Score a trained model on a held-out labelled file with the same `MetricEvaluator` the trainer uses.

The file's labels are encoded through the MODEL's `id2label` (by name), so a test file holding a subset of the
classes, in any order, keeps the model's ids; a label the model does not know is a one-line `DataError` listing
them. Retrieval metrics (Recall@K, kNN accuracy/F1) search the training rows stored in the model for kNN
fusion, when it has them. The head alone and the kNN-fused classifier are reported side by side.

Rows labelled with the model's out-of-scope label (`out_of_scope_label` in its config, e.g. "oos"; or the one
given to `read_test_file`) count as out of scope: they are left out of every class metric and give the open-set
metrics the evaluator reports in training (`oos_auroc_<score>`, `oos_fpr95_<score>` for every score; with the
model's calibrated rule also `in_scope_accuracy` (a rejected in-scope row counts wrong), `in_scope_recall`,
`oos_recall`, `oos_precision`, `open_set_accuracy`), plus the accuracy / OOS-recall curve (the model's operating
point marked) and a table of operating points (the model's rule; each score at in-scope recall 0.90 / 0.95 /
0.99: its threshold, in-scope accuracy, OOS recall; `open_set_operating_points` in metrics.json), so that a user
can move the threshold knowingly (`hf-metric calibrate`). Any other unknown label is still an error.

A file with a `group` column (the candidate set of each row: an address, a scenario) also gets the error analysis
by group that validation reports in training (`evaluation.groups`): `within_group_accuracy` and its values by
number of candidates, per-group accuracy, the worst groups' share of the errors, always-failing classes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..atomic import atomic_directory, write_json_atomic, write_text_atomic
from ..data.chunked import row_slices
from ..data.media import cell_bytes
from ..data.parquet import LabeledTable, input_column_of, read_labeled_parquet
from ..evaluation.evaluator import EvalPredictions, MetricEvaluator, PlotSettings, RetrievalSettings
from ..evaluation.groups import analysis_markdown
from ..evaluation.metrics import classification_metrics, per_class_f1, top_k_accuracy
from ..evaluation.report import PLOT_CAPTIONS
from ..evaluation.tables import metrics_markdown_table
from ..model.open_set_scores import OUT_OF_SCOPE_ID
from ..open_set.evaluation import operating_points, operating_points_markdown
from .backends import ModelOutputs, concat_outputs, run_batches

TOP_KS = (1, 3, 5)
RARE_FRACTION = 0.25
"""`rare_class_f1`: mean F1 of the quarter of the model's classes with the fewest training rows."""


def rare_classes(counts: Mapping[int, int], fraction: float = RARE_FRACTION) -> list[int]:
    """The `fraction` of classes (at least one) with the fewest rows; ties broken by class id."""
    ordered = sorted(counts, key=lambda c: (counts[c], c))
    return ordered[: max(1, round(len(ordered) * fraction))]


def _class_metrics(logits: np.ndarray, labels: np.ndarray, counts: Mapping[int, int], prefix: str) -> dict:
    out = {f"{prefix}{k}": v for k, v in classification_metrics(logits, labels).items()}
    out.update({f"{prefix}top{k}_accuracy": top_k_accuracy(logits, labels, k) for k in TOP_KS})
    classes, f1, _ = per_class_f1(logits.argmax(axis=1), labels)
    by_class = dict(zip(classes.tolist(), f1.tolist(), strict=True))
    rare = [c for c in rare_classes(counts) if c in set(labels.tolist())]
    out[f"{prefix}rare_class_f1"] = float(np.mean([by_class.get(c, 0.0) for c in rare])) if rare else 0.0
    return out


def read_test_file(path: str, id2label: Mapping[int, str], out_of_scope_label: str | None = None) -> LabeledTable:
    """A labelled file encoded with the model's label ids (by name); rows labelled `out_of_scope_label` (unless
    that is one of the model's classes) get the out-of-scope id -1; other unknown labels are a `DataError`."""
    label2id = {name: i for i, name in id2label.items()}
    oos = out_of_scope_label if out_of_scope_label not in label2id else None
    return read_labeled_parquet(path, label2id, out_of_scope_label=oos)


def evaluate_file(
    labeled: LabeledTable,
    backend: Any,
    featurizer: Any,
    retrieval: RetrievalSettings,
    out_dir: str | None = None,
    batch_size: int = 64,
    plots: bool = True,
    embedding_map: str = "pca",
) -> dict[str, Any]:
    """Every metric of a file read by `read_test_file` (see the module docstring); with `out_dir`, writes
    metrics.json, report.md and plots/ there atomically. Returns `{"metrics": flat name -> value, "per_class":
    name -> {head_f1, fused_f1, support}}`."""
    id2label, path = backend.id2label, labeled.source
    column = input_column_of(path, labeled.table.column_names)
    outputs = _run_column(backend, featurizer, labeled.table.column(column), batch_size)
    labels = np.array(labeled.labels)
    oos = labels == OUT_OF_SCOPE_ID
    reference = backend.reference
    counts = _training_counts(reference, labels[~oos], len(id2label))
    fused = not np.array_equal(outputs.logits, outputs.head_logits)
    predictions = EvalPredictions(
        logits=outputs.head_logits,
        embeddings=outputs.embeddings,
        labels=labels,
        classifier_rows=labeled.table.column("classifier_mask").to_numpy().astype(bool),
        metric_rows=labeled.table.column("metric_mask").to_numpy().astype(bool),
        predicted_logits=outputs.logits if fused else None,
    )
    ce = predictions.classifier_rows & ~oos
    open_set = backend.open_set_settings() if getattr(backend, "open_set_settings", None) else None

    def run(folder: str | None) -> dict[str, Any]:
        evaluator = MetricEvaluator(
            objective=getattr(getattr(backend, "model", None), "objective", None),
            retrieval=retrieval,
            plots=PlotSettings(os.path.join(folder, "plots"), embedding_map) if folder and plots else None,
            class_names=id2label,
            class_counts=counts,
            open_set=open_set,
            class_groups=labeled.class_groups,  # a `group` column: the error analysis by group, as in training
        )
        ref = None if reference is None else (_tensor(reference[0]), np.asarray(reference[1]))
        result = evaluator(predictions, ref, plot_tag="test")
        metrics = {f"head_{k}" if k in ("accuracy", "f1", "top5_accuracy") else k: v for k, v in result.metrics.items()}
        metrics.update(_class_metrics(outputs.head_logits[ce], labels[ce], counts, "head_"))
        if outputs.knn_probabilities is not None:
            knn = np.log(np.clip(outputs.knn_probabilities[ce], 1e-12, None))
            metrics.update(_class_metrics(knn, labels[ce], counts, "knn_vote_"))
        if fused:
            metrics.update(_class_metrics(outputs.logits[ce], labels[ce], counts, "fused_"))
        metrics.update(
            rows=len(labels), classifier_rows=int(ce.sum()), metric_rows=int((predictions.metric_rows & ~oos).sum())
        )
        if oos.any():
            metrics["out_of_scope_rows"] = int(oos.sum())
        summary = {"metrics": metrics, "per_class": _per_class(outputs, labels[ce], ce, id2label)}
        points = _operating_points(predictions, evaluator.open_set) if oos.any() else []
        if points:
            summary["open_set_operating_points"] = points
        if folder:
            write_json_atomic(os.path.join(folder, "metrics.json"), summary)
            report = _report(folder, path, summary, result.plots)
            if points:
                report += "\n" + operating_points_markdown(points)
            if result.group_analysis is not None:
                report += "\n" + analysis_markdown(result.group_analysis, id2label)
            write_text_atomic(os.path.join(folder, "report.md"), report)
        return summary

    if out_dir is None:
        return run(None)
    with atomic_directory(out_dir) as tmp:
        summary = run(tmp)
    return summary


def _operating_points(p: EvalPredictions, open_set: Any) -> list[dict[str, Any]]:
    """The operating-point table (`open_set.evaluation.operating_points`) of the scores the evaluator computed."""
    if open_set.scores is None:
        return []
    rows = p.classifier_rows | (p.labels == OUT_OF_SCOPE_ID)
    s = open_set.settings
    rule = (s.score, s.threshold) if s is not None and s.threshold is not None else None
    return operating_points(open_set.scores, p.open_set_inputs()[0][rows], p.labels[rows], rule)


def _run_column(backend: Any, featurizer: Any, values: Any, batch_size: int) -> ModelOutputs:
    """The outputs of every row of an input column; image/audio cells reach Python `MAX_SLICE_BYTES` at a time
    (a text column is one slice: its rows are batched by length over the whole file)."""
    slices = row_slices(cell_bytes(values))
    parts = [run_batches(backend, featurizer, values.slice(a, b - a).to_pylist(), batch_size) for a, b in slices]
    return parts[0] if len(parts) == 1 else concat_outputs(parts)


def _tensor(values: Any):
    import torch

    return torch.as_tensor(np.asarray(values), dtype=torch.float32)


def _training_counts(reference: Any, labels: np.ndarray, num_labels: int) -> dict[int, int]:
    """Rows per class in the stored training sample (the model's kNN rows), else in the test file."""
    source = np.asarray(reference[1]) if reference is not None else labels
    counts = np.bincount(source, minlength=num_labels)
    return {i: int(c) for i, c in enumerate(counts)}


def _per_class(outputs: Any, labels: np.ndarray, ce: np.ndarray, id2label: Mapping[int, str]) -> dict[str, Any]:
    """F1 of the head and of the fused classifier, and the support, of every class in the file."""

    def f1_by_class(logits: np.ndarray) -> dict[int, float]:
        classes, f1, _ = per_class_f1(logits[ce].argmax(axis=1), labels)
        return dict(zip(classes.tolist(), f1.tolist(), strict=True))

    head, fused = f1_by_class(outputs.head_logits), f1_by_class(outputs.logits)
    support = np.bincount(labels, minlength=len(id2label))
    return {
        id2label[c]: {"head_f1": head[c], "fused_f1": fused[c], "support": int(support[c])}
        for c in sorted(set(labels.tolist()))
    }


def _report(folder: str, path: str, summary: dict[str, Any], plots: Mapping[str, str]) -> str:
    per_class = summary["per_class"]
    worst = sorted(per_class, key=lambda n: (per_class[n]["head_f1"], n))
    lines = [f"# Evaluation: {os.path.basename(path)}", "", metrics_markdown_table(summary["metrics"]), ""]
    lines += ["## Per-class F1 (worst first)", "", "| class | head F1 | fused F1 | support |", "|---|---|---|---|"]
    lines += [
        f"| {n} | {per_class[n]['head_f1']:.4f} | {per_class[n]['fused_f1']:.4f} | {per_class[n]['support']} |"
        for n in worst
    ]
    for name, file in sorted(plots.items()):
        heading, caption = PLOT_CAPTIONS.get(name, (name, ""))
        link = os.path.relpath(file, folder).replace(os.sep, "/")
        lines += ["", f"## {heading}", "", f"![{name}]({link})", "", caption]
    return "\n".join(lines) + "\n"
