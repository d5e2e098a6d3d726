"""Padding waste of P x K batches, with and without `training.length_grouping` (no training, seconds to run).

    python bench/padding_waste.py [--data ../shared/data/banking77/train.parquet] [--epochs 3]

Rows are tokenized with the packaged all-MiniLM-L6-v2 tokenizer (truncation at --max-len), batches drawn by
`ClassBalancedBatchSampler` (P x K) as the trainer draws them, and padded to their longest row as the collator
pads them. Reported per sampler: tokens fed to the model per epoch (batch x longest row, summed), the share of
them that is padding (overall and the median batch), against random batches (plain Trainer) as a reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.parquet"


def batch_tokens(order: np.ndarray, lengths: np.ndarray, batch: int) -> tuple[int, int, list[float]]:
    """(tokens fed, real tokens, padding share of every batch) of consecutive batches of `order`."""
    fed = real = 0
    shares = []
    for start in range(0, len(order) - batch + 1, batch):
        rows = lengths[order[start : start + batch]]
        fed += int(rows.max()) * len(rows)
        real += int(rows.sum())
        shares.append(1 - rows.sum() / (rows.max() * len(rows)))
    return fed, real, shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from hf_metric.packaged_models import resolve_model_path
    from hf_metric.training.samplers import ClassBalancedBatchSampler

    table = pq.read_table(args.data, columns=["text", "label"]).to_pydict()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    ids = tokenizer(table["text"], truncation=True, max_length=args.max_len)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    labels = np.unique(np.asarray(table["label"]), return_inverse=True)[1]
    print(f"{args.data}: {len(lengths):,} rows, tokens per row median {np.median(lengths):.0f}, max {lengths.max()}")
    samplers = {
        "random batches (plain Trainer)": None,
        "P x K (current)": ClassBalancedBatchSampler(labels, args.batch, args.k, seed=42),
        "P x K, length_grouping": ClassBalancedBatchSampler(labels, args.batch, args.k, seed=42, lengths=lengths),
    }
    base = None
    print("| sampler | tokens fed / epoch | padding share | median batch padding | x current P x K tokens |")
    print("|---|---|---|---|---|")
    results = {}
    for name, sampler in samplers.items():
        fed_total = real_total = 0
        shares: list[float] = []
        for epoch in range(args.epochs):
            if sampler is None:
                order = np.random.default_rng(epoch).permutation(len(lengths))
            else:
                sampler.set_epoch(epoch)
                order = np.fromiter(iter(sampler), dtype=np.int64)
            fed, real, s = batch_tokens(order, lengths, args.batch)
            fed_total, real_total, shares = fed_total + fed, real_total + real, shares + s
        results[name] = (fed_total / args.epochs, 1 - real_total / fed_total, statistics.median(shares))
        if name == "P x K (current)":
            base = results[name][0]
    for name, (fed, share, median_share) in results.items():
        print(f"| {name} | {fed:,.0f} | {share:.3f} | {median_share:.3f} | {fed / base:.3f} |")


if __name__ == "__main__":
    main()
