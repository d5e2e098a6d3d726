"""Image and audio cells: one form for every way Parquet stores them, a cheap up-front check, lazy decoding.

A cell is encoded bytes (PNG, JPEG, WAV, FLAC ...), a path (relative to the Parquet file, or absolute), or the
`{bytes, path}` struct that `datasets` writes for its `Image`/`Audio` features. `normalize_media_column` turns
any of them into that struct with an absolute path, so the featurizers read one form. Nothing is decoded here
except headers (`check_cell`); pixels and samples are decoded per batch by the featurizers (`decode_image`,
`decode_audio`), so a file with 100k images never sits decoded in memory.

Pillow and soundfile are optional (extras `vision` and `audio`): `require_backend` says which extra to add.
"""

from __future__ import annotations

import io
import os
import re
from math import gcd
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..optional import require

IMAGE_COLUMN = "image"
AUDIO_COLUMN = "audio"
MEDIA_COLUMNS = (IMAGE_COLUMN, AUDIO_COLUMN)
SOURCE_ROW = "source_row"
"""Row number in the Parquet file, kept beside media cells so that a decoding error can name it."""
MEDIA_TYPE = pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])
"""One form for every cell; `large_binary` (64-bit offsets), so a chunk may hold more than 2 GB of bytes."""

BACKENDS = {
    IMAGE_COLUMN: ("PIL", "vision", "an 'image' column"),
    AUDIO_COLUMN: ("soundfile", "audio", "an 'audio' column"),
}


def require_backend(column: str) -> None:
    """A `ConfigError` naming the extra (`vision`, `audio`) when the decoder of `column` is not installed."""
    module, extra, what = BACKENDS[column]
    require(module, extra, what)


def normalize_media_column(values: pa.ChunkedArray, base_dir: str) -> pa.ChunkedArray | str:
    """`values` as `struct<bytes, path>` (`MEDIA_TYPE`) with absolute paths, chunk by chunk, or an error message
    when the type is not usable. The chunks are kept and the bytes are shared, not copied: joining a column of
    more than 2 GB into one array overflows its offsets (`hf_metric.data.chunked`)."""
    kind = values.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
        wide = pa.large_binary() if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) else kind
        values, kind = values.cast(wide), wide
    is_bytes = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    is_path = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    names = {kind.field(i).name for i in range(kind.num_fields)} if pa.types.is_struct(kind) else set()
    if not (is_bytes or is_path or {"bytes", "path"} & names):
        return f"must hold encoded bytes, a file path or a {{bytes, path}} struct, found type {kind}"
    chunks = [_normalize_chunk(chunk, base_dir, is_bytes, is_path, names) for chunk in values.chunks]
    return pa.chunked_array(chunks, MEDIA_TYPE)


def _normalize_chunk(chunk: pa.Array, base_dir: str, is_bytes: bool, is_path: bool, names: set[str]) -> pa.Array:
    size = len(chunk)
    if is_bytes:
        byte_values, paths = chunk.cast(pa.large_binary()), pa.nulls(size, pa.string())
    elif is_path:
        byte_values, paths = pa.nulls(size, pa.large_binary()), chunk.cast(pa.string())
    else:
        byte_values = pc.struct_field(chunk, "bytes").cast(pa.large_binary()) if "bytes" in names else None
        paths = pc.struct_field(chunk, "path").cast(pa.string()) if "path" in names else None
        byte_values = pa.nulls(size, pa.large_binary()) if byte_values is None else byte_values
        paths = pa.nulls(size, pa.string()) if paths is None else paths
        # a struct cell that is null as a whole has no bytes and no path
        if chunk.null_count:
            valid = chunk.is_valid()
            byte_values = pc.if_else(valid, byte_values, pa.scalar(None, pa.large_binary()))
            paths = pc.if_else(valid, paths, pa.scalar(None, pa.string()))
    if paths.null_count < size:
        paths = pa.array(
            [None if p is None else os.path.normpath(os.path.join(base_dir, p)) for p in paths.to_pylist()], pa.string()
        )
    return pa.StructArray.from_arrays([byte_values, paths], fields=list(MEDIA_TYPE))


def cell_bytes(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Encoded bytes held in each cell of an image/audio column, in any of its forms (0 for a path or a null);
    zeros for a column of another type. It sizes the slices of cells that reach Python at once."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    sizes = [np.zeros(0, dtype=np.int64)]
    for chunk in chunks:
        kind = chunk.type
        if pa.types.is_dictionary(kind):
            per_value = pa.array(cell_bytes(chunk.dictionary), pa.int64())
            sizes.append(pc.fill_null(pc.take(per_value, chunk.indices), 0).to_numpy())
            continue
        if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
            chunk, kind = pc.struct_field(chunk, "bytes"), kind.field("bytes").type
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            sizes.append(pc.fill_null(pc.binary_length(chunk), 0).to_numpy().astype(np.int64))
        else:
            sizes.append(np.zeros(len(chunk), dtype=np.int64))
    return np.concatenate(sizes)


def open_cell(cell: dict[str, Any]) -> Any:
    """A file-like object (bytes win over the path, as in `datasets`); `ValueError` when the cell is empty."""
    if cell is None or (cell.get("bytes") is None and cell.get("path") is None):
        raise ValueError("no bytes and no path (null)")
    if cell.get("bytes") is not None:
        return io.BytesIO(cell["bytes"])
    path = cell["path"]
    if not os.path.isfile(path):
        raise ValueError(f"file not found: {path}")
    return path


def check_cell(column: str, cell: dict[str, Any]) -> None:
    """Read only the header (image size and format; audio rate and frames): `ValueError` if it is unreadable."""
    source = open_cell(cell)
    try:
        if column == IMAGE_COLUMN:
            from PIL import Image

            with Image.open(source) as image:
                image.verify()
        else:
            import soundfile

            info = soundfile.info(source)
            if info.frames <= 0:
                raise ValueError("the clip has no samples")
    except ValueError:
        raise
    except Exception as err:  # Pillow and libsndfile raise many types for broken files
        raise ValueError(f"cannot read the {column}: {_one_line(err)}") from None


def cell_problem(column: str, cell: dict[str, Any]) -> str | None:
    """What `check_cell` finds wrong with `cell`, or None when its header reads."""
    try:
        check_cell(column, cell)
    except ValueError as err:
        return str(err)
    return None


def check_cells(column: str, cells: pa.Array | pa.ChunkedArray) -> pa.Array:
    """`check_cell` of each `MEDIA_TYPE` cell that holds bytes, as text: "" when readable, else the problem; null
    for a cell without bytes (a path or nothing: checked when its row is validated, the file may change). The
    result depends on the bytes alone, so it is stored with them (`arrow_cache`)."""
    out = [
        None if data is None else cell_problem(column, {"bytes": data, "path": None}) or ""
        for data in pc.struct_field(cells, "bytes").to_pylist()
    ]
    return pa.array(out, pa.string())


def decode_image(cell: dict[str, Any]) -> Any:
    """The image as an RGB `PIL.Image` (decoded now)."""
    from PIL import Image

    try:
        with Image.open(open_cell(cell)) as image:
            return image.convert("RGB")
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"cannot decode the image: {_one_line(err)}") from None


def decode_audio(cell: dict[str, Any], rate: int) -> np.ndarray:
    """The clip as mono float32 samples at `rate` Hz (channels averaged, polyphase resampling)."""
    import soundfile

    try:
        samples, source_rate = soundfile.read(open_cell(cell), dtype="float32", always_2d=True)
    except ValueError:
        raise
    except Exception as err:
        raise ValueError(f"cannot decode the audio: {_one_line(err)}") from None
    if samples.shape[0] == 0:
        raise ValueError("the clip has no samples")
    return resample(samples.mean(axis=1), source_rate, rate)


def resample(samples: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """Polyphase resampling (`scipy.signal.resample_poly`, anti-aliased) from `source_rate` to `rate`."""
    if source_rate == rate:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = gcd(int(source_rate), int(rate))
    return resample_poly(samples, rate // g, source_rate // g).astype(np.float32)


def fit_length(samples: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """`length` samples from `offset` on, padded with silence at the end when the clip is shorter."""
    clip = samples[offset : offset + length]
    if len(clip) < length:
        clip = np.pad(clip, (0, length - len(clip)))
    return clip


def _one_line(err: Exception) -> str:
    if type(err).__name__ == "UnidentifiedImageError":  # its text holds the repr of a BytesIO
        return "unknown or broken image format"
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return re.sub(r"<[\w.]+ object at 0x[0-9a-f]+>", "the file", line)  # libsndfile names the BytesIO


def as_image(item: Any) -> Any:
    """A pipeline input as an RGB `PIL.Image`: an image, a path, encoded bytes or an `(H, W[, 3])` uint8 array."""
    from PIL import Image

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        return Image.fromarray(item).convert("RGB")
    if isinstance(item, (bytes, bytearray)):
        return decode_image({"bytes": bytes(item), "path": None})
    return decode_image({"bytes": None, "path": os.fspath(item)})


def as_clip(item: Any, rate: int) -> np.ndarray:
    """A pipeline input as mono float32 samples at `rate`: samples already at `rate`, a dict with `raw` (or
    `array`) and `sampling_rate`, a path, or encoded bytes."""
    if isinstance(item, dict):
        samples = np.asarray(item.get("raw", item.get("array")), dtype=np.float32)
        samples = samples.mean(axis=-1) if samples.ndim == 2 else samples
        return resample(samples, int(item["sampling_rate"]), rate)
    if isinstance(item, np.ndarray):
        return item.astype(np.float32, copy=False)
    if isinstance(item, (bytes, bytearray)):
        return decode_audio({"bytes": bytes(item), "path": None}, rate)
    return decode_audio({"bytes": None, "path": os.fspath(item)}, rate)
