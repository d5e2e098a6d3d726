"""hf_metric: supervised metric learning for text, images and audio on Hugging Face Transformers (masked CE +
SupCon in one Trainer)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

from .config import TrainConfig, load_config
from .errors import ConfigError, DataError, HfMetricUserError
from .inference.gallery import Gallery
from .model import MetricClassifierConfig, MetricClassifierModel, MetricClassifierOutput, TrainingObjective
from .model.heads import HEADS, Head
from .model.losses import (
    CLASSIFICATION_LOSSES,
    METRIC_LOSSES,
    ClassificationLoss,
    MetricLoss,
    SupConLoss,
    masked_cross_entropy,
    masked_mean,
)
from .sharing.pipelines import KnnClassificationPipeline, MetricEmbeddingPipeline, register_pipelines
from .training.samplers import ClassBalancedBatchSampler

__version__ = "0.1.0"

register_metric_loss = METRIC_LOSSES.register
"""`@hf_metric.register_metric_loss("name")` on a `MetricLoss` subclass makes `loss.metric.type: name` selectable;
the class's keyword arguments become keys of `loss.metric` (see docs/architecture.md)."""
register_classification_loss = CLASSIFICATION_LOSSES.register
"""`@hf_metric.register_classification_loss("name")` on a `ClassificationLoss` subclass (`loss.classification`)."""
register_head = HEADS.register
"""`@hf_metric.register_head("name")` on a head class `(in_features, num_labels, **options)` (`head.type`)."""

AutoConfig.register(MetricClassifierConfig.model_type, MetricClassifierConfig, exist_ok=True)
AutoModel.register(MetricClassifierConfig, MetricClassifierModel, exist_ok=True)
for _auto in (AutoModelForSequenceClassification, AutoModelForImageClassification, AutoModelForAudioClassification):
    _auto.register(MetricClassifierConfig, MetricClassifierModel, exist_ok=True)
register_pipelines()

__all__ = [
    "ClassBalancedBatchSampler",
    "ClassificationLoss",
    "ConfigError",
    "DataError",
    "Gallery",
    "Head",
    "HfMetricUserError",
    "KnnClassificationPipeline",
    "MetricClassifierConfig",
    "MetricClassifierModel",
    "MetricClassifierOutput",
    "MetricEmbeddingPipeline",
    "MetricLoss",
    "SupConLoss",
    "TrainConfig",
    "TrainingObjective",
    "load_config",
    "masked_cross_entropy",
    "masked_mean",
    "register_classification_loss",
    "register_head",
    "register_metric_loss",
]
