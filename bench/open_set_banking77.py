"""Open-set protocol on Banking77: can the model reject intents it was never trained on?

    python -m bench.open_set_banking77                     # the full protocol, all arms (docs/benchmarks.md)
    python -m bench.open_set_banking77 --intents 12 --max-per-class 8 --epochs 1 --docs /tmp/x.md   # smoke

Protocol (seeded, `--seed` 42): 25 % of the 77 intents become out of scope. Their test rows are the out-of-scope
test rows. Their training rows enter the run's training file with label "oos" (`data.out_of_scope_label`):

- in ``baseline`` and ``recipe`` they are all out-of-scope VALIDATION rows (hf_metric puts them into its
  validation split: never a class, never trained on);
- in ``recipe_oos`` (`open_set.train_with_oos`) hf_metric splits them like a class, with the same seeded
  `stratified_split` and `data.val_ratio` (0.1) as the in-scope intents: 10 % of the out-of-scope training rows
  (drawn across all out-of-scope intents) are out-of-scope VALIDATION rows, the other 90 % are out-of-scope
  TRAINING rows (negatives of every class in SupCon, plus outlier exposure with weight 0.5). The out-of-scope
  test rows come from the same intents as these training rows (known outliers, as CLINC150's "oos" split): the
  arm measures what exposure to the kind of queries to reject buys, not rejection of unseen kinds.

The model trains on the in-scope intents (hf_metric holds out its own `val_ratio` of them for checkpoint selection
and calibration). Thresholds are chosen on each run's validation rows only (in-scope + the out-of-scope
validation rows above); the test file is scored once.

Arms: ``baseline`` (plain CE: linear head, no metric loss, no kNN fusion), ``recipe`` (the example config:
cosine head, CE + 0.2 SupCon, kNN fusion 0.3) and ``recipe_oos`` (the recipe trained with the known out-of-scope
rows as above), each with `open_set.enabled`. For every score the table gives the
threshold-free AUROC and FPR at 95 % in-scope recall on test, and the test operating point of the threshold
calibrated on validation by two criteria: `accuracy_drop` 0.01 (the goal: in-scope accuracy within 1 point of
no rejection) and `accuracy` (in-scope classes + OOS as one class). `auto` is the score the run stored in the
model (criterion `open_set.criterion` of the arm, default `accuracy_drop` 0.01 here).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench.docs_section import write_section
from bench.quality import deep_update, encode

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "configs" / "metric_classifier_training.example.yaml"
OOS = "oos"
ARMS: dict[str, dict[str, Any]] = {
    "baseline": {
        "head": {"type": "linear", "scale": None},
        "model": {"knn_fusion_weight": 0.0},
        "loss": {"metric": {"weight": 0.0}},
    },
    "recipe": {},
    "recipe_oos": {"open_set": {"train_with_oos": True, "outlier_exposure_weight": 0.5}},
}
"""Overrides of the example config per arm (the calibration keys of open_set are added to each)."""
CRITERIA = {"drop1": ("accuracy_drop", 0.01), "acc": ("accuracy", None)}
MARKS = ("<!-- open_set:start -->", "<!-- open_set:end -->")


def split_intents(data_dir: Path, seed: int, share: float, intents: int | None, max_per_class: int | None):
    """Train/test texts and labels with a seeded `share` of the intents out of scope (label `OOS`)."""
    rng = np.random.default_rng(seed)
    train, test = (pq.read_table(data_dir / f"{s}.parquet").to_pydict() for s in ("train", "test"))
    names = sorted(set(train["label"]))
    if intents is not None:  # smoke runs: a seeded subset of the intents
        names = sorted(rng.choice(names, size=intents, replace=False).tolist())
    oos = set(rng.choice(names, size=max(1, round(share * len(names))), replace=False).tolist())

    def rows(table: dict[str, list]) -> tuple[list[str], list[str]]:
        texts, labels, seen = [], [], {}
        for text, label in zip(table["text"], table["label"], strict=True):
            if label not in names or (max_per_class and seen.get(label, 0) >= max_per_class):
                continue
            seen[label] = seen.get(label, 0) + 1
            texts.append(text)
            labels.append(OOS if label in oos else label)
        return texts, labels

    return rows(train), rows(test), sorted(oos)


def arm_config(name: str, parquet: Path, out_dir: Path, epochs: float | None, criterion: str, target) -> dict:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw = deep_update(raw, ARMS[name])
    raw["data"]["parquet_path"] = str(parquet)
    raw["data"]["out_of_scope_label"] = OOS
    raw["checkpointing"]["checkpoints_dir"] = str(out_dir / name)
    raw["metric_validation"]["plots"] = False
    raw["open_set"] = {**raw.get("open_set", {}), "enabled": True, "criterion": criterion, "target": target}
    if epochs is not None:
        raw["training"]["num_epochs"] = epochs
    return raw


def evaluate_arm(best: Path, val: tuple[list[str], list[int]], test: tuple[list[str], list[int]]) -> dict:
    """Per score: test AUROC / FPR95 and the test operating points of thresholds calibrated on `val`."""
    from transformers import AutoTokenizer

    from hf_metric.model.modeling import MetricClassifierModel
    from hf_metric.open_set.calibration import calibrate
    from hf_metric.open_set.evaluation import (
        OpenSetStatistics,
        all_scores,
        operating_point,
        predict_with_rejection,
        threshold_free_metrics,
    )

    model = MetricClassifierModel.from_pretrained(best).eval()
    tokenizer = AutoTokenizer.from_pretrained(best)
    ref_emb = model.knn_reference_embeddings.numpy()
    ref_labels = model.knn_reference_labels.numpy()
    stats = OpenSetStatistics.fit(ref_emb, ref_labels, model.config.num_labels)
    out: dict[str, Any] = {"stored": [model.config.open_set_score, model.config.open_set_threshold]}
    encoded = {}
    for split, (texts, labels) in (("val", val), ("test", test)):
        e = encode(model, tokenizer, np.array(texts, dtype=object))
        encoded[split] = (e["logits"].numpy(), e["head_logits"].numpy(), e["embeddings"].numpy(), np.array(labels))
    logits, head, emb, labels = encoded["val"]
    val_scores = all_scores(logits, emb, stats, labels, head)  # fusion statistics from in-scope val rows
    t_logits, t_head, t_emb, t_labels = encoded["test"]
    test_scores = all_scores(t_logits, t_emb, stats, None, t_head)
    in_scope = t_labels >= 0
    out["no_rejection_in_scope_accuracy"] = float((t_logits.argmax(1) == t_labels)[in_scope].mean())
    out["threshold_free"] = threshold_free_metrics(test_scores, t_labels)
    out["points"] = {}
    for tag, (criterion, target) in CRITERIA.items():
        for name in val_scores:
            cal = calibrate(val_scores, logits, labels, name, criterion, target)
            point = operating_point(predict_with_rejection(t_logits, test_scores[name], cal.threshold), t_labels)
            out["points"][f"{tag}/{name}"] = {"threshold": cal.threshold, "val": cal.metrics, "test": point}
    return out


def table(results: dict[str, dict], command: str) -> str:
    lines = [
        MARKS[0],
        "## Open set on Banking77: 25 % of the intents out of scope (`bench/open_set_banking77.py`)",
        "",
        f"Command: `{command}`. Thresholds chosen on validation rows only; numbers on the test file (%).",
        "",
        "| arm | score | AUROC | FPR95 | in-acc (no rej.) | in-acc @drop1 | OOS rec @drop1 | OOS prec @drop1 "
        "| in-acc @acc | OOS rec @acc |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, r in results.items():
        for name in ("msp", "energy", "knn", "mahalanobis", "fused"):
            tf = r["threshold_free"]
            d, a = r["points"][f"drop1/{name}"]["test"], r["points"][f"acc/{name}"]["test"]
            stored = " (stored)" if r["stored"][0] == name else ""
            lines.append(
                f"| {arm} | {name}{stored} | {100 * tf[f'oos_auroc_{name}']:.2f} | {100 * tf[f'oos_fpr95_{name}']:.2f} "
                f"| {100 * r['no_rejection_in_scope_accuracy']:.2f} | {100 * d['in_scope_accuracy']:.2f} "
                f"| {100 * d['oos_recall']:.2f} | {100 * d['oos_precision']:.2f} | {100 * a['in_scope_accuracy']:.2f} "
                f"| {100 * a['oos_recall']:.2f} |"
            )
    lines.append(MARKS[1])
    return "\n".join(lines)


def main() -> None:
    from hf_metric.data.parquet import read_labeled_parquet
    from hf_metric.data.splits import stratified_split
    from hf_metric.loading import config_from_dict
    from hf_metric.run import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "banking77"))
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--oos-share", type=float, default=0.25)
    parser.add_argument("--arms", nargs="*", default=list(ARMS))
    parser.add_argument("--epochs", type=float, default=None, help="default: the example config's")
    parser.add_argument("--criterion", default="accuracy_drop", help="what the run stores in the model")
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--intents", type=int, default=None, help="smoke: use this many intents only")
    parser.add_argument("--max-per-class", type=int, default=None, help="smoke: rows per intent and split")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "open_set_banking77.json"))
    args = parser.parse_args()

    (train_texts, train_labels), (test_texts, test_labels), oos = split_intents(
        Path(args.data), args.seed, args.oos_share, args.intents, args.max_per_class
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="open_set_"))
    workdir.mkdir(parents=True, exist_ok=True)
    parquet = workdir / "train.parquet"
    pq.write_table(pa.table({"text": train_texts, "label": train_labels}), parquet)
    print(f"{len(oos)} out-of-scope intents: {', '.join(oos)}", flush=True)

    results = {}
    for arm in args.arms:
        raw = arm_config(arm, parquet, workdir, args.epochs, args.criterion, args.target)
        cfg = config_from_dict(copy.deepcopy(raw))
        start = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - start
        # the validation rows of the run: its own split of the in-scope rows, plus every out-of-scope row (or,
        # training with them, the out-of-scope rows of that same split)
        labeled = read_labeled_parquet(parquet, out_of_scope_label=OOS)
        _, val_idx = stratified_split(labeled.labels, cfg.data.val_ratio, cfg.training.seed)
        if not cfg.open_set.train_with_oos:
            val_idx = np.union1d(val_idx, np.flatnonzero(labeled.labels < 0))
        texts = labeled.table.column("text").to_pylist()
        val = ([texts[i] for i in val_idx], labeled.labels[val_idx].tolist())
        label2id = {v: k for k, v in labeled.id2label.items()}
        test = (test_texts, [label2id.get(v, -1) for v in test_labels])
        results[arm] = evaluate_arm(Path(cfg.checkpointing.checkpoints_dir) / "best", val, test)
        results[arm]["seconds"] = round(seconds, 1)
    command = "python -m bench.open_set_banking77 " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k in ("epochs", "intents", "max_per_class", "criterion", "target") and v is not None
    )
    section = table(results, command.strip())
    print("\n" + section, flush=True)
    write_section(Path(args.docs), section, MARKS)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"oos_intents": oos, "args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
