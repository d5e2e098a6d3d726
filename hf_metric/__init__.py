"""hf_metric: supervised metric learning for text on Hugging Face Transformers (masked CE + SupCon)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

from .config import TrainConfig, load_config
from .errors import ConfigError, DataError, HfMetricUserError
from .model import MetricClassifierConfig, MetricClassifierModel, MetricClassifierOutput
from .model.losses import SupConLoss, masked_cross_entropy, masked_mean
from .sharing.pipelines import KnnClassificationPipeline, MetricEmbeddingPipeline, register_pipelines
from .training.samplers import ClassBalancedBatchSampler

__version__ = "0.1.0"

AutoConfig.register(MetricClassifierConfig.model_type, MetricClassifierConfig, exist_ok=True)
AutoModel.register(MetricClassifierConfig, MetricClassifierModel, exist_ok=True)
for _auto in (AutoModelForSequenceClassification, AutoModelForImageClassification, AutoModelForAudioClassification):
    _auto.register(MetricClassifierConfig, MetricClassifierModel, exist_ok=True)
register_pipelines()

__all__ = [
    "ClassBalancedBatchSampler",
    "ConfigError",
    "DataError",
    "HfMetricUserError",
    "KnnClassificationPipeline",
    "MetricClassifierConfig",
    "MetricClassifierModel",
    "MetricClassifierOutput",
    "MetricEmbeddingPipeline",
    "SupConLoss",
    "TrainConfig",
    "load_config",
    "masked_cross_entropy",
    "masked_mean",
]
