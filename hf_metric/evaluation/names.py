"""The names of the metrics `MetricEvaluator` returns: the one list `checkpointing.save_best_by` is checked
against. A leaf module (no imports), so the config can check a name without loading the evaluation code."""

from __future__ import annotations

from collections.abc import Sequence

LOSS_METRICS = ("loss", "ce_loss")
"""Plus the metric loss's part, `<type>_loss` (e.g. `supcon_loss`)."""
CLASSIFICATION_METRICS = ("accuracy", "f1", "top5_accuracy")
KNN_METRICS = ("knn_accuracy", "knn_f1")
REFERENCE_METRICS = (
    "bank_intra_class_cosine",
    "bank_inter_class_cosine",
    "bank_mean_margin",
    "bank_positive_margin_fraction",
)
"""The reference statistics worth choosing a checkpoint by (others, such as `bank_size`, are bookkeeping)."""


GROUP_METRICS = ("within_group_accuracy", "group_accuracy_min", "group_accuracy_macro")
"""Group-analysis numbers worth choosing a checkpoint by (returned when the data has a `group` column)."""


def metric_names(
    metric_part: str = "supcon_loss", recall_ks: Sequence[int] = (1, 5, 10), groups: bool = False
) -> tuple[str, ...]:
    """The metrics (without the `eval_` prefix) a `MetricEvaluator` returns and a checkpoint can be chosen by
    (`groups`: with the error analysis by group)."""
    recalls = tuple(f"recall@{k}" for k in recall_ks)
    names = (*LOSS_METRICS, metric_part, *CLASSIFICATION_METRICS, *recalls, *KNN_METRICS, *REFERENCE_METRICS)
    return (*names, *GROUP_METRICS) if groups else names


IDENTIFICATION_METRICS = ("precision_at_1", "r_precision", "map_at_r", "mrr")
VERIFICATION_METRICS = ("verification_auc", "eer")
IDENTIFICATION_GROUP_METRICS = ("group_precision_at_1_min", "group_precision_at_1_macro")


def identification_metric_names(
    ks: Sequence[int] = (1, 5, 10),
    fars: Sequence[float] = (1e-3, 1e-2),
    fpirs: Sequence[float] = (0.01, 0.1),
    groups: bool = False,
) -> tuple[str, ...]:
    """The metrics an `IdentificationEvaluator` returns that a checkpoint can be chosen by (`groups`: with the
    per-group numbers and the same-group verification protocol)."""
    verification = (*VERIFICATION_METRICS, *(f"tar@far={f:g}" for f in fars))
    names = (
        *IDENTIFICATION_METRICS,
        *(f"cmc@{k}" for k in ks),
        *verification,
        *(f"dir@fpir={f:g}" for f in fpirs),
    )
    if groups:
        names += (*IDENTIFICATION_GROUP_METRICS, *(f"{name}_same_group" for name in verification))
    return names
