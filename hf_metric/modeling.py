"""`MetricClassifierModel`: a transformers encoder that returns class logits and a metric embedding.

    text -> AutoModel backbone -> pooling (mean | cls | pooler) -> pooled
    pooled -> dropout -> head -> logits                    (cross-entropy, rows with classifier_mask = 1)
    pooled -> [projection MLP] -> L2 normalize -> embeddings  (metric loss, rows with metric_mask = 1)

The classifier sees the raw pooled output; the metric loss sees the normalized embedding, optionally through
a projection (as in SupCon/SimCLR) so that the two objectives do not fight over one space.

`save_pretrained` copies this file and the files it imports relatively (`heads.py`, `losses.py`, and for kNN
fusion `knn_fusion.py` with `neighbors.py`) next to the weights and records them in the config's `auto_map`, so
a saved folder loads with `from_pretrained(path, trust_remote_code=True)` where hf_metric is not installed.
Keep the relative imports to these small, self-contained files: anything imported relatively is copied too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from .heads import CosineLinear, build_head
from .losses import build_classification_loss, build_metric_loss, masked_mean

POOLING_MODES = ("mean", "cls", "pooler")


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
    """

    model_type = "hf_metric_classifier"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}  # noqa: RUF012
    keys_to_ignore_at_inference = ["ce_loss", "metric_loss", "classifier_logits"]  # noqa: RUF012

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

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {POOLING_MODES}, got {self.pooling!r}")
        if not 0.0 <= self.knn_fusion_weight <= 1.0:
            raise ValueError(f"knn_fusion_weight must be in [0, 1], got {self.knn_fusion_weight}")

    @property
    def embedding_dim(self) -> int:
        return self.projection_dim or self.hidden_size

    @property
    def hidden_size(self) -> int:
        return self.encoder_config.hidden_size


@dataclass
class MetricClassifierOutput(ModelOutput):
    """Output of `MetricClassifierModel`.

    Args:
        loss: weighted total, given labels.
        logits: class scores, `(batch, num_labels)`.
        embeddings: L2-normalized metric embeddings, `(batch, dim)`.
        ce_loss: the classification part (mean over rows with classifier_mask = 1).
        metric_loss: the metric-learning part (mean over anchors with metric_mask = 1 and a positive).
        classifier_logits: the head's own logits, when `logits` hold the kNN-fused log-probabilities.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    metric_loss: torch.FloatTensor | None = None
    classifier_logits: torch.FloatTensor | None = None


def _load_encoder(config: PreTrainedConfig | str, pooling: str, **kwargs: Any) -> PreTrainedModel:
    """Build (from a config) or load (from a name/path) the backbone, without a pooler it would not train."""
    load = AutoModel.from_config if isinstance(config, PreTrainedConfig) else AutoModel.from_pretrained
    if pooling != "pooler":
        try:
            return load(config, add_pooling_layer=False, **kwargs)
        except TypeError:  # backbones without an optional pooler
            pass
    return load(config, **kwargs)


AUTO_CLASSES = ("AutoModel", "AutoModelForSequenceClassification")
"""Auto factories that load the saved folder as remote code; the same class serves all of them."""


class MetricClassifierPreTrainedModel(PreTrainedModel):
    config_class = MetricClassifierConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    # The Trainer must not pass `num_items_in_batch` nor assume the loss is pre-scaled for accumulation.
    accepts_loss_kwargs = False
    _keys_to_ignore_on_load_missing = [r"knn_reference_"]  # noqa: RUF012  (checkpoints saved without a reference)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, CosineLinear):  # margin heads own a raw weight matrix with their own init
            module.reset_parameters()
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """As `PreTrainedModel.save_pretrained`, with every class of `AUTO_CLASSES` in the config's `auto_map`:
        `register_for_auto_class` records only one Auto class per model class."""
        name = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **dict.fromkeys(AUTO_CLASSES, name)}
        super().save_pretrained(save_directory, *args, **kwargs)


class MetricClassifierModel(MetricClassifierPreTrainedModel):
    """Encoder + pooling + classification head + normalized metric embedding, trained with CE + SupCon."""

    def __init__(self, config: MetricClassifierConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        self.backbone = backbone if backbone is not None else _load_encoder(config.encoder_config, config.pooling)
        hidden = config.hidden_size
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.head = build_head(config.head_type, hidden, config.num_labels, **(config.head_kwargs or {}))
        self.projection = (
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, config.projection_dim))
            if config.projection_dim
            else None
        )
        self.classification_loss_fn = build_classification_loss(
            config.classification_loss, **(config.classification_loss_kwargs or {})
        )
        self.metric_loss_fn = build_metric_loss(config.metric_loss, **(config.metric_loss_kwargs or {}))
        if config.class_margins is not None:
            self.register_buffer("class_margins", torch.tensor(config.class_margins), persistent=False)
        else:
            self.class_margins = None
        self._register_knn_reference(config.knn_reference_size)
        self.post_init()

    def _register_knn_reference(self, rows: int) -> None:
        """Buffers (saved in safetensors with the weights) for the kNN-fusion reference rows."""
        self.register_buffer("knn_reference_embeddings", torch.zeros(rows, self.config.embedding_dim))
        self.register_buffer("knn_reference_labels", torch.zeros(rows, dtype=torch.long))

    def set_knn_reference(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Store labelled embeddings (this model's, e.g. of the training rows) for kNN fusion at inference;
        they are saved with the model. `knn_fusion_weight` must be > 0 for them to be used."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.config.embedding_dim:
            raise ValueError(f"expected (N, {self.config.embedding_dim}) embeddings, got {tuple(embeddings.shape)}")
        if labels.shape != (embeddings.shape[0],) or (
            labels.numel() and not 0 <= labels.min() <= labels.max() < self.config.num_labels
        ):
            raise ValueError(f"labels must be {embeddings.shape[0]} class ids in [0, {self.config.num_labels})")
        device = self.knn_reference_embeddings.device
        self.config.knn_reference_size = embeddings.shape[0]
        self._register_knn_reference(embeddings.shape[0])
        self.knn_reference_embeddings.copy_(F.normalize(embeddings.float(), dim=-1))
        self.knn_reference_labels.copy_(labels.long())
        self.to(device)

    def _fused_logits(self, logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        from .knn_fusion import fuse_probabilities, knn_class_probabilities

        p_knn = knn_class_probabilities(
            embeddings.detach(),
            self.knn_reference_embeddings,
            self.knn_reference_labels,
            self.config.num_labels,
            self.config.knn_fusion_k,
            self.config.knn_fusion_temperature,
        )
        return fuse_probabilities(logits, p_knn, self.config.knn_fusion_weight).clamp_min(1e-12).log()

    @classmethod
    def from_backbone(
        cls,
        model_name_or_path: str,
        id2label: dict[int, str],
        attn_implementation: str | None = None,
        **config_kwargs: Any,
    ) -> MetricClassifierModel:
        """A new model on a pretrained backbone; head and projection start from `_init_weights`."""
        pooling = config_kwargs.get("pooling", "mean")
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        backbone = _load_encoder(model_name_or_path, pooling, **kwargs)
        attention = backbone.config._attn_implementation
        config = MetricClassifierConfig(
            encoder_config=backbone.config,
            id2label=dict(id2label),
            label2id={name: i for i, name in id2label.items()},
            **config_kwargs,
        )
        # Building the composite config resets its sub-config's attention to None, and a backbone without one
        # treats padding differently from the same weights loaded back with `from_pretrained`.
        config.encoder_config._attn_implementation = attention
        return cls(config, backbone=backbone)

    def pool(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooler_output=None):
        if self.config.pooling == "cls":
            return hidden_states[:, 0]
        if self.config.pooling == "pooler":
            if pooler_output is None:
                raise ValueError("pooling='pooler' but the backbone returns no pooler_output")
            return pooler_output
        if attention_mask is None:
            return hidden_states.mean(dim=1)
        weights = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        metric_mask: torch.Tensor | None = None,
        classifier_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> MetricClassifierOutput | tuple:
        """Without `labels` it returns logits and embeddings; with them, also the loss and its two parts."""
        encoder_kwargs = {"attention_mask": attention_mask, "position_ids": position_ids}
        if token_type_ids is not None:
            encoder_kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(input_ids=input_ids, inputs_embeds=inputs_embeds, return_dict=True, **encoder_kwargs)
        pooled = self.pool(out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None))
        head_labels = labels if self.training else None
        margin = None
        if head_labels is not None and self.class_margins is not None:
            margin = self.class_margins.to(pooled.device)[head_labels.clamp(min=0)]
        logits = self.head(self.dropout(pooled), head_labels, **({"margin": margin} if margin is not None else {}))
        projected = self.projection(pooled) if self.projection is not None else pooled
        embeddings = F.normalize(projected.float(), dim=-1)
        classifier_logits = None
        if not self.training and self.config.knn_fusion_weight > 0 and self.config.knn_reference_size > 0:
            classifier_logits, logits = logits, self._fused_logits(logits, embeddings)

        loss = ce_loss = metric_loss = None
        if labels is not None:
            zero = logits.new_zeros((), dtype=torch.float32)
            ce_loss = metric_loss = zero
            if self.config.classification_loss_weight > 0:
                ce_loss = masked_mean(*self.classification_loss_fn.per_row(logits, labels, classifier_mask))
            if self.config.metric_loss_weight > 0:
                metric_loss = masked_mean(*self.metric_loss_fn.per_anchor(embeddings, labels, metric_mask))
            loss = self.config.classification_loss_weight * ce_loss + self.config.metric_loss_weight * metric_loss

        output = MetricClassifierOutput(
            loss=loss,
            logits=logits,
            embeddings=embeddings,
            ce_loss=ce_loss,
            metric_loss=metric_loss,
            classifier_logits=classifier_logits,
        )
        return output if return_dict is not False else output.to_tuple()


# Saved folders carry this code (see the module docstring); `hf_metric/__init__` registers the local classes.
MetricClassifierConfig.register_for_auto_class()
MetricClassifierModel.register_for_auto_class("AutoModelForSequenceClassification")
