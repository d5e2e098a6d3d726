"""Featurizers: rows of the input column -> the backbone's inputs, chosen from the backbone's own processor.

A featurizer owns the processor that is saved beside the model (so pipelines work), turns a dataset's input
column into model inputs, and gives the collator that pads a batch. Text uses the backbone's tokenizer; one
featurizer per modality joins `FEATURIZERS` (keyed by the Parquet input column).
"""

from __future__ import annotations

from typing import Any

from .parquet import TEXT_COLUMN


class TextFeaturizer:
    """The backbone's tokenizer: truncation to `max_length`, padding left to the collator (per batch)."""

    input_column = TEXT_COLUMN

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.processor = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, model_path: str, max_length: int) -> TextFeaturizer:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model_path), max_length)

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


FEATURIZERS = {TEXT_COLUMN: TextFeaturizer}
"""Input column -> featurizer class (each with `from_pretrained`, `prepare`, `collator` and `processor`)."""


def input_column_of(columns: list[str], source: str) -> str:
    """The input column of a file (the first featurizer column it holds); a one-line `DataError` if none."""
    from ..errors import DataError

    for column in FEATURIZERS:
        if column in columns:
            return column
    raise DataError(
        f"{source}: no input column (expected one of: {', '.join(FEATURIZERS)}; found: {', '.join(columns)})"
    )


def featurizer_for(model_path: str, input_column: str, max_length: int) -> TextFeaturizer:
    """The featurizer of `input_column` built from the backbone's processor at `model_path`."""
    return FEATURIZERS[input_column].from_pretrained(model_path, max_length)
