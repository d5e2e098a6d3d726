"""Rebuild the committed Banking77 demo subset from the full data set (`--source` folder with train.parquet).

Keeps the first N rows of every intent (file order), all 77 intents, and adds the two mask columns (all 1).
"""

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", default="../shared/data/banking77")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--out", default=str(Path(__file__).parent / "banking77_subset" / "train.parquet"))
    args = parser.parse_args()
    rows = pq.read_table(Path(args.source) / "train.parquet").to_pylist()
    taken: dict[str, int] = {}
    keep = []
    for row in rows:
        if taken.get(row["label"], 0) < args.per_class:
            taken[row["label"]] = taken.get(row["label"], 0) + 1
            keep.append(row)
    table = pa.table(
        {
            "text": [r["text"] for r in keep],
            "label": [r["label"] for r in keep],
            "metric_mask": pa.array([1] * len(keep), pa.int8()),
            "classifier_mask": pa.array([1] * len(keep), pa.int8()),
        }
    )
    pq.write_table(table, args.out)
    print(f"{args.out}: {len(keep)} rows, {len(taken)} classes")


if __name__ == "__main__":
    main()
