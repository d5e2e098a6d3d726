"""hf_metric: supervised metric learning for text, images and audio on Hugging Face Transformers (masked CE +
SupCon in one Trainer).

The package imports lazily, as transformers does: `import hf_metric`, the command line's `--help` and a config
check load no torch; the first use of a model, loss, pipeline or trainer object imports them. The model is
registered with transformers' Auto classes, and the `metric-embedding`, `knn-classification` and
`open-set-classification` tasks with `transformers.pipeline`, as soon as either is used (`auto_registration.py`).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import auto_registration as _auto_registration
from .errors import ConfigError as ConfigError
from .errors import DataError as DataError
from .errors import HfMetricUserError as HfMetricUserError

_auto_registration.install()

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str]] = {
    "TrainConfig": ("config", "TrainConfig"),
    "load_config": ("loading", "load_config"),
    "config_from_dict": ("loading", "config_from_dict"),
    "MetricClassifierConfig": ("model", "MetricClassifierConfig"),
    "MetricClassifierModel": ("model", "MetricClassifierModel"),
    "MetricClassifierOutput": ("model", "MetricClassifierOutput"),
    "TrainingObjective": ("model", "TrainingObjective"),
    "HEADS": ("model.heads", "HEADS"),
    "Head": ("model.heads", "Head"),
    "CLASSIFICATION_LOSSES": ("model.losses", "CLASSIFICATION_LOSSES"),
    "METRIC_LOSSES": ("model.losses", "METRIC_LOSSES"),
    "ClassificationLoss": ("model.losses", "ClassificationLoss"),
    "MetricLoss": ("model.losses", "MetricLoss"),
    "SupConLoss": ("model.losses", "SupConLoss"),
    "masked_cross_entropy": ("model.losses", "masked_cross_entropy"),
    "masked_mean": ("model.losses", "masked_mean"),
    "Evaluator": ("evaluation.base", "Evaluator"),
    "SequentialEvaluator": ("evaluation.base", "SequentialEvaluator"),
    "EVALUATORS": ("evaluation.base", "EVALUATORS"),
    "MetricEvaluator": ("evaluation.evaluator", "MetricEvaluator"),
    "IdentificationEvaluator": ("evaluation.identification", "IdentificationEvaluator"),
    "Gallery": ("inference.gallery", "Gallery"),
    "KnnClassificationPipeline": ("sharing.pipelines", "KnnClassificationPipeline"),
    "MetricEmbeddingPipeline": ("sharing.pipelines", "MetricEmbeddingPipeline"),
    "register_pipelines": ("sharing.pipelines", "register_pipelines"),
    "ClassBalancedBatchSampler": ("training.samplers", "ClassBalancedBatchSampler"),
}
"""Public name -> (module under hf_metric, attribute): imported on first use."""

_REGISTER_DECORATORS = {
    "register_metric_loss": ("model.losses", "METRIC_LOSSES"),
    "register_classification_loss": ("model.losses", "CLASSIFICATION_LOSSES"),
    "register_head": ("model.heads", "HEADS"),
    "register_evaluator": ("evaluation.base", "EVALUATORS"),
}
"""`@hf_metric.register_metric_loss("name")` on a `MetricLoss` subclass makes `loss.metric.type: name` selectable
(its keyword arguments become keys of `loss.metric`); `register_classification_loss` (`loss.classification`),
`register_head` (`head.type`, a class `(in_features, num_labels, **options)`) and `register_evaluator` (an
`Evaluator` subclass for `metric_validation.evaluators`) likewise: each is the `register` of that registry."""


def _load(module: str, attribute: str) -> Any:
    if module != "config":
        importlib.import_module(".sharing.pipelines", __name__)  # registers the Auto classes and the pipelines
    return getattr(importlib.import_module(f".{module}", __name__), attribute)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = _load(*_LAZY[name])
    elif name in _REGISTER_DECORATORS:
        value = _load(*_REGISTER_DECORATORS[name]).register
    else:
        raise AttributeError(f"module 'hf_metric' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY, *_REGISTER_DECORATORS])


__all__ = sorted(["ConfigError", "DataError", "HfMetricUserError", *_LAZY, *_REGISTER_DECORATORS])
