"""The data cache: a Parquet source is streamed into one memory-mapped Arrow file in bounded record batches,
training reads that file, an unchanged source reuses it, a changed one gets a new one, a failed write leaves
nothing behind, and a bad image/audio row is still named by its shard and row (its header check cached)."""

from __future__ import annotations

import os
import pickle
import time
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import synthetic_rows, write_parquet
from media_fixtures import wav_bytes

from hf_metric.config import DataSection
from hf_metric.data import arrow_cache, parquet, sources
from hf_metric.data.parquet import read_labeled_parquet
from hf_metric.data.prepare import labels_of, prepare_datasets
from hf_metric.data.sources import read_paths
from hf_metric.errors import DataError

soundfile = pytest.importorskip("soundfile")

PASSTHROUGH = types.SimpleNamespace(input_column="audio", prepare=lambda ds, train: ds)
KEPT_POOLS: list = []


def _clips(path, rows: int, seconds: float = 0.25, broken: int | None = None) -> list[bytes]:
    """`rows` WAV clips (16 kHz, 16-bit: 32 kB a second) labelled by row % 3 in row groups of 4; row 2 is in no
    loss; row `broken` is not a WAV."""
    clips = [wav_bytes(200.0 + 10 * r, r, rate=16000, seconds=seconds) for r in range(rows)]
    if broken is not None:
        clips[broken] = b"RIFF not a wav at all"
    masks = [0 if r == 2 else 1 for r in range(rows)]
    table = pa.table(
        {"audio": clips, "label": [f"c{r % 3}" for r in range(rows)], "metric_mask": masks, "classifier_mask": masks}
    )
    pq.write_table(table, path, row_group_size=4)
    return clips


def test_a_parquet_source_trains_from_a_memory_mapped_cache(tmp_path, monkeypatch, data_cache):
    path = tmp_path / "clips.parquet"
    clips = _clips(path, 64, seconds=32.0)  # 64 clips of 1 MiB
    media_bytes = sum(len(c) for c in clips)
    monkeypatch.setattr(arrow_cache, "BATCH_BYTES", 2 * 2**20)
    monkeypatch.setattr(sources, "READ_BUFFER_BYTES", 2**20)
    default_pool = pa.default_memory_pool()
    pool = pa.proxy_memory_pool(default_pool)  # the peak of Arrow memory while preparing
    KEPT_POOLS.append(pool)  # buffers allocated from it may outlive the test: so must the pool
    pa.set_memory_pool(pool)
    try:
        prepared = prepare_datasets(DataSection(parquet_path=str(path), val_ratio=0.25), PASSTHROUGH, seed=0)
    finally:
        pa.set_memory_pool(default_pool)

    assert pool.max_memory() < media_bytes / 4  # neither the file nor the column was ever whole in memory
    (cache,) = data_cache.glob("*.arrow")
    for split in (prepared.train, prepared.val):
        assert [f["filename"] for f in split.cache_files] == [str(cache)]
        assert len(pickle.dumps(split)) < 2**20  # a DataLoader worker gets the file's path, not its bytes
    assert len(prepared.train) + len(prepared.val) == 63  # row 2 is in no loss
    for row in prepared.train.select(range(5)):
        assert row["audio"]["bytes"] == clips[row["source_row"]] and row["labels"] == row["source_row"] % 3
    assert len(set(labels_of(prepared.train))) == 3


def test_an_unchanged_source_reuses_the_cache_and_a_changed_one_gets_a_new_one(tmp_path, data_cache):
    path = write_parquet(tmp_path / "t.parquet", synthetic_rows(5))
    first = read_paths(str(path))
    cache = data_cache / os.path.basename(first.mapped)
    before = cache.stat()
    again = read_paths(str(path))
    assert again.mapped == first.mapped and again.table.equals(first.table)
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # mapped, not written again

    rows = synthetic_rows(5)
    rows[3]["label"] = "billing" if rows[3]["label"] != "billing" else "card"
    write_parquet(path, rows)  # maybe within the same mtime tick, and of the same size: the bytes differ
    changed = read_paths(str(path))
    assert changed.mapped != first.mapped and len(list(data_cache.glob("*.arrow"))) == 2
    assert changed.table.column("label").to_pylist() == [r["label"] for r in rows]
    assert changed.table.equals(pq.read_table(path).replace_schema_metadata(None))


def test_a_write_that_fails_midway_leaves_no_cache_and_the_next_run_succeeds(tmp_path, monkeypatch, data_cache):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist(synthetic_rows(5)), path, row_group_size=4)  # 5 record batches
    stale = data_cache / "0123.arrow.99.abcd.tmp"  # left by a run killed long ago
    stale.write_bytes(b"half")
    os.utime(stale, (time.time() - 2 * arrow_cache.STALE_SECONDS,) * 2)
    new_stream = pa.ipc.new_stream

    class Killed(Exception):
        pass

    def failing_stream(sink, schema):
        writer = new_stream(sink, schema)
        write = writer.write_batch
        calls = []

        def write_batch(batch):
            if calls:
                raise Killed
            calls.append(batch)
            write(batch)

        writer.write_batch = write_batch
        return writer

    monkeypatch.setattr(pa.ipc, "new_stream", failing_stream)
    with pytest.raises(Killed):
        read_paths(str(path))
    assert list(data_cache.iterdir()) == []  # no cache, no temporary file (and the stale one is gone)

    monkeypatch.setattr(pa.ipc, "new_stream", new_stream)
    raw = read_paths(str(path))
    assert raw.table.equals(pq.read_table(path).replace_schema_metadata(None))
    assert [p.name for p in data_cache.iterdir()] == [os.path.basename(raw.mapped)]


def test_a_bad_clip_in_a_shard_is_named_from_the_cached_check(tmp_path, monkeypatch):
    (tmp_path / "s").mkdir()
    paths = [str(tmp_path / "s" / f"part-{i}.parquet") for i in range(2)]
    _clips(paths[0], 6)
    clips = _clips(paths[1], 6, broken=4)
    message = rf"^{paths[1]}: column 'audio', row 4: cannot read the audio"
    with pytest.raises(DataError, match=message):
        read_labeled_parquet(read_paths(str(tmp_path / "s")))

    def not_again(*_args):
        raise AssertionError("a header checked while caching is read again")

    monkeypatch.setattr(parquet, "cell_problem", not_again)  # the second read maps the cache and its checks
    with pytest.raises(DataError, match=message):
        read_labeled_parquet(read_paths(str(tmp_path / "s")))
    labeled = read_labeled_parquet(read_paths(str(tmp_path / "s")), skip_bad_rows=True)
    assert labeled.bad_rows == 1 and labeled.dropped_rows == 2  # row 2 of each shard is in no loss
    assert labeled.rows.tolist() == [0, 1, 3, 4, 5, 6, 7, 9, 11]
    assert labeled.where(int(labeled.rows[-1])) == (paths[1], 5)
    assert labeled.labels.tolist() == [r % 3 for r in (0, 1, 3, 4, 5, 0, 1, 3, 5)]
    assert labeled.table.column("audio").to_pylist()[-1]["bytes"] == clips[5]


def test_the_prepared_rows_equal_those_of_a_file_read_whole(tmp_path):
    """Rows dropped from the middle: the selection by index gives the rows, labels and masks that filtering the
    table read whole gave."""
    path = tmp_path / "c.parquet"
    clips = _clips(path, 12)
    prepared = prepare_datasets(DataSection(parquet_path=str(path), val_ratio=0.25), PASSTHROUGH, seed=0)
    whole = pq.read_table(path).to_pydict()
    for split in (prepared.train, prepared.val):
        for row in split.with_format(None):
            source = row["source_row"]
            assert row["audio"] == {"bytes": clips[source], "path": None}
            assert row["metric_mask"] == whole["metric_mask"][source] == 1
            assert row["labels"] == int(whole["label"][source][1:])
    used = sorted(r for split in (prepared.train, prepared.val) for r in split.with_format(None)["source_row"])
    assert used == [r for r in range(12) if r != 2]
