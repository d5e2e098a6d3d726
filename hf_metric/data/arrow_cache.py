"""Training rows as one memory-mapped Arrow file: written once, record batch by record batch, reused while the
sources are unchanged.

A Parquet file of 100 GB of images does not fit in memory, and under `accelerate launch` every process would hold
its own copy. So a path source (`sources.read_paths`) is streamed shard by shard into one Arrow IPC stream, the
format of the `datasets` cache, at `$HF_METRIC_CACHE/arrow/<fingerprint>.arrow` (default
`~/.cache/hf_metric/arrow`), and training maps that file: its pages belong to the operating system's page cache,
shared by every process and DataLoader worker, and only the rows a batch holds are read. Memory follows the
record batch (`BATCH_BYTES`), not the file.

The name is a fingerprint of the sources (absolute path, size, modification time, first and last bytes of each
file) and of what shapes the rows (`settings`: the column mapping, the header checkers, `FORMAT`): a second run,
and the other processes of a distributed run (the main process prepares the data first), find the file and map
it without reading the sources again. It is written under a temporary name and renamed when complete, so a run
that is killed or stops on a bad shard never leaves a file that a later run would use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..atomic import atomic_path
from ..errors import DataError
from ..split_zip import cache_base

FORMAT = 1
"""Raise it when what the file holds changes: older files are no longer found."""
BATCH_BYTES = 64 * 2**20
"""Image/audio bytes per record batch read, checked and written at once."""
SAMPLE_BYTES = 64 * 2**10
"""Bytes hashed at the start and at the end of each source (all of a smaller file; a Parquet footer)."""
STALE_SECONDS = 3600
"""A temporary file not written to for this long is left by a killed run: the next write removes it."""
META_KEY = b"hf_metric"


def cache_folder() -> Path:
    """Where the files live: `arrow/` in hf_metric's cache (`$HF_METRIC_CACHE`, else `~/.cache/hf_metric`)."""
    return cache_base() / "arrow"


def cache_path(files: list[str], settings: Mapping[str, Any]) -> Path:
    """The file that holds the rows of `files` (in this order) shaped by `settings` (JSON-serialisable)."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **settings}, sort_keys=True).encode())
    for path in files:
        stat = os.stat(path)
        digest.update(json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns]).encode())
        with open(path, "rb") as fh:
            digest.update(fh.read(SAMPLE_BYTES))
            if stat.st_size > SAMPLE_BYTES:
                fh.seek(max(SAMPLE_BYTES, stat.st_size - SAMPLE_BYTES))
                digest.update(fh.read(SAMPLE_BYTES))
    return cache_folder() / f"{digest.hexdigest()[:32]}.arrow"


def write(path: Path, schema: pa.Schema, batches: Iterable[pa.RecordBatch], meta: Mapping[str, Any]) -> None:
    """Write `batches` (each of `schema`) to `path` as an Arrow IPC stream, with `meta` in the schema's metadata;
    the file appears whole or not at all (a temporary name of its own, renamed when complete)."""
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale(folder)
        schema = schema.with_metadata({META_KEY: json.dumps(dict(meta)).encode()})
        with atomic_path(path, unique=True) as tmp:
            with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
            _settle(tmp)
    except OSError as err:
        lines = str(err).strip().splitlines()
        detail = lines[0] if lines else type(err).__name__
        raise DataError(
            f"{folder}: cannot write the data cache ({detail}); free space there or set HF_METRIC_CACHE to another "
            "folder"
        ) from None


def open_mapped(path: Path) -> tuple[pa.Table, dict[str, Any]] | None:
    """The table of `path`, memory-mapped (the bytes are read when used), and the `meta` written with it; None
    when there is no such file or it cannot be read (it is written again)."""
    if not path.is_file():
        return None
    try:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        meta = json.loads((table.schema.metadata or {})[META_KEY])
    except (pa.ArrowException, OSError, KeyError, ValueError):
        return None
    return table.replace_schema_metadata(None), meta


def _settle(path: str) -> None:
    """Flush the written file to disk before it is renamed into place (after a crash the name holds the whole file
    or nothing), then drop it from the page cache. A buffered write leaves large page-cache folios (recent Linux,
    ext4 and others), and a memory map maps a whole folio, up to 2 MiB, for one row read; read back on demand, a
    row maps little more than itself, so the resident memory of training follows the rows it reads."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if hasattr(os, "posix_fadvise"):  # Linux
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _remove_stale(folder: Path) -> None:
    """Temporary files of killed runs (a write in progress keeps its file's modification time recent)."""
    now = time.time()
    for tmp in folder.glob("*.tmp"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
