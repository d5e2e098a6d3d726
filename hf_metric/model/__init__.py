"""The model: config, backbone -> pooling -> head / embedding, and the training objective (heads + losses).

Every module here imports only its siblings (relatively) and third-party packages, because `save_pretrained`
copies them next to the weights as remote code that must load without hf_metric installed (this `__init__` is not
copied: importing the package registers the model with transformers' Auto classes, so `AutoModel.from_pretrained`
loads a saved folder without `trust_remote_code`).
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
)

from .configuration import MetricClassifierConfig
from .modeling import MetricClassifierModel, MetricClassifierOutput
from .objective import TrainingObjective

AutoConfig.register(MetricClassifierConfig.model_type, MetricClassifierConfig, exist_ok=True)
AutoModel.register(MetricClassifierConfig, MetricClassifierModel, exist_ok=True)
for _auto in (AutoModelForSequenceClassification, AutoModelForImageClassification, AutoModelForAudioClassification):
    _auto.register(MetricClassifierConfig, MetricClassifierModel, exist_ok=True)

__all__ = ["MetricClassifierConfig", "MetricClassifierModel", "MetricClassifierOutput", "TrainingObjective"]
