"""Image/audio columns of any size: more than 2 GB in one column, as `binary` (several chunks, as Parquet reads
it) or `large_binary` (one chunk), through training data prep, embedding and prediction, never joined into one
array; files split into row groups keep their chunks; an unreadable file is a one-line error.

A column over 2 GB is built without 2 GB of memory: each chunk's bytes are an anonymous memory map of which only
the WAV header and the samples of each clip are written; the rest of a clip is a RIFF `JUNK` chunk of untouched
zero pages that the decoder skips.
"""

from __future__ import annotations

import io
import mmap
import struct
import tracemalloc
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media_fixtures import media_rows

from hf_metric.config import DataSection
from hf_metric.data import arrow_cache, chunked, media, sources
from hf_metric.data.parquet import read_labeled_parquet
from hf_metric.data.prepare import prepare_datasets
from hf_metric.errors import DataError
from hf_metric.inference import predict
from hf_metric.inference.backends import ModelOutputs

soundfile = pytest.importorskip("soundfile")

RATE = 16000
CLIP_BYTES = 8 * 2**20
ROWS = 264
"""264 clips of 8 MiB: 2.06 GiB in one column, just over what 32-bit offsets address."""
NAMES = ("a", "b", "c")
KEPT_POOLS: list = []
KINDS = {"binary": pa.binary(), "large_binary": pa.large_binary()}


def samples(row: int) -> np.ndarray:
    """0.1 s of a tone whose pitch is the row's own: every row decodes to different samples."""
    return (0.5 * np.sin(2 * np.pi * (200.0 + 3 * row) * np.arange(RATE // 10) / RATE)).astype(np.float32)


def wav_bytes(row: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, samples(row), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def padded_wav(row: int) -> tuple[bytes, bytes]:
    """The head (RIFF, fmt and the start of a JUNK chunk) and the tail (the data chunk) of a `CLIP_BYTES` WAV."""
    encoded = wav_bytes(row)
    tail = encoded[encoded.index(b"data") :]  # the data chunk soundfile wrote
    head = b"RIFF" + struct.pack("<I", CLIP_BYTES - 8) + b"WAVE"
    head += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
    head += b"JUNK" + struct.pack("<I", CLIP_BYTES - len(head) - 8 - len(tail))
    return head, tail


def big_audio_table(kind: pa.DataType) -> pa.Table:
    """`ROWS` clips (2.06 GiB) with labels: `binary` in two chunks under 2 GiB each (what `pyarrow.parquet` reads
    from one such column), `large_binary` in one chunk (what it reads from one row group)."""
    large = pa.types.is_large_binary(kind)
    chunks, per_chunk = (1, ROWS) if large else (2, ROWS // 2)
    arrays = []
    for c in range(chunks):
        memory = mmap.mmap(-1, per_chunk * CLIP_BYTES)
        for i in range(per_chunk):
            head, tail = padded_wav(c * per_chunk + i)
            memory[i * CLIP_BYTES : i * CLIP_BYTES + len(head)] = head
            memory[(i + 1) * CLIP_BYTES - len(tail) : (i + 1) * CLIP_BYTES] = tail
        offsets = np.arange(per_chunk + 1, dtype=np.int64 if large else np.int32) * CLIP_BYTES
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(memory)]
        arrays.append(pa.Array.from_buffers(kind, per_chunk, buffers))
    return pa.table({"audio": pa.chunked_array(arrays), "label": [NAMES[r % 3] for r in range(ROWS)]})


def featurizer():
    from hf_metric.data.featurize_media import AudioFeaturizer, build_processor

    return AudioFeaturizer(build_processor("audio", None, "wav2vec2", {}), max_audio_seconds=0.1)


class FirstSamples:
    """Stands in for a model: the embedding is the first featurized samples, the logits three of them."""

    def __init__(self) -> None:
        self.id2label = dict(enumerate(NAMES))

    def __call__(self, inputs: dict[str, np.ndarray]) -> ModelOutputs:
        x = np.asarray(inputs["input_values"], dtype=np.float32)[:, :8]
        return ModelOutputs(logits=x[:, :3], embeddings=x, head_logits=x[:, :3])


def expected_embeddings(rows: list[int]) -> np.ndarray:
    cells = [{"bytes": wav_bytes(r), "path": None} for r in rows]
    return FirstSamples()(featurizer().encode(cells)).embeddings


class InMemoryParquetFile:
    """What `predict` reads of a `pq.ParquetFile`, over a table in memory: record batches of at most
    `batch_size` rows, none across chunks (as `iter_batches` yields them)."""

    def __init__(self, table: pa.Table) -> None:
        self.table, self.schema_arrow = table, table.schema
        self.metadata = types.SimpleNamespace(num_rows=table.num_rows)

    def iter_batches(self, batch_size: int):
        return iter(self.table.to_batches(max_chunksize=batch_size))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_column_over_2gb_is_prepared_for_training_without_being_joined(kind, tmp_path, monkeypatch, data_cache):
    """The source's record batches (in memory here: no 2 GiB Parquet file is written) go to the data cache in
    batches of bounded bytes, and training maps the cache: nothing is joined, Arrow allocates little."""
    table = big_audio_table(KINDS[kind])
    path = tmp_path / "big.parquet"
    path.write_bytes(b"")
    shard = sources._Shard(str(path), table.schema, table.num_rows, lambda: iter(table.to_batches()))
    monkeypatch.setattr(sources, "parquet_shard", lambda _path: shard)
    default_pool = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default_pool)  # counts the peak of Arrow memory in this call alone
    KEPT_POOLS.append(pool)  # buffers allocated from it may outlive the test: so must the pool
    pa.set_memory_pool(pool)
    try:
        prepared = prepare_datasets(DataSection(parquet_path=str(path), val_ratio=0.25), featurizer(), seed=0)
    finally:
        pa.set_memory_pool(default_pool)

    assert len(prepared.train) + len(prepared.val) == ROWS
    column = prepared.train.data.column("audio")
    assert max(len(chunk) for chunk in column.chunks) <= arrow_cache.BATCH_BYTES // CLIP_BYTES  # no chunk joined
    assert [f["filename"] for f in prepared.train.cache_files] == [str(p) for p in data_cache.glob("*.arrow")]
    assert pool.max_memory() < 64 * 2**20  # the bytes are streamed and mapped, never copied (nor hashed)
    rows = prepared.train.with_format(None)["source_row"][:4]
    got = prepared.train[:4]
    np.testing.assert_allclose(got["input_values"][:, :8].numpy(), expected_embeddings(rows), atol=1e-6)
    assert list(got["labels"]) == [r % 3 for r in rows]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_column_over_2gb_is_embedded_a_bounded_slice_at_a_time(kind, tmp_path, monkeypatch):
    table = big_audio_table(KINDS[kind])
    monkeypatch.setattr(predict, "open_parquet", lambda _path: InMemoryParquetFile(table))
    out = tmp_path / "emb.npy"
    settings = predict.StreamSettings(progress=False)

    tracemalloc.start()
    try:
        rows = predict.embed_file("big.parquet", str(out), FirstSamples(), featurizer(), settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert rows == ROWS
    assert peak < chunked.MAX_SLICE_BYTES + 128 * 2**20  # never a whole record batch of cells in Python
    some = [0, 1, ROWS // 2 - 1, ROWS // 2, ROWS - 1]
    np.testing.assert_allclose(np.load(out)[some], expected_embeddings(some), atol=1e-6)


def chunked_file(tmp_path, form: str) -> str:
    """18 clips in row groups of 4 rows (5 chunks when read), as `binary`, `large_binary` or `{bytes, path}`
    structs; row 5 is in no loss (both masks 0)."""
    cells = [row["audio"] for row in media_rows("audio", per_class=6)]
    structs = [{"bytes": c, "path": None} for c in cells]
    values = pa.array(structs) if form == "struct" else pa.array(cells, KINDS[form])
    masks = [0 if r == 5 else 1 for r in range(len(cells))]
    labels = [r // 6 for r in range(len(cells))]
    table = pa.table({"audio": values, "label": labels, "metric_mask": masks, "classifier_mask": masks})
    path = str(tmp_path / f"{form}.parquet")
    pq.write_table(table, path, row_group_size=4)
    return path


@pytest.mark.parametrize("form", ["binary", "large_binary", "struct"])
def test_row_groups_stay_chunks_through_reading_and_preparing(form, tmp_path):
    path = chunked_file(tmp_path, form)
    source = pq.read_table(path).column("audio").to_pylist()
    source = [c["bytes"] if form == "struct" else c for c in source]

    labeled = read_labeled_parquet(path)
    column = labeled.table.column("audio")
    assert column.num_chunks == 5 and column.type.field("bytes").type == pa.large_binary()
    assert labeled.table.column("source_row").to_pylist() == [r for r in range(18) if r != 5]
    assert [c["bytes"] for c in column.to_pylist()] == [source[r] for r in range(18) if r != 5]

    passthrough = types.SimpleNamespace(input_column="audio", prepare=lambda ds, train: ds)
    prepared = prepare_datasets(DataSection(parquet_path=path, val_ratio=0.25), passthrough, seed=0)
    assert prepared.train.data.column("audio").num_chunks == 5
    for row in prepared.train.select(range(3)):
        assert row["audio"]["bytes"] == source[row["source_row"]]


@pytest.mark.parametrize("form", ["binary", "large_binary"])
def test_predict_with_a_lowered_slice_limit_writes_the_same_rows(form, tmp_path, monkeypatch):
    """Record batches are cut into slices of at most `MAX_SLICE_BYTES` of cells: same output, row order kept."""
    path = chunked_file(tmp_path, form)
    settings = predict.StreamSettings(read_batch_rows=8, progress=False)
    whole, sliced = str(tmp_path / "whole.parquet"), str(tmp_path / "sliced.parquet")
    predict.predict_file(path, whole, FirstSamples(), featurizer(), top_k=2, settings=settings)
    monkeypatch.setattr(chunked, "MAX_SLICE_BYTES", 3 * len(pq.read_table(path).column("audio")[0].as_py()))
    predict.predict_file(path, sliced, FirstSamples(), featurizer(), top_k=2, settings=settings)

    assert pq.ParquetFile(sliced).metadata.num_row_groups > pq.ParquetFile(whole).metadata.num_row_groups
    assert pq.read_table(sliced).to_pydict() == pq.read_table(whole).to_pydict()
    assert pq.read_table(whole).column("audio").to_pylist() == pq.read_table(path).column("audio").to_pylist()


def test_row_slices_bound_bytes_and_rows():
    sizes = np.array([5, 5, 5, 20, 1, 1, 1, 1])
    assert chunked.row_slices(sizes, max_bytes=10) == [(0, 2), (2, 3), (3, 4), (4, 8)]
    assert chunked.row_slices(sizes, max_bytes=100, max_rows=3) == [(0, 3), (3, 6), (6, 8)]
    assert chunked.row_slices(np.zeros(0), max_bytes=10) == []


def test_a_file_that_breaks_while_streaming_is_one_line(tmp_path):
    """A data page that cannot be read (found only when its row group is reached) names the file; no traceback."""
    path = tmp_path / "broken.parquet"
    rows = [
        {"audio": bytes(np.random.default_rng(r).integers(0, 256, 4000, dtype=np.uint8)), "label": 0} for r in range(8)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4, compression="snappy")
    meta = pq.ParquetFile(path).metadata
    start = meta.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[start + 20 : start + 2000] = b"\xff" * 1980
    path.write_bytes(bytes(data))

    with pytest.raises(DataError) as info:
        predict.embed_file(
            str(path), str(tmp_path / "e.npy"), FirstSamples(), featurizer(), predict.StreamSettings(progress=False)
        )
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text and "pyarrow.parquet.read_table" in text
    with pytest.raises(DataError, match=rf"^{path}: .*read_table"):
        read_labeled_parquet(path)


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (pa.ArrowCapacityError("array cannot contain more than 2147483646 bytes"), "row_group_size="),
        (pa.ArrowInvalid("offset overflow while concatenating arrays"), "large_binary"),
        (MemoryError("malloc of size 3000000000 failed"), "split it into smaller files"),
        (OSError("Couldn't deserialize thrift"), "not a readable Parquet file"),
    ],
)
def test_read_errors_say_what_to_do(error, hint):
    text = str(chunked.read_error("data.parquet", error))
    assert text.startswith("data.parquet: ") and hint in text and "\n" not in text


def test_evaluate_runs_a_column_a_bounded_slice_at_a_time(tmp_path, monkeypatch):
    """`evaluate` turns the cells of a labelled file into Python a slice at a time: same outputs, in order."""
    from hf_metric.inference import evaluate

    cells = read_labeled_parquet(chunked_file(tmp_path, "binary")).table.column("audio")
    whole = evaluate._run_column(FirstSamples(), featurizer(), cells, batch_size=4)
    monkeypatch.setattr(chunked, "MAX_SLICE_BYTES", 3 * len(cells[0]["bytes"].as_py()))
    assert len(chunked.row_slices(media.cell_bytes(cells))) == 6
    sliced = evaluate._run_column(FirstSamples(), featurizer(), cells, batch_size=4)
    np.testing.assert_array_equal(sliced.embeddings, whole.embeddings)
    np.testing.assert_array_equal(sliced.logits, whole.logits)
    assert len(whole.embeddings) == 17  # row 5 is in no loss
