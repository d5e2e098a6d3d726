"""Featurizers: rows of the input column -> the backbone's inputs, chosen from the backbone's own processor.

A featurizer owns the processor that is saved beside the model (so pipelines work), turns a dataset's input
column into model inputs, and gives the collator that pads a batch. Text uses the backbone's tokenizer (and is
tokenized once, cached); images and audio use the image processor / feature extractor and are decoded lazily
(`featurize_media`). One featurizer per modality joins `FEATURIZERS` (keyed by the Parquet input column).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .featurize_media import AudioFeaturizer, FeaturizerSettings, ImageFeaturizer
from .media import AUDIO_COLUMN, IMAGE_COLUMN
from .parquet import TEXT_COLUMN


class TextFeaturizer:
    """The backbone's tokenizer: truncation to `max_length`, padding left to the collator (per batch)."""

    input_column = TEXT_COLUMN
    source = ""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.processor = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, model_path: str, max_length: int) -> TextFeaturizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model_path), max_length)

    @classmethod
    def from_settings(cls, model_path: str | None, settings: FeaturizerSettings) -> TextFeaturizer:
        if model_path is None:
            raise ConfigError("model_config: a from-scratch text backbone has no tokenizer; give model_name instead")
        return cls.from_pretrained(model_path, settings.max_length)

    def prepare(self, dataset: Any, train: bool) -> Any:
        """Tokenize once with `datasets.map` (cached on disk); text has no training augmentation."""

        def encode(batch: dict[str, list]) -> dict[str, list]:
            return self.processor(batch[TEXT_COLUMN], truncation=True, max_length=self.max_length)

        return dataset.map(encode, batched=True, remove_columns=[TEXT_COLUMN], desc="Tokenizing")

    def collator(self) -> Any:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.processor)

    def encode(self, values: list[Any], return_tensors: str = "np") -> dict[str, Any]:
        """One padded inference batch from raw column values (prediction streams batches, no `datasets`)."""
        return dict(
            self.processor(
                values, truncation=True, max_length=self.max_length, padding=True, return_tensors=return_tensors
            )
        )


FEATURIZERS = {TEXT_COLUMN: TextFeaturizer, IMAGE_COLUMN: ImageFeaturizer, AUDIO_COLUMN: AudioFeaturizer}
"""Input column -> featurizer class (each with `from_settings`, `prepare`, `collator` and `processor`)."""


def featurizer_for(
    model_path: str | None, input_column: str, max_length: int = 128, settings: FeaturizerSettings | None = None
) -> Any:
    """The featurizer of `input_column` built from the backbone's processor at `model_path` (None: a
    from-scratch backbone, whose default processor comes from `settings.model_type`)."""
    settings = settings or FeaturizerSettings(max_length=max_length)
    return FEATURIZERS[input_column].from_settings(model_path, settings)
