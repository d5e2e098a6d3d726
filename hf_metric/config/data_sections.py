"""The `data:` section of the YAML config: where the rows come from (files, shards, a `datasets` source), which
columns hold what, the validation set, per-class resampling and media settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from .media import AudioAugmentSection, ImageAugmentSection
from .schema import check as _check

COLUMN_ROLES = ("text", "image", "audio", "label", "group", "metric_mask", "classifier_mask")
"""The column names hf_metric reads; `data.columns` maps the user's own names to them."""


@dataclass
class DatasetSection:
    """Rows from `datasets.load_dataset` (or a `save_to_disk` folder) instead of `data.parquet_path`."""

    path: str = ""
    """A local folder (`save_to_disk` output, or Parquet/CSV/JSON files), one such file, or a Hub name (online)."""
    name: str | None = None
    """The data set's configuration name (`load_dataset(path, name)`), if it has several."""
    split: str = "train"
    """The split that trains."""
    val_split: str | None = None
    """A split that validates as it is (replaces `data.val_ratio`), e.g. `validation`; null: split by val_ratio."""
    revision: str | None = None
    """A Hub revision (branch, tag or commit) to pin the data to."""

    def validate(self) -> None:
        _check(bool(self.path), "data.dataset.path", "is required")
        _check(bool(self.split), "data.dataset.split", "must be a split name")
        _check(self.val_split != self.split, "data.dataset.val_split", f"must differ from split ({self.split!r})")


@dataclass
class DataSection:
    """The training data: its source (files, shards or a `datasets` source), the validation set, per-class
    resampling and media settings."""

    parquet_path: str | list[str] = ""
    """Training rows: a Parquet file, a folder of Parquet shards, a glob (`data/train-*.parquet`) or a list of
    them; CSV (`.csv`) and JSON Lines (`.jsonl`, `.json`) files are read too. Shards are read in sorted order and
    must share one schema; they give the same prepared data as the same rows in one file."""
    val_path: str | list[str] | None = None
    """Validation rows in the same forms as `parquet_path`, used as they are instead of splitting `val_ratio` off
    the training rows (folds by date or by site). Labels are matched by name with training's; a label unknown to
    training is an error, except `out_of_scope_label`."""
    dataset: DatasetSection | None = None
    """A `datasets` source (`path`, `name`, `split`, `val_split`, `revision`) instead of `parquet_path`."""
    columns: dict[str, str] | None = None
    """The user's column names for the ones hf_metric reads, e.g. `{text: utterance, label: intent}`; keys among
    text, image, audio, label, group, metric_mask, classifier_mask."""
    val_ratio: float = 0.1
    """Share of each class held out for validation (seeded) when no `val_path` / `dataset.val_split` is given."""
    num_workers: int = 0
    """DataLoader worker processes that decode image/audio batches (0: in the training process)."""
    upsample: int | None = None
    """Draw every class up to at least this many training rows (with replacement); null: as they are."""
    downsample: int | None = None
    """Cut every class down to at most this many training rows (seeded); null: as they are."""
    out_of_scope_label: str | None = None
    """Rows with this label belong to no class: they only validate (open-set calibration and metrics)."""
    max_audio_seconds: float = 10.0
    """Audio clips are cut (or padded with silence) to this length after resampling to the extractor's rate."""
    skip_bad_rows: bool = False
    """An image/audio row that cannot be read is skipped and counted (log, data summary) instead of stopping."""
    image_augment: ImageAugmentSection = field(default_factory=ImageAugmentSection)
    audio_augment: AudioAugmentSection = field(default_factory=AudioAugmentSection)
    validate_on_train: bool = False
    """Hold out no rows (`val_ratio` is ignored): for few-shot data, and for the final refit on every row once the
    settings were chosen on a held-out split (Banking77: +0.3 test accuracy). Validation then re-scores the training
    rows, so it measures fit, not generalisation (pair it with `checkpointing.save_best_by: loss`)."""

    def validate(self) -> None:
        _check(self.max_audio_seconds > 0, "data.max_audio_seconds", "must be > 0")
        self.image_augment.validate()
        self.audio_augment.validate()
        _check(
            bool(self.parquet_path) or self.dataset is not None,
            "data.parquet_path",
            "is required (or data.dataset)",
        )
        _check(
            not (self.parquet_path and self.dataset is not None),
            "data.dataset",
            "is given together with data.parquet_path; keep one",
        )
        self._validate_sources()
        _check(self.out_of_scope_label != "", "data.out_of_scope_label", "must be a non-empty label or null")
        _check(0.0 < self.val_ratio < 1.0, "data.val_ratio", f"must be in (0, 1), got {self.val_ratio}")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _check(self.upsample is None or self.upsample > 0, "data.upsample", "must be > 0 or null")
        _check(self.downsample is None or self.downsample > 0, "data.downsample", "must be > 0 or null")
        if self.upsample is not None and self.downsample is not None:
            _check(
                self.upsample <= self.downsample,
                "data.upsample",
                f"({self.upsample}) must not exceed data.downsample ({self.downsample})",
            )

    def _validate_sources(self) -> None:
        if self.dataset is not None:
            self.dataset.validate()
            _check(
                not (self.val_path and self.dataset.val_split),
                "data.val_path",
                "is given together with data.dataset.val_split; keep one",
            )
        for key in ("parquet_path", "val_path"):
            value = getattr(self, key)
            if isinstance(value, list):
                _check(bool(value) and all(value), f"data.{key}", "must be a non-empty list of paths")
        explicit_val = bool(self.val_path) or (self.dataset is not None and bool(self.dataset.val_split))
        _check(
            not (explicit_val and self.validate_on_train),
            "data.validate_on_train",
            "cannot be combined with data.val_path / data.dataset.val_split",
        )
        for role, name in (self.columns or {}).items():
            _check(role in COLUMN_ROLES, f"data.columns.{role}", f"unknown column; one of {list(COLUMN_ROLES)}")
            _check(isinstance(name, str) and bool(name), f"data.columns.{role}", "must be a column name")
        names = list((self.columns or {}).values())
        twice = sorted({n for n in names if names.count(n) > 1})
        _check(not twice, "data.columns", f"column {twice[0]!r} is mapped twice" if twice else "")
