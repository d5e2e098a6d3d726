"""The model: config, backbone -> pooling -> head / embedding, and the training objective (heads + losses).

Every module here imports only its siblings (relatively) and third-party packages, because `save_pretrained`
copies them next to the weights as remote code that must load without hf_metric installed.
"""

from .configuration import MetricClassifierConfig
from .modeling import MetricClassifierModel, MetricClassifierOutput
from .objective import TrainingObjective

__all__ = ["MetricClassifierConfig", "MetricClassifierModel", "MetricClassifierOutput", "TrainingObjective"]
