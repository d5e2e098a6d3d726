"""Build the committed audio demo set: a small subset of ../shared/data/spoken_words (see its README).

Keeps at most `--per-class` clips of every word from train.parquet (file order), so the long tail stays (the
nine rarest words have 5 clips each), and re-encodes them as 8 kHz FLAC to keep the repository small (the
featurizer resamples them to the feature extractor's rate, 16 kHz). `test.parquet` takes `--test-per-class`
clips of every word from the source's test split (unseen voices).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def reencode(data: bytes, rate: int) -> bytes:
    import soundfile
    from scipy.signal import resample_poly

    samples, source_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if source_rate != rate:
        g = np.gcd(source_rate, rate)
        mono = resample_poly(mono, rate // g, source_rate // g)
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(mono, -1, 1), rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def subset(source: Path, per_class: int, rate: int) -> pa.Table:
    rows = pq.read_table(source).to_pylist()
    taken: dict[str, int] = {}
    keep = []
    for row in rows:
        if taken.get(row["label"], 0) < per_class:
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            keep.append(row)
    return pa.table(
        {
            "audio": pa.array([reencode(r["audio"], rate) for r in keep], pa.binary()),
            "label": [r["label"] for r in keep],
            "metric_mask": pa.array(np.ones(len(keep), np.int8)),
            "classifier_mask": pa.array(np.ones(len(keep), np.int8)),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default=str(Path(__file__).parent.parent.parent / "shared/data/spoken_words"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "spoken_words_subset"))
    parser.add_argument("--per-class", type=int, default=12)
    parser.add_argument("--test-per-class", type=int, default=5)
    parser.add_argument("--rate", type=int, default=8000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.per_class), ("test", args.test_per_class)):
        table = subset(Path(args.source) / f"{split}.parquet", n, args.rate)
        pq.write_table(table, out / f"{split}.parquet")
        size = (out / f"{split}.parquet").stat().st_size
        print(f"{out / split}.parquet: {table.num_rows} clips, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
