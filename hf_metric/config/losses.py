"""The `loss:` section: which classification and metric losses train the model, their weights and settings.

    loss:
      classification: {type: ce, weight: 1.0, label_smoothing: 0.0}     # ce | focal | a registered loss
      metric: {type: supcon, weight: 0.2, temperature: 0.1}            # supcon | triplet | multi_similarity | ...

    total = classification.weight * classification loss + metric.weight * metric loss

Each part's keys besides `type` and `weight` are the chosen loss class's own keyword arguments, checked against
its constructor (`components.check_options`). The flat keys of older configs (`training.metric_loss_weight`,
`training.supcon_temperature`, ...) still work: `legacy_loss_keys` moves them here with a FutureWarning.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from .schema import check, deprecated


@dataclass
class _LossPart:
    type: str
    """The loss class by its registered name (`ce`, `focal`; `supcon`, `triplet`, `multi_similarity`; or a class
    registered with `hf_metric.register_*_loss`)."""
    weight: float
    """Weight of this part in the total loss (>= 0; the two weights must not both be 0)."""
    options: dict[str, Any] = field(default_factory=dict)

    PREFIX: ClassVar[str] = ""
    REGISTRY: ClassVar[str] = ""
    """Name of the registry in `hf_metric.model.losses` that holds this part's classes: the loader
    (`hf_metric.loading.check_components`) checks `type` and `options` against it."""

    def validate(self) -> None:
        check(self.weight >= 0, f"{self.PREFIX}weight", f"must be >= 0, got {self.weight}")


def _loss_part(part: str, default_type: str, default_weight: float, computed_on: str) -> type[_LossPart]:
    """The dataclass of `loss.<part>`: `_LossPart` with the part's default loss type and weight, its YAML prefix
    and its registry (`model.losses.<PART>_LOSSES`); the parts differ in nothing else."""
    cls = make_dataclass(
        f"{part.title()}LossPart",
        [("type", str, default_type), ("weight", float, default_weight)],
        bases=(_LossPart,),
        namespace={
            "__doc__": f"`loss.{part}`: {computed_on}.",
            "PREFIX": f"loss.{part}.",
            "REGISTRY": f"{part.upper()}_LOSSES",
        },
    )
    cls.__module__ = __name__
    return cls


PARTS: dict[str, tuple[str, float, str]] = {
    "classification": ("ce", 1.0, "over rows with classifier_mask = 1 and a real label, on the head's logits"),
    "metric": ("supcon", 0.2, "over rows with metric_mask = 1 and a real label, on the L2-normalised embeddings"),
}
"""loss part -> (default type, default weight, what it is computed on)."""

ClassificationLossPart, MetricLossPart = (_loss_part(part, *spec) for part, spec in PARTS.items())


@dataclass
class LossSection:
    """The losses: total = classification.weight x classification loss + metric.weight x metric loss."""

    classification: ClassificationLossPart = field(default_factory=ClassificationLossPart)
    metric: MetricLossPart = field(default_factory=MetricLossPart)

    def model_config(self) -> dict[str, Any]:
        """The `MetricClassifierConfig` fields that rebuild this objective inside a saved model."""
        out: dict[str, Any] = {}
        for name in PARTS:
            part = getattr(self, name)
            out.update(
                {f"{name}_loss": part.type, f"{name}_loss_kwargs": part.options, f"{name}_loss_weight": part.weight}
            )
        return out

    def validate(self) -> None:
        self.classification.validate()
        self.metric.validate()
        check(
            self.classification.weight > 0 or self.metric.weight > 0,
            "loss.metric.weight",
            "and loss.classification.weight are both 0: nothing to train",
        )


LEGACY_LOSS_KEYS: dict[str, tuple[str, str, str | None]] = {
    "classification_loss": ("classification", "type", None),
    "classification_loss_weight": ("classification", "weight", None),
    "label_smoothing": ("classification", "label_smoothing", "ce"),
    "focal_gamma": ("classification", "gamma", "focal"),
    "focal_alpha": ("classification", "alpha", "focal"),
    "metric_loss": ("metric", "type", None),
    "metric_loss_weight": ("metric", "weight", None),
    "supcon_temperature": ("metric", "temperature", "supcon"),
    "triplet_margin": ("metric", "margin", "triplet"),
    "ms_alpha": ("metric", "alpha", "multi_similarity"),
    "ms_beta": ("metric", "beta", "multi_similarity"),
    "ms_base": ("metric", "base", "multi_similarity"),
}
"""Old flat `training.<key>` -> (loss part, new key, the loss type it applied to; None: any)."""


def legacy_loss_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` (the parsed YAML) with the old flat loss keys of `training` moved into `loss`, each with a
    FutureWarning naming its new key. A key that applied only to another loss type (the old example config listed
    them all) is dropped, as the old code ignored it; a key given both ways is an error."""
    training = raw.get("training")
    if not isinstance(training, dict) or not any(k in training for k in LEGACY_LOSS_KEYS):
        return raw
    raw, training = dict(raw), dict(training)
    loss = raw.get("loss") if isinstance(raw.get("loss"), dict) else {}
    loss = {part: dict(loss.get(part) or {}) for part in PARTS} | {k: v for k, v in loss.items() if k not in PARTS}
    moved = {k: training.pop(k) for k in list(training) if k in LEGACY_LOSS_KEYS}
    for old, value in moved.items():
        part, new, applies_to = LEGACY_LOSS_KEYS[old]
        deprecated(f"training.{old}", f"loss.{part}.{new}")
        chosen = loss[part].get("type", moved.get(f"{part}_loss", PARTS[part][0]))
        if applies_to is not None and chosen != applies_to:
            if old == "label_smoothing" and value:
                raise ConfigError("training.label_smoothing: applies to classification_loss 'ce' only")
            continue
        if new in loss[part]:
            raise ConfigError(f"training.{old}: given together with loss.{part}.{new}; keep the new key")
        loss[part][new] = value
    raw["training"], raw["loss"] = training, loss
    return raw
