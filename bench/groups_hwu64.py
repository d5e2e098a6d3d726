"""Grouped identification on HWU64 (64 intents in 18 scenarios): the recommended recipe with and without each
group lever, scored by accuracy, macro-F1 and the error analysis by group.

    python -m bench.groups_hwu64 --protocol val                       # tune: 90 % of train, scored on 10 %
    python -m bench.groups_hwu64 --protocol test --variants recipe all   # once, at the end: the official test

Variants (`VARIANTS`) override the example config (`configs/metric_classifier_training.example.yaml`, the
recommended recipe: cosine head, 0.2 x SupCon, P x K batches, kNN fusion):
- ``recipe``: unchanged; ``group_pk``: group-aware batches; ``curriculum``: group_pk + the hard-group curriculum;
- ``cosface`` / ``pair_margin``: a CosFace head without / with the pair-wise same-group margin;
- ``all``: every lever together.

Protocols as in `bench/quality.py`: ``val`` trains on train minus hf_metric's own stratified 10 % (seed 42) and
scores that split (the test file is not read); ``test`` trains on all of train (hf_metric keeps its `val_ratio`
aside for checkpoint selection) and scores the official test file. Scoring: the best model's predictions on the
evaluation rows; within-group numbers from `hf_metric.evaluation.groups.group_analysis` (group = scenario).
`--limit-per-class N --epochs E` makes a smoke run (N rows per intent); it writes no docs unless asked.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from bench.docs_section import append_result, read_results, table_row, write_section
from bench.quality import SEED, VAL_RATIO, deep_update, encode, train_variant

ROOT = Path(__file__).resolve().parents[1]
GROUP_PK = {"training": {"sampler": "group_pk", "groups_per_batch": 2, "group_mix": 0.25}}
CURRICULUM = {"training": {"hard_group_mining": {"start_epoch": 1, "max_oversample": 3.0, "min_weight": 0.25}}}
COSFACE = {"head": {"type": "cosface", "scale": 30.0, "margin": 0.1}}
PAIR = {"head": {"group_margin": {"same": 0.1, "default": 0.1, "same_group_pair": 0.1}}}
VARIANTS: dict[str, dict[str, Any]] = {
    "recipe": {},
    "group_pk": GROUP_PK,
    "curriculum": deep_update(GROUP_PK, CURRICULUM),
    "cosface": COSFACE,
    "pair_margin": deep_update(COSFACE, PAIR),
    "all": deep_update(deep_update(GROUP_PK, CURRICULUM), deep_update(COSFACE, PAIR)),
}
REPORTED = (
    "within_group_accuracy",
    "within_group_error_share",
    "worst10_groups_error_share",
    "error_rank2_share",
    "error_margin_below_0.005_share",
    "always_failing_classes",
    "within_group_accuracy_2",
    "within_group_accuracy_3-5",
    "within_group_accuracy_6-10",
    "within_group_accuracy_11+",
)
MARKS = ("<!-- groups_hwu64:start -->", "<!-- groups_hwu64:end -->")


def load_split(data_dir: Path, protocol: str, workdir: Path, limit: int | None) -> dict[str, Any]:
    """Training file for hf_metric (with `group`), evaluation texts/labels, and the class -> scenario map."""
    from hf_metric.data.splits import stratified_split

    table = pq.read_table(data_dir / "train.parquet")
    if limit:
        labels = np.array(table.column("label").to_pylist())
        keep = np.concatenate([np.flatnonzero(labels == c)[:limit] for c in np.unique(labels)])
        table = table.take(pa.array(np.sort(keep)))
    parquet = workdir / "train.parquet"
    pq.write_table(table, parquet)
    texts = np.array(table.column("text").to_pylist(), dtype=object)
    names = np.array(table.column("label").to_pylist(), dtype=object)
    groups = dict(zip(names.tolist(), table.column("group").to_pylist(), strict=True))
    if protocol == "val":  # the rows hf_metric's own split holds out (same function, encoded labels, ratio, seed)
        classes = {c: i for i, c in enumerate(sorted(set(names.tolist())))}
        _, eval_idx = stratified_split(np.array([classes[n] for n in names]), VAL_RATIO, SEED)
        eval_texts, eval_labels = texts[eval_idx], names[eval_idx]
    else:
        test = pq.read_table(data_dir / "test.parquet")
        eval_texts = np.array(test.column("text").to_pylist(), dtype=object)
        eval_labels = np.array(test.column("label").to_pylist(), dtype=object)
        groups.update(zip(eval_labels.tolist(), test.column("group").to_pylist(), strict=True))
    split = {"parquet": parquet, "eval_texts": eval_texts, "eval_labels": eval_labels, "groups": groups}
    return {**split, "protocol": protocol}


def score(model, tokenizer, split: dict[str, Any]) -> dict[str, float]:
    from hf_metric.evaluation.groups import group_analysis
    from hf_metric.evaluation.metrics import accuracy, macro_f1

    id2label = {int(k): v for k, v in model.config.id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    labels = np.array([label2id[v] for v in split["eval_labels"]])
    logits = encode(model, tokenizer, split["eval_texts"])["logits"].numpy()
    class_group = np.array([split["groups"][id2label[i]] for i in range(len(id2label))], dtype=object)
    analysis = group_analysis(logits, labels, class_group)
    predictions = logits.argmax(axis=1)
    out = {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}
    out.update({k: analysis.metrics[k] for k in REPORTED if k in analysis.metrics})
    return out


def run_variant(split: dict[str, Any], name: str, args: argparse.Namespace, workdir: Path) -> tuple[dict, float]:
    overrides = deep_update(VARIANTS[name], {"metric_validation": {"plots": False}})
    model, tokenizer, seconds = train_variant(split, overrides, args.epochs, workdir, name)
    return score(model, tokenizer, split), seconds


def write_docs(results: Path, docs: Path) -> None:
    """Rewrite this benchmark's section of docs/benchmarks.md: the latest run of each protocol."""
    rows = read_results(results)
    lines = [MARKS[0], "## Grouped identification on HWU64 (`bench/groups_hwu64.py`)", ""]
    lines += [
        "64 intents in 18 scenarios (group = scenario), fold 1 (9,960 train / 1,076 test rows), packaged "
        "all-MiniLM-L6-v2, the example config with one lever changed per row. within-group acc: the best class "
        "among the intents of the true scenario; in-group errors: errors predicting an intent of the same "
        "scenario; rank 2 / margin < 0.005: shares of the errors.",
        "",
    ]
    for protocol in ("val", "test"):
        run = [r for r in rows if r["protocol"] == protocol]
        if not run:
            continue
        latest = run[-1]["run_id"]
        run = [r for r in run if r["run_id"] == latest]
        lines += [f"### {protocol} (`{run[0]['command']}`, run {latest})", ""]
        lines += [
            "| variant | accuracy | macro-F1 | within-group acc | in-group errors | worst-10 groups | rank 2 "
            "| margin < 0.005 | always failing | train s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in run:
            shares = ("within_group_error_share", "worst10_groups_error_share", "error_rank2_share")
            lines.append(
                table_row(
                    [r["variant"], f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}"]
                    + [f"{r.get('within_group_accuracy', float('nan')):.4f}"]
                    + [f"{r[key]:.3f}" for key in (*shares, "error_margin_below_0.005_share")]
                    + [f"{r['always_failing_classes']:.0f}", f"{r['seconds']:.0f}"]
                )
            )
        lines.append("")
    lines.append(MARKS[1])
    write_section(docs, "\n".join(lines), MARKS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "hwu64"))
    parser.add_argument("--protocol", choices=["val", "test"], default="val")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--epochs", type=float, default=None, help="default: the example config's")
    parser.add_argument("--limit-per-class", type=int, default=None, help="smoke runs: this many rows per intent")
    parser.add_argument("--results", default=str(ROOT / "docs" / "groups_hwu64_results.jsonl"), help="appended")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"), help="update this file ('' = no)")
    args = parser.parse_args()
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    run_id, command = time.strftime("%Y-%m-%dT%H:%M:%S"), "python -m bench.groups_hwu64 " + " ".join(sys.argv[1:])
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf_metric_groups_") as tmp:
        split = load_split(Path(args.data), args.protocol, Path(tmp), args.limit_per_class)
        for name in args.variants:
            metrics, seconds = run_variant(split, name, args, Path(tmp))
            row = {"run_id": run_id, "command": command, "variant": name, "protocol": args.protocol}
            row.update({"epochs": args.epochs, "seconds": round(seconds, 1), "overrides": VARIANTS[name]})
            row.update({k: round(float(v), 4) for k, v in metrics.items()})
            row.update({"threads": torch.get_num_threads(), "load_avg": round(os.getloadavg()[0], 2)})
            rows.append(row)
            append_result(args.results, row)
    if args.docs:
        write_docs(Path(args.results), Path(args.docs))


if __name__ == "__main__":
    main()
