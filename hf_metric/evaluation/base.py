"""The evaluator protocol: one object per family of metrics, composed into the validation of a run.

As in sentence-transformers, an evaluator is called with what the model produced for a labelled set and returns
named numbers; the trainer calls it at every evaluation and a user can call the same object on a held-out file.
A metric family is one subclass (`Evaluator`); `SequentialEvaluator` runs several and merges their numbers, which
is how the built-in validation (`evaluator.MetricEvaluator`) is put together and how a user's own evaluator joins
it: register the class with `hf_metric.register_evaluator("name")` in a module listed under `imports:` and name
it in `metric_validation.evaluators`; every name its `metric_names()` returns is then a valid
`checkpointing.save_best_by`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..model.registry import Registry


@dataclass
class EvalPredictions:
    """What a model produced for a labelled set: logits, embeddings (or None), labels and the two row masks."""

    logits: np.ndarray
    embeddings: np.ndarray | None
    labels: np.ndarray
    classifier_rows: np.ndarray
    metric_rows: np.ndarray
    head_logits: np.ndarray | None = None
    """The head's own logits when `logits` are kNN-fused (for the energy score); None: `logits`."""
    predicted_logits: np.ndarray | None = None
    """The logits the model predicts with when `logits` are the head's and the model fuses kNN votes (`evaluate`
    reports the head, while the open-set rule judges the model's own prediction); None: `logits`."""
    groups: np.ndarray | None = None
    """Each row's group (the data's `group` column), for evaluators that compare rows within a group."""

    def open_set_inputs(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(prediction logits, head logits or None) as the model's open-set rule sees them."""
        if self.predicted_logits is None:
            return self.logits, self.head_logits
        return self.predicted_logits, self.head_logits if self.head_logits is not None else self.logits

    @classmethod
    def from_loop(cls, predictions, label_ids) -> EvalPredictions:
        """From the Trainer's evaluation loop: predictions `(logits[, embeddings])`, label_ids `(labels[, classifier
        mask[, metric mask]])` (missing masks mean every row)."""
        predictions = predictions if isinstance(predictions, tuple) else (predictions,)
        label_ids = label_ids if isinstance(label_ids, tuple) else (label_ids,)
        labels = np.asarray(label_ids[0])
        every = np.ones(len(labels), bool)
        return cls(
            logits=np.asarray(predictions[0]),
            embeddings=np.asarray(predictions[1]) if len(predictions) > 1 else None,
            labels=labels,
            classifier_rows=np.asarray(label_ids[1]).astype(bool) if len(label_ids) > 1 else every,
            metric_rows=np.asarray(label_ids[2]).astype(bool) if len(label_ids) > 2 else every,
        )


Reference = Any
"""A labelled reference set `(embeddings, labels)` (the trainer's bank, a model's stored rows) or None."""


class Evaluator:
    """One family of metrics of a labelled set.

    Subclasses return their numbers from `__call__` under the names `metric_names()` lists (without the `eval_`
    prefix the trainer adds). `reference` is the labelled embedding set that retrieval-type metrics compare
    against; an evaluator that needs none ignores it. Keep evaluators pure functions of their inputs: under
    multi-process training every process calls them with the gathered predictions.

    Example:
        ```python
        @hf_metric.register_evaluator("worst_class_f1")
        class WorstClassF1(hf_metric.Evaluator):
            def metric_names(self):
                return ("worst_class_f1",)

            def __call__(self, predictions, reference=None):
                from sklearn.metrics import f1_score
                rows = predictions.classifier_rows
                y = predictions.labels[rows]
                f1 = f1_score(y, predictions.logits[rows].argmax(-1), average=None, labels=np.unique(y))
                return {"worst_class_f1": float(f1.min())}
        ```
    """

    def metric_names(self) -> tuple[str, ...]:
        """The names this evaluator may return: the ones `checkpointing.save_best_by` can choose."""
        return ()

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        raise NotImplementedError


class SequentialEvaluator(Evaluator):
    """Runs `evaluators` in order and merges their numbers; two evaluators returning one name is an error (a
    silent overwrite would choose checkpoints by the wrong number)."""

    def __init__(self, evaluators: Iterable[Evaluator]) -> None:
        self.evaluators = list(evaluators)

    def metric_names(self) -> tuple[str, ...]:
        return tuple(name for e in self.evaluators for name in e.metric_names())

    def __call__(self, predictions: EvalPredictions, reference: Reference = None) -> dict[str, float]:
        merged: dict[str, float] = {}
        for evaluator in self.evaluators:
            numbers = evaluator(predictions, reference)
            clash = merged.keys() & numbers.keys()
            if clash:
                raise ValueError(f"{type(evaluator).__name__} returns {sorted(clash)}, already returned before it")
            merged.update(numbers)
        return merged


EVALUATORS = Registry("evaluator")
"""`metric_validation.evaluators` names -> `Evaluator` classes (user evaluators: `hf_metric.register_evaluator`)."""


def build_evaluators(specs: Sequence[Any]) -> list[Evaluator]:
    """The user evaluators a config names: each spec a registered name or `{type: name, **options}`."""
    built = []
    for spec in specs:
        spec = {"type": spec} if isinstance(spec, str) else spec
        options = {k: v for k, v in spec.items() if k != "type"}
        built.append(EVALUATORS.get_class(spec["type"])(**options))
    return built


from . import identification  # noqa: E402, F401  (registers the built-in "identification" evaluator)
