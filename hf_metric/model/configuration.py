"""`MetricClassifierConfig`: every hyper-parameter of a `MetricClassifierModel`, saved as `config.json`.

Like the other files of this folder it travels with saved models as remote code (see `modeling.py`).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig

try:
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # transformers before sub-config specs (e.g. 5.17): plain classes, dicts resolved by us
    SubConfigSpec = None

from .pooling import POOLING_MODES


class MetricClassifierConfig(PreTrainedConfig):
    r"""Configuration of a `MetricClassifierModel`.

    Args:
        encoder_config: config of the transformers backbone (any `AutoModel` encoder).
        pooling: `mean` (masked mean of token states), `cls` (first token) or `pooler` (the backbone's pooler).
        projection_dim: size of the projection MLP for the metric embedding; `None` uses the pooled output.
        classifier_dropout: dropout on the pooled output before the head.
        head_type, head_kwargs: the classification head (see `hf_metric.heads.HEADS`).
        class_margins: optional margin per class (e.g. from `head.group_margin`): in training, each row's
            target logit gets the margin of its class instead of the head's single margin.
        classification_loss, classification_loss_kwargs: `ce` (label_smoothing) or `focal` (gamma, alpha).
        classification_loss_weight, metric_loss_weight: total = w_ce * CE + w_metric * metric loss.
        metric_loss, metric_loss_kwargs: `supcon` (temperature), `triplet` (margin, distance) or
            `multi_similarity` (alpha, beta, base); see `hf_metric.losses.METRIC_LOSSES`.
        knn_fusion_weight, knn_fusion_k, knn_fusion_temperature: at inference, with a stored kNN reference
            (`set_knn_reference`), `logits` become log((1 - w) * softmax(head) + w * p_knn) (`hf_metric.knn_fusion`).
        knn_reference_size: rows of the stored reference (0: none); set by `set_knn_reference`.
        out_of_scope_label: the label returned for rejected rows.
        open_set_score, open_set_threshold: open-set rejection (`open_set_scores.py`): rows whose score (higher =
            in-scope) is below the threshold are out of scope. `None` (the default): no rejection.
        open_set_fusion_stats: per component of the `fused` score, the [mean, std] it is z-normalised with.
        open_set_energy_temperature: temperature of the `energy` score.
        open_set_mahalanobis: the model stores class means and a shared precision for the `mahalanobis` score
            (set by `set_open_set`).
        open_set_calibration: how the threshold was chosen (score, criterion, target, validation rows of each
            kind, the reason; `hf_metric.open_set.calibration.Calibration.summary`); informative only.
        class_group_ids, same_group_pair_margin: group index of each class (-1: none) and the extra cosine margin
            a target-margin head puts, in training, on the classes of the row's own group (0: off).
        gem_p: exponent of `gem` pooling.
        modality: `text`, `image` or `audio` (the input column the model was trained on; the model card and
            the pipelines read it).
        out_of_scope_negatives, outlier_exposure_weight: training with known out-of-scope rows (label id -1): they
            are negatives of every class in the metric loss, and get a uniform-target CE term of this weight
            (`objective.py`); off by default.
    """

    model_type = "hf_metric_classifier"
    if SubConfigSpec is not None:
        sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    else:
        sub_configs = {"encoder_config": AutoConfig}
    keys_to_ignore_at_inference = ["ce_loss", "metric_loss", "classifier_logits", "open_set_scores"]  # noqa: RUF012

    encoder_config: dict | PreTrainedConfig | None = None
    pooling: str = "mean"
    projection_dim: int | None = None
    classifier_dropout: float = 0.1
    head_type: str = "linear"
    head_kwargs: dict | None = None
    class_margins: list[float] | None = None
    classification_loss: str = "ce"
    classification_loss_kwargs: dict | None = None
    classification_loss_weight: float = 1.0
    metric_loss_weight: float = 1.0
    metric_loss: str = "supcon"
    metric_loss_kwargs: dict | None = None
    initializer_range: float = 0.02
    knn_fusion_weight: float = 0.0
    knn_fusion_k: int = 10
    knn_fusion_temperature: float = 0.05
    knn_reference_size: int = 0
    out_of_scope_label: str = "oos"
    open_set_score: str | None = None
    open_set_threshold: float | None = None
    open_set_fusion_stats: dict | None = None
    open_set_energy_temperature: float = 1.0
    open_set_mahalanobis: bool = False
    open_set_calibration: dict | None = None
    class_group_ids: list[int] | None = None
    same_group_pair_margin: float = 0.0
    gem_p: float = 3.0
    modality: str = "text"
    out_of_scope_negatives: bool = False
    outlier_exposure_weight: float = 0.0
    knn_index: dict | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if SubConfigSpec is None and not isinstance(self.encoder_config, PreTrainedConfig):
            encoder = dict(self.encoder_config or {})
            self.encoder_config = AutoConfig.for_model(encoder.pop("model_type", "bert"), **encoder)
        super().__post_init__(**kwargs)
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if not 0.0 <= self.knn_fusion_weight <= 1.0:
            raise ValueError(f"knn_fusion_weight must be in [0, 1], got {self.knn_fusion_weight}")
        if (self.open_set_score is None) != (self.open_set_threshold is None):
            raise ValueError("open_set_score and open_set_threshold are set together (both None: no rejection)")

    @property
    def embedding_dim(self) -> int:
        return self.projection_dim or self.hidden_size

    @property
    def hidden_size(self) -> int:
        """The pooled width: `hidden_size`, or the last stage's channels of a convolutional backbone."""
        encoder = self.encoder_config
        size = getattr(encoder, "hidden_size", None)
        if size is None and getattr(encoder, "hidden_sizes", None):
            size = encoder.hidden_sizes[-1]
        if size is None:
            raise ValueError(f"cannot tell the output width of a {encoder.model_type!r} backbone")
        return size
