"""Build the committed image demo set from scikit-learn's bundled handwritten digits (no download).

Each 8x8 image (grey levels 0..16) becomes an 8-bit greyscale PNG, stored as bytes in the `image` column;
`label` is the digit as text. `test.parquet` holds `--test-per-class` images of every digit; the rest goes to
`train.parquet`, long-tailed on purpose (digit 0 keeps every row, digit 9 about 1/`--imbalance` of them,
geometric in between), like the photo collections hf_metric is for.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(image * 255 / 16).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    table = pa.table(
        {
            "image": pa.array([png(x) for x in images], pa.binary()),
            "label": [str(int(y)) for y in labels],
            "metric_mask": pa.array(np.ones(len(labels), np.int8)),
            "classifier_mask": pa.array(np.ones(len(labels), np.int8)),
        }
    )
    pq.write_table(table, path)
    print(f"{path}: {len(labels)} images, per digit {np.bincount(labels).tolist()}")


def main() -> None:
    from sklearn.datasets import load_digits

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(Path(__file__).parent / "digits"))
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--imbalance", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    rng = np.random.default_rng(args.seed)
    train_idx, test_idx = [], []
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(digits.target == digit))
        test_idx.extend(rows[: args.test_per_class])
        pool = rows[args.test_per_class :]
        keep = max(2, round(len(pool) * args.imbalance ** (-digit / 9)))
        train_idx.extend(pool[:keep])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    write(out / "train.parquet", digits.images[train_idx], digits.target[train_idx])
    write(out / "test.parquet", digits.images[test_idx], digits.target[test_idx])


if __name__ == "__main__":
    main()
