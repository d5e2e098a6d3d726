"""Padding waste of P x K batches, with and without `training.length_grouping`, against the plain Trainer's random
and length-grouped batches (no training, seconds to run; deterministic token counts).

    python -m bench.padding_waste [--data ../shared/data/banking77/train.parquet] [--epochs 3]

Rows are tokenized with the packaged all-MiniLM-L6-v2 tokenizer (truncation at --max-len), batches drawn by the
samplers as the trainers draw them (epochs 0 .. --epochs-1, seed 42), and padded to their longest row as the
collator pads them. Reported per sampler: tokens fed to the model per epoch (batch x longest row, summed), the
share of them that is padding (overall and the median batch). The plain Trainer's length grouping is
`transformers`' `LengthGroupedSampler` (`get_length_grouped_indices`, its generator seeded with seed + epoch).
With a `group` column in the data, the group-aware P x K batches (`training.sampler: group_pk`) are measured too.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "banking77" / "train.parquet"
SEED = 42


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


def orders(labels: np.ndarray, lengths: np.ndarray, groups: list | None, batch: int, k: int) -> dict[str, Callable]:
    """Sampler name -> (epoch -> row order of that epoch)."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from hf_metric.training.group_sampler import GroupPKSampler
    from hf_metric.training.samplers import ClassBalancedBatchSampler

    def plain_grouped(epoch: int) -> np.ndarray:
        generator = torch.Generator()
        generator.manual_seed(SEED + epoch)
        return np.array(get_length_grouped_indices(lengths.tolist(), batch, generator=generator))

    samplers = {
        "P x K": ClassBalancedBatchSampler(labels, batch, k, SEED),
        "P x K, length_grouping": ClassBalancedBatchSampler(labels, batch, k, SEED, lengths),
    }
    if groups is not None:
        class_groups = dict(enumerate(groups))
        samplers["group P x K"] = GroupPKSampler(labels, class_groups, batch, k, seed=SEED)
        samplers["group P x K, length_grouping"] = GroupPKSampler(
            labels, class_groups, batch, k, seed=SEED, lengths=lengths
        )

    def drawn(sampler):
        def order(epoch: int) -> np.ndarray:
            sampler.set_epoch(epoch)
            return np.fromiter(iter(sampler), dtype=np.int64)

        return order

    return {
        "random batches (plain Trainer)": lambda epoch: np.random.default_rng(SEED + epoch).permutation(len(lengths)),
        "plain Trainer, group_by_length": plain_grouped,
        **{name: drawn(sampler) for name, sampler in samplers.items()},
    }


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

    columns = pq.read_schema(args.data).names
    table = pq.read_table(args.data, columns=["text", "label"] + (["group"] if "group" in columns else [])).to_pydict()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    ids = tokenizer(table["text"], truncation=True, max_length=args.max_len)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    names, labels = np.unique(np.asarray(table["label"]), return_inverse=True)
    groups = None
    if "group" in table:
        group_of = dict(zip(table["label"], table["group"], strict=True))
        groups = [group_of[n] for n in names]
    print(f"{args.data}: {len(lengths):,} rows, tokens per row median {np.median(lengths):.0f}, max {lengths.max()}")
    print("| sampler | tokens fed / epoch | padding share | median batch padding | x P x K tokens |")
    print("|---|---|---|---|---|")
    results = {}
    for name, order in orders(labels, lengths, groups, args.batch, args.k).items():
        fed_total = real_total = 0
        shares: list[float] = []
        for epoch in range(args.epochs):
            fed, real, s = batch_tokens(order(epoch), lengths, args.batch)
            fed_total, real_total, shares = fed_total + fed, real_total + real, shares + s
        results[name] = (fed_total / args.epochs, 1 - real_total / fed_total, statistics.median(shares))
    base = results["P x K"][0]
    for name, (fed, share, median_share) in results.items():
        print(f"| {name} | {fed:,.0f} | {share:.3f} | {median_share:.3f} | {fed / base:.3f} |")


if __name__ == "__main__":
    if not __package__:  # run as a file: import hf_metric from this repository, not an installed copy
        import sys

        sys.path.insert(0, str(ROOT))
    main()
