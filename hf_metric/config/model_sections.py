"""The sections of the YAML config that describe the model: pooling, projection, kNN fusion and its index, the
classification head. Defaults equal `MetricClassifierConfig`'s own (a test keeps them in step), so a trained
model's config and a bare one agree on every key the YAML does not set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError
from ..optional import available
from .schema import check as _check

INDEX_TYPES = ("exact", "ivf", "hnsw")


@dataclass
class KnnIndexSettings:
    """Which index answers kNN queries (YAML `model.knn_index`, stored in the model's config)."""

    type: Literal["exact", "ivf", "hnsw"] = "exact"
    """`exact` (chunked exact search), or a faiss `ivf` or `hnsw` index (extra `ann`) for references of at least
    `min_size` rows."""
    min_size: int = 100_000
    """References with fewer rows are searched exactly."""
    nlist: int | None = None
    """IVF: number of clusters (default 4 sqrt(N_ref))."""
    nprobe: int = 32
    """IVF: clusters searched per query (more: higher recall, slower)."""
    hnsw_m: int = 32
    """HNSW: links per node."""
    ef_construction: int = 80
    """HNSW: candidate list size while building the graph (more: a better graph, a slower build)."""
    ef_search: int = 128
    """HNSW: candidate list size at query time (more: higher recall, slower)."""

    def problem(self) -> str | None:
        """What is wrong with these settings ("field: reason"), or None."""
        if self.type not in INDEX_TYPES:
            return f"type: must be one of {INDEX_TYPES}, got {self.type!r}"
        for name in ("min_size", "nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                return f"{name}: must be >= 1, got {getattr(self, name)}"
        if self.nlist is not None and self.nlist < 1:
            return f"nlist: must be >= 1, got {self.nlist}"
        return None

    def validate(self) -> None:
        problem = self.problem()
        _check(problem is None, f"model.knn_index.{(problem or '').split(':')[0]}", (problem or "").split(": ", 1)[-1])
        if self.type != "exact" and not available("faiss"):
            raise ConfigError('model.knn_index.type: ivf and hnsw need faiss: pip install "hf_metric[ann]"')

    @classmethod
    def from_dict(cls, values: dict[str, Any] | KnnIndexSettings | None) -> KnnIndexSettings:
        settings = values if isinstance(values, KnnIndexSettings) else cls(**(values or {}))
        if (problem := settings.problem()) is not None:
            raise ValueError(f"knn_index.{problem}")
        return settings


@dataclass
class ModelSection:
    """How the backbone output becomes an embedding. The fields in `MODEL_CONFIG_FIELDS` go into the saved
    `MetricClassifierConfig` as they are."""

    pooling: Literal["mean", "cls", "pooler", "gem"] = "mean"
    """How token/frame states or feature maps become one vector: `mean`, `cls` (first token), `pooler` (the
    backbone's pooler output) or `gem` (generalised mean, for convolutional feature maps)."""
    projection_dim: int | None = None
    """Size of the projection MLP giving the metric embedding (null: the pooled output itself)."""
    classifier_dropout: float = 0.1
    """Dropout on the pooled output before the classification head."""
    knn_fusion_weight: float = 0.3
    """At inference, `logits` = log((1 - w) * softmax(head) + w * p_knn) with p_knn the vote of the k nearest
    stored training rows (0: off). Trained models fuse by default; a bare `MetricClassifierConfig` does not."""
    knn_fusion_k: int = 10
    """Neighbours in the kNN vote of the fusion."""
    knn_fusion_temperature: float = 0.05
    """Softmax temperature over the neighbours' cosine similarities in the fusion's vote."""
    knn_reference_max_rows: int = 100_000
    """Training rows whose embeddings are stored with the model for the fusion (a seeded subsample above this)."""
    gem_p: float = 3.0
    """Exponent of GeM pooling (`pooling: gem`, for convolutional feature maps): 1 is the mean, large p the max."""
    store_knn_reference: bool = True
    """Store training rows' embeddings in the weights for kNN fusion; false drops them (and the fusion) so that
    a shared model holds nothing derived from individual training rows."""

    knn_index: KnnIndexSettings | None = None
    """Approximate search (faiss IVF/HNSW, the `ann` extra) for kNN references from `min_size` rows on."""

    MODEL_CONFIG_FIELDS = (
        "pooling",
        "projection_dim",
        "classifier_dropout",
        "knn_fusion_weight",
        "knn_fusion_k",
        "knn_fusion_temperature",
        "gem_p",
    )
    """The keys that `MetricClassifierConfig` takes as they are (the others shape what `run` stores)."""

    def model_config(self) -> dict[str, Any]:
        """The `MetricClassifierConfig` fields this section sets."""
        return {name: getattr(self, name) for name in self.MODEL_CONFIG_FIELDS}

    def validate(self) -> None:
        _check(self.projection_dim is None or self.projection_dim > 0, "model.projection_dim", "must be > 0")
        _check(0.0 <= self.classifier_dropout < 1.0, "model.classifier_dropout", "must be in [0, 1)")
        _check(0.0 <= self.knn_fusion_weight <= 1.0, "model.knn_fusion_weight", "must be in [0, 1]")
        _check(self.knn_fusion_k >= 1, "model.knn_fusion_k", "must be >= 1")
        _check(self.knn_fusion_temperature > 0, "model.knn_fusion_temperature", "must be > 0")
        _check(self.knn_reference_max_rows >= 1, "model.knn_reference_max_rows", "must be >= 1")
        _check(self.gem_p > 0, "model.gem_p", "must be > 0")
        if self.knn_index is not None:
            self.knn_index.validate()


@dataclass
class GroupMarginSection:
    """Per-class margins from the data's `group` column: classes sharing a group get the larger `same`."""

    same: float = 0.7
    """Margin of a class that shares its group with other classes (the confusable ones)."""
    default: float = 0.5
    """Margin of a class alone in its group, or without a group."""
    same_group_pair: float = 0.0
    """Pair-wise: an extra cosine margin against the classes of the row's own group (0: off)."""

    def validate(self) -> None:
        _check(self.same >= 0 and self.default >= 0, "head.group_margin", "margins must be >= 0")
        _check(0 <= self.same_group_pair < 1, "head.group_margin.same_group_pair", "must be in [0, 1)")


MARGIN_HEADS = ("arcface", "subcenter_arcface", "cosface", "circle")
SCALED_HEADS = ("cosine", *MARGIN_HEADS)
PAIR_MARGIN_HEADS = ("arcface", "subcenter_arcface", "cosface")


@dataclass
class HeadSection:
    """The classification head. `null` keeps the head's own default (see hf_metric.heads.HEADS)."""

    type: str = "cosine"
    """The head by its registered name: `linear`, `cosine`, `arcface`, `subcenter_arcface`, `cosface`, `circle`, or
    one registered with `hf_metric.register_head`."""
    scale: float | None = None
    """Logit scale s of the cosine and margin heads (circle: its gamma); null keeps the head's default."""
    margin: float | None = None
    """Margin of the margin heads: radians for arcface/subcenter_arcface, a cosine for cosface, m for circle; null
    keeps the head's default."""
    easy_margin: bool = False
    """arcface/subcenter_arcface: apply the margin only where cos(theta) > 0."""
    sub_centers: int | None = None
    """Sub-centres per class (subcenter_arcface defaults to 3, the other cosine heads to 1); null keeps the head's
    default."""
    temperature: float = 1.0
    """The logits are divided by it before the softmax (> 1 softens the predictions)."""
    group_margin: GroupMarginSection | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of a head registered with `hf_metric.register_head`, given as keys of `head:`."""

    def validate(self) -> None:
        # the head type and its `options` are checked against the head registry by the loader
        # (`hf_metric.loading.check_components`): this package knows no classes
        _check(self.temperature > 0, "head.temperature", "must be > 0")
        _check(self.scale is None or self.scale > 0, "head.scale", "must be > 0")
        _check(self.sub_centers is None or self.sub_centers >= 1, "head.sub_centers", "must be >= 1")
        for key, allowed in (("scale", SCALED_HEADS), ("margin", MARGIN_HEADS), ("sub_centers", SCALED_HEADS)):
            _check(
                getattr(self, key) is None or self.type in allowed,
                f"head.{key}",
                f"has no meaning for head.type {self.type!r} (used by: {', '.join(allowed)})",
            )
        _check(
            not self.easy_margin or self.type in ("arcface", "subcenter_arcface"),
            "head.easy_margin",
            "applies to arcface and subcenter_arcface only",
        )
        if self.group_margin is not None:
            _check(self.type in MARGIN_HEADS, "head.group_margin", f"needs a margin head ({', '.join(MARGIN_HEADS)})")
            self.group_margin.validate()
            _check(
                not self.group_margin.same_group_pair or self.type in PAIR_MARGIN_HEADS,
                "head.group_margin.same_group_pair",
                f"needs a target-margin head ({', '.join(PAIR_MARGIN_HEADS)})",
            )

    def head_kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the chosen head (circle calls its scale `gamma` and its margin `m`)."""
        kwargs: dict[str, Any] = {"temperature": self.temperature}
        names = {"scale": "gamma", "margin": "m"} if self.type == "circle" else {}
        for key in ("scale", "margin", "sub_centers"):
            if getattr(self, key) is not None:
                kwargs[names.get(key, key)] = getattr(self, key)
        if self.easy_margin:
            kwargs["easy_margin"] = True
        return {**kwargs, **self.options}
