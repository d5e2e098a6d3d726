"""Verification: are two inputs the same identity? The cosine similarity of their embeddings against a threshold.

A pairs file holds two input columns of one kind (`text_a`/`text_b`, `image_a`/`image_b` or `audio_a`/`audio_b`)
and optionally `same` (true/false or 1/0). The file is streamed twice: first every pair is embedded and scored
(memory: one float per pair), then the rows are written with `similarity` and `is_same` (similarity >=
threshold) appended. The threshold is given, or chosen on the file's own `same` labels for a target
false-accept rate (`verification.threshold_at_far`); with `same`, the verification metrics (ROC AUC, EER, TAR at
FAR 1e-3 / 1e-2) are returned as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import atomic_path
from ..data.parquet import INPUT_COLUMNS, check_input_values
from ..errors import ConfigError, DataError
from .backends import run_batches
from .predict import StreamSettings, open_parquet, write_parquet

SAME_COLUMN = "same"
VERIFY_COLUMNS = ("similarity", "is_same")
FARS = (1e-3, 1e-2)


@dataclass
class Verification:
    """What `verify_file` decided: the threshold, how it was chosen, and the metrics (with `same`)."""

    rows: int
    threshold: float
    chosen_by: str
    metrics: dict[str, float] = field(default_factory=dict)


def pair_kind(path: str, names: list[str]) -> str:
    """The input kind of a pairs file (text, image or audio) from its `<kind>_a` / `<kind>_b` columns."""
    kinds = [k for k in INPUT_COLUMNS if f"{k}_a" in names and f"{k}_b" in names]
    if len(kinds) != 1:
        found = ", ".join(names)
        what = "several pairs of input columns" if kinds else "no pair of input columns"
        need = "text_a/text_b, image_a/image_b or audio_a/audio_b"
        raise DataError(f"{path}: {what} (need exactly one of {need}; found: {found})")
    return kinds[0]


def same_values(path: str, values: pa.Array, offset: int) -> np.ndarray:
    """The `same` column of one batch as booleans; null or not 0/1/true/false is a one-line `DataError`."""
    if pa.types.is_boolean(values.type):
        numeric = values.cast(pa.int8())
    elif pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        numeric = values
    else:
        raise DataError(f"{path}: column '{SAME_COLUMN}' must hold true/false or 1/0, found type {values.type}")
    bad = pc.or_kleene(pc.is_null(numeric), pc.invert(pc.is_in(numeric.cast(pa.float64()), pa.array([0.0, 1.0]))))
    row = pc.index(pc.fill_null(bad, True), True).as_py()
    if row >= 0:
        got = values[row].as_py()
        raise DataError(f"{path}: column '{SAME_COLUMN}', row {offset + row}: must be true/false or 1/0, got {got!r}")
    return numeric.cast(pa.float64()).to_numpy(zero_copy_only=False) == 1.0


def pair_similarities(
    path: str, backend: Any, featurizer: Any, settings: StreamSettings | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cosine similarity of every pair, and the `same` labels (None without the column)."""
    from tqdm.auto import tqdm

    settings = settings or StreamSettings()
    source = open_parquet(path)
    names = source.schema_arrow.names
    kind = pair_kind(path, names)
    has_same = SAME_COLUMN in names
    sims, same, offset = [], [], 0
    with tqdm(total=source.metadata.num_rows, unit="pairs", disable=not settings.progress) as bar:
        for batch in source.iter_batches(batch_size=settings.read_batch_rows):
            emb = []
            for side in ("a", "b"):
                column = f"{kind}_{side}"
                values = check_input_values(path, column, batch.column(column), offset, kind=kind)
                emb.append(run_batches(backend, featurizer, values, settings.batch_size).embeddings)
            a, b = (np.asarray(e, dtype=np.float64) for e in emb)
            a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
            sims.append((a * b).sum(axis=1).astype(np.float32))
            if has_same:
                same.append(same_values(path, batch.column(SAME_COLUMN), offset))
            offset += batch.num_rows
            bar.update(batch.num_rows)
    if not sims:
        raise DataError(f"{path}: the file has no rows")
    return np.concatenate(sims), np.concatenate(same) if has_same else None


def verify_file(
    path: str,
    out: str,
    backend: Any,
    featurizer: Any,
    threshold: float | None = None,
    far: float | None = None,
    settings: StreamSettings | None = None,
) -> Verification:
    """Score every pair of `path` and write `out` (every input column plus `VERIFY_COLUMNS`, atomically)."""
    from ..evaluation.verification import threshold_at_far, verification_metrics

    settings = settings or StreamSettings()
    names = open_parquet(path).schema_arrow.names
    clash = [c for c in VERIFY_COLUMNS if c in names]
    if clash:
        added = ", ".join(VERIFY_COLUMNS)
        raise DataError(f"{path}: column '{clash[0]}' already exists; rename it (the output adds {added})")
    sims, same = pair_similarities(path, backend, featurizer, settings)
    metrics: dict[str, float] = {}
    if same is not None:
        if same.all() or not same.any():
            raise DataError(f"{path}: column '{SAME_COLUMN}': needs both same (1) and different (0) pairs")
        fars = tuple(sorted({*FARS, *([far] if far is not None else [])}))
        metrics = {k: float(v) for k, v in verification_metrics(sims, same, fars=fars).items()}
    if threshold is not None:
        chosen_by = "given"
    elif same is not None:
        far = 1e-3 if far is None else far
        threshold, chosen_by = float(threshold_at_far(sims, same, far)), f"far={far:g}"
    else:
        raise ConfigError(f"{path}: no '{SAME_COLUMN}' column to choose a threshold on; give --threshold T")
    if same is not None:
        metrics["verification_accuracy"] = float(((sims >= threshold) == same).mean())
    _write(path, out, sims, threshold, settings.read_batch_rows)
    return Verification(len(sims), float(threshold), chosen_by, metrics)


def _write(path: str, out: str, sims: np.ndarray, threshold: float, batch_rows: int) -> None:
    """The pairs file with `similarity` and `is_same` appended, written atomically as predict writes."""

    def with_similarities():
        offset = 0
        for batch in open_parquet(path).iter_batches(batch_size=batch_rows):
            yield batch, sims[offset : offset + batch.num_rows]
            offset += batch.num_rows

    def columns(_batch, part):
        return {"similarity": pa.array(part, pa.float32()), "is_same": pa.array(part >= threshold, pa.bool_())}

    with atomic_path(out) as tmp:
        write_parquet(path, tmp, with_similarities(), columns)
