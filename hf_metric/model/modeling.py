"""`MetricClassifierModel`: a transformers encoder that returns class logits and a metric embedding.

    text | image | audio -> AutoModel backbone -> pooling (mean | cls | pooler | gem) -> pooled
    pooled -> dropout -> head -> logits                    (cross-entropy, rows with classifier_mask = 1)
    pooled -> [projection MLP] -> L2 normalize -> embeddings  (metric loss, rows with metric_mask = 1)

The classifier sees the raw pooled output; the metric loss sees the normalized embedding, optionally through
a projection (as in SupCon/SimCLR) so that the two objectives do not fight over one space.

`save_pretrained` copies this file and the files it imports relatively (every module of `hf_metric/model/`:
configuration, pooling, heads, losses, objective, precision, registry, for kNN fusion `knn_fusion.py` with
`neighbors.py`, and for open-set rejection `open_set_scores.py`) next to the weights and records them in the
config's `auto_map`, so a saved folder loads with `from_pretrained(path, trust_remote_code=True)` where
hf_metric is not installed. Keep the relative imports to this folder's small, self-contained files: anything
imported relatively is copied too.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration import MetricClassifierConfig
from .heads import CosineLinear, build_head
from .objective import TrainingObjective
from .pooling import pool
from .precision import no_autocast

logger = logging.getLogger(__name__)


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
        open_set_scores: `(batch,)` the configured open-set score (higher = in-scope), at inference when the
            model has a rejection threshold (`set_open_set`); rows below `config.open_set_threshold` are out of
            scope.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    ce_loss: torch.FloatTensor | None = None
    metric_loss: torch.FloatTensor | None = None
    classifier_logits: torch.FloatTensor | None = None
    open_set_scores: torch.FloatTensor | None = None


def _load_encoder(config: PreTrainedConfig | str, pooling: str, **kwargs: Any) -> PreTrainedModel:
    """Build (from a config) or load (from a name/path) the backbone, without a pooler it would not train."""
    load = AutoModel.from_config if isinstance(config, PreTrainedConfig) else AutoModel.from_pretrained
    if pooling != "pooler":
        try:
            return load(config, add_pooling_layer=False, **kwargs)
        except TypeError:  # backbones without an optional pooler
            pass
    return load(config, **kwargs)


def spectrogram_as_image(inputs: dict[str, torch.Tensor], main_input: str) -> dict[str, torch.Tensor]:
    """A vision backbone (ResNet, ConvNeXt ...) fed audio features: `(batch, frames, mel_bins)` log-mel filter
    banks (the AST extractor's `input_values`) become a one-channel image `(batch, 1, mel_bins, frames)`, so a
    CNN, the usual choice for sound classification from little data, trains on them; other inputs unchanged."""
    if main_input != "pixel_values" or "pixel_values" in inputs:
        return inputs
    key = next((k for k in ("input_values", "input_features") if k in inputs), None)
    if key is None or inputs[key].ndim != 3:
        return inputs
    out = {k: v for k, v in inputs.items() if k not in (key, "attention_mask")}
    out["pixel_values"] = inputs[key].transpose(1, 2).unsqueeze(1)
    return out


AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForSequenceClassification",
    "AutoModelForImageClassification",
    "AutoModelForAudioClassification",
)
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
        self.objective = _build_objective(config)
        if config.class_margins is not None:
            self.register_buffer("class_margins", torch.tensor(config.class_margins), persistent=False)
        else:
            self.class_margins = None
        if config.class_group_ids is not None and config.same_group_pair_margin > 0:
            self.register_buffer("class_group_ids", torch.tensor(config.class_group_ids), persistent=False)
        else:
            self.class_group_ids = None
        self._register_knn_reference(config.knn_reference_size)
        self._register_open_set_statistics(config.open_set_mahalanobis)
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

    def _register_open_set_statistics(self, mahalanobis: bool) -> None:
        """Buffers (saved with the weights) for the Mahalanobis score: class means and the shared precision."""
        classes, dim = (self.config.num_labels, self.config.embedding_dim) if mahalanobis else (0, 0)
        self.register_buffer("open_set_means", torch.zeros(classes, dim))
        self.register_buffer("open_set_precision", torch.zeros(dim, dim))

    def set_open_set(
        self,
        score: str | None,
        threshold: float | None,
        fusion_stats: dict[str, list[float]] | None = None,
        means: torch.Tensor | None = None,
        precision: torch.Tensor | None = None,
    ) -> None:
        """Reject rows whose `score` (see `open_set_scores.py`) is below `threshold` at inference; `None` for
        both removes the rejection. The Mahalanobis score needs `means` and `precision` (`fit_mahalanobis`),
        the kNN score a stored kNN reference, the fused score its `fusion_stats`."""
        from .open_set_scores import components

        if (score is None) != (threshold is None):
            raise ValueError("score and threshold are set together (both None: no rejection)")
        needed = components(score, fusion_stats) if score is not None else ()
        if "knn" in needed and self.config.knn_reference_size == 0:
            raise ValueError("the kNN open-set score needs a stored kNN reference (call set_knn_reference first)")
        mahalanobis = "mahalanobis" in needed
        if mahalanobis and (means is None or precision is None):
            raise ValueError("the Mahalanobis open-set score needs class means and a precision matrix")
        device = self.open_set_means.device
        self._register_open_set_statistics(mahalanobis)
        if mahalanobis:
            self.open_set_means.copy_(means)
            self.open_set_precision.copy_(precision)
        self.to(device)
        self.config.open_set_mahalanobis = mahalanobis
        self.config.open_set_score = score
        self.config.open_set_threshold = None if threshold is None else float(threshold)
        self.config.open_set_fusion_stats = dict(fusion_stats) if score == "fused" else None
        self.config.open_set_calibration = None  # a calibration records its choice after setting the rule

    def open_set_scores(self, logits: torch.Tensor, head_logits: torch.Tensor, embeddings: torch.Tensor):
        """(batch,) the configured open-set score: msp from `logits` (the prediction, kNN-fused or not),
        energy from the head's own logits, knn / mahalanobis from the embeddings."""
        from .open_set_scores import base_scores, components, fuse, max_softmax

        c = self.config
        needed = components(c.open_set_score, c.open_set_fusion_stats)
        scores = base_scores(
            head_logits,
            embeddings,
            self.knn_reference_embeddings if "knn" in needed else None,
            self.open_set_means if c.open_set_mahalanobis else None,
            self.open_set_precision if c.open_set_mahalanobis else None,
            names=needed,
            energy_temperature=c.open_set_energy_temperature,
        )
        if "msp" in needed:
            scores["msp"] = max_softmax(logits)
        out = fuse(scores, c.open_set_fusion_stats) if c.open_set_score == "fused" else scores[c.open_set_score]
        return out.to(logits.device)

    def _fused_logits(self, logits: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        from .knn_fusion import fused_log_probabilities, knn_class_probabilities

        p_knn = knn_class_probabilities(
            embeddings.detach(),
            self.knn_reference_embeddings,
            self.knn_reference_labels,
            self.config.num_labels,
            self.config.knn_fusion_k,
            self.config.knn_fusion_temperature,
        )
        return fused_log_probabilities(logits, p_knn, self.config.knn_fusion_weight)

    def _same_group_margin(self, labels: torch.Tensor) -> torch.Tensor:
        """`(batch, num_labels)`: the pair margin on the classes of each row's group (the target is the head's)."""
        groups = self.class_group_ids.to(labels.device)
        row_group = groups[labels.clamp(min=0)]
        same = (row_group[:, None] == groups[None, :]) & (groups[None, :] >= 0)
        return same.float() * self.config.same_group_pair_margin

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
        return cls._on_backbone(backbone, id2label, config_kwargs)

    @classmethod
    def from_scratch(cls, model_config: dict[str, Any], id2label: dict[int, str], **config_kwargs: Any):
        """A new model on a randomly initialised backbone built from `model_config` (a transformers config as a
        mapping with its `model_type`), for training from scratch where no pretrained weights can be had."""
        from transformers import AutoConfig

        settings = dict(model_config)
        encoder_config = AutoConfig.for_model(settings.pop("model_type"), **settings)
        backbone = _load_encoder(encoder_config, config_kwargs.get("pooling", "mean"))
        return cls._on_backbone(backbone, id2label, config_kwargs)

    @classmethod
    def _on_backbone(cls, backbone: PreTrainedModel, id2label: dict[int, str], config_kwargs: dict[str, Any]):
        """The model around a built backbone, with its label mapping and settings."""
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

    def _encode(self, inputs: dict[str, torch.Tensor | None], attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The pooled backbone output; the backbone receives only the inputs given (text, pixels or audio)."""
        given = {k: v for k, v in inputs.items() if v is not None}
        given = spectrogram_as_image(given, self.backbone.main_input_name)
        out = self.backbone(**given, return_dict=True)
        hidden = out.last_hidden_state
        mask = attention_mask
        if hidden.ndim != 3:  # a feature map: every position counts
            mask = None
        elif mask is not None and mask.shape[1] != hidden.shape[1]:
            # audio: a mask over samples -> a mask over the encoder's frames (Wav2Vec2 and kin)
            to_frames = getattr(self.backbone, "_get_feature_vector_attention_mask", None)
            mask = to_frames(hidden.shape[1], mask) if to_frames is not None else None
        pooler_output = getattr(out, "pooler_output", None)
        return pool(self.config.pooling, hidden, mask, pooler_output, self.config.gem_p)

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
        return_loss: bool | None = None,
        return_dict: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        input_values: torch.Tensor | None = None,
        input_features: torch.Tensor | None = None,
    ) -> MetricClassifierOutput | tuple:
        """Without `labels` it returns logits and embeddings; with them, also the loss and its two parts (from
        `self.objective`). `return_loss=False` skips the loss but still gives margin heads their labels: the
        trainer then calls the objective itself, normalised over the whole accumulation window. Text comes as
        `input_ids`, images as `pixel_values`, audio as `input_values` (or `input_features`), as each
        backbone's processor names them."""
        inputs = {
            "input_ids": input_ids,
            "inputs_embeds": inputs_embeds,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "position_ids": position_ids,
            "pixel_values": pixel_values,
            "input_values": input_values,
            "input_features": input_features,
        }
        pooled = self._encode(inputs, attention_mask)
        head_labels = labels if self.training else None
        margin = None
        if head_labels is not None and self.class_margins is not None:
            margin = self.class_margins.to(pooled.device)[head_labels.clamp(min=0)]
        head_kwargs = {"margin": margin} if margin is not None else {}
        if head_labels is not None and self.class_group_ids is not None:
            head_kwargs["negative_margin"] = self._same_group_margin(head_labels)
        logits = self.head(self.dropout(pooled), head_labels, **head_kwargs)
        projected = self.projection(pooled) if self.projection is not None else pooled
        with no_autocast(projected.device):
            embeddings = F.normalize(projected.float(), dim=-1)
        classifier_logits = None
        if not self.training and self.config.knn_fusion_weight > 0 and self.config.knn_reference_size > 0:
            classifier_logits, logits = logits, self._fused_logits(logits, embeddings)
        open_set_scores = None
        if not self.training and self.config.open_set_threshold is not None:
            head_logits = classifier_logits if classifier_logits is not None else logits
            open_set_scores = self.open_set_scores(logits.detach(), head_logits.detach(), embeddings.detach())

        loss = ce_loss = metric_loss = None
        if labels is not None and return_loss is not False:
            if self.objective is None:
                raise ValueError(
                    f"no training objective: loss {self.config.metric_loss!r} or {self.config.classification_loss!r}"
                    " is not registered in this process (import the module that registers it)"
                )
            parts = self.objective(logits, embeddings, labels, classifier_mask, metric_mask)
            loss, ce_loss, metric_loss = parts.loss, parts.classification, parts.metric

        output = MetricClassifierOutput(
            loss=loss,
            logits=logits,
            embeddings=embeddings,
            ce_loss=ce_loss,
            metric_loss=metric_loss,
            classifier_logits=classifier_logits,
            open_set_scores=open_set_scores,
        )
        return output if return_dict is not False else output.to_tuple()


def _build_objective(config: MetricClassifierConfig) -> TrainingObjective | None:
    """The training objective, or None (inference only) when a loss was registered by code not loaded here."""
    try:
        return TrainingObjective.from_config(config)
    except ValueError as err:
        if "unknown" not in str(err):
            raise
        logger.warning("this model predicts, but cannot compute its training loss: %s", err)
        return None


# Saved folders carry this code (see the module docstring); `hf_metric/__init__` registers the local classes.
MetricClassifierConfig.register_for_auto_class()
MetricClassifierModel.register_for_auto_class("AutoModelForSequenceClassification")
