"""Build the committed audio demo set: a small subset of ../shared/data/spoken_words (see its README).

The source's 578 train clips have only 5 of each of the nine rarest words, too few for any model trained from
scratch to learn them (measured: docs/modalities.md). So the demo pools the source's train and test splits,
shuffles each word's clips (seed 0) and keeps a milder long tail: `--most` clips of the first word ("yes") down
to `--fewest` of the last ("nine"), linearly (600 clips); `test.parquet` takes `--test-per-class` further clips
of every word. Voices are therefore shared between the demo's train and test; the benchmark
(bench/audio_spoken_words.py) uses the full source with its unseen test voices.

Clips are peak-normalised and stored as 8 kHz, 8-bit FLAC to keep the repository small (~3 MB); the featurizer
resamples them to the feature extractor's rate (16 kHz).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
WORDS += ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
"""The source README's order: most to fewest training clips."""


def reencode(data: bytes, rate: int) -> bytes:
    import soundfile
    from scipy.signal import resample_poly

    samples, source_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if source_rate != rate:
        g = np.gcd(source_rate, rate)
        mono = resample_poly(mono, rate // g, source_rate // g)
    mono = 0.9 * mono / max(float(np.abs(mono).max()), 1e-6)  # use the 8 bits fully
    buf = io.BytesIO()
    soundfile.write(buf, mono, rate, format="FLAC", subtype="PCM_S8")
    return buf.getvalue()


def table(rows: list[dict], rate: int) -> pa.Table:
    return pa.table(
        {
            "audio": pa.array([reencode(r["audio"], rate) for r in rows], pa.binary()),
            "label": [r["label"] for r in rows],
            "metric_mask": pa.array(np.ones(len(rows), np.int8)),
            "classifier_mask": pa.array(np.ones(len(rows), np.int8)),
        }
    )


def split(source: Path, most: int, fewest: int, test_per_class: int) -> tuple[list[dict], list[dict]]:
    """Train and test rows: per word, its pooled clips shuffled; a linear tail from `most` to `fewest`."""
    rows = pq.read_table(source / "train.parquet").to_pylist() + pq.read_table(source / "test.parquet").to_pylist()
    rng = np.random.default_rng(0)
    train, test = [], []
    for k, word in enumerate(WORDS):
        clips = [r for r in rows if r["label"] == word]
        clips = [clips[i] for i in rng.permutation(len(clips))]
        n = round(most - (most - fewest) * k / (len(WORDS) - 1))
        if n + test_per_class > len(clips):
            raise SystemExit(f"{word}: {len(clips)} clips, {n} + {test_per_class} asked")
        train += clips[:n]
        test += clips[n : n + test_per_class]
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default=str(Path(__file__).parent.parent.parent / "shared/data/spoken_words"))
    parser.add_argument("--out", default=str(Path(__file__).parent / "spoken_words_subset"))
    parser.add_argument("--most", type=int, default=40)
    parser.add_argument("--fewest", type=int, default=20)
    parser.add_argument("--test-per-class", type=int, default=5)
    parser.add_argument("--rate", type=int, default=8000)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = split(Path(args.source), args.most, args.fewest, args.test_per_class)
    for name, rows in (("train", train), ("test", test)):
        pq.write_table(table(rows, args.rate), out / f"{name}.parquet")
        size = (out / f"{name}.parquet").stat().st_size
        print(f"{out / name}.parquet: {len(rows)} clips, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
