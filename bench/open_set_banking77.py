"""Open-set protocol on Banking77: can the model reject intents it was never trained on?

    python -m bench.open_set_banking77                     # the full protocol, all arms (docs/benchmarks.md)
    python -m bench.open_set_banking77 --intents 12 --max-per-class 8 --max-steps 1 --docs /tmp/x.md   # smoke

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

Two protocols (`--oos-train-rows`, default both): ``all`` (above: every training row of the out-of-scope
intents is known, thousands) and ``N`` (known outliers are few, e.g. 100: a hand-collected list of off-topic
queries): only N seeded rows of the out-of-scope intents' training rows enter the training file, the rest are
dropped; the out-of-scope test rows are unchanged. With N = 100 the ``recipe_oos`` arm validates on about 10 of
them, the other arms on all N.

The model trains on the in-scope intents (hf_metric holds out its own `val_ratio` of them for checkpoint selection
and calibration). Thresholds are chosen on each run's validation rows only (in-scope + the out-of-scope
validation rows above); the test file is scored once.

Arms: ``baseline`` (plain CE: linear head, no metric loss, no kNN fusion), ``recipe`` (the example config:
cosine head, CE + 0.2 SupCon, kNN fusion 0.3) and ``recipe_oos`` (the recipe trained with the known out-of-scope
rows as above), each with `open_set.enabled`. For every score the table gives the
threshold-free AUROC and FPR at 95 % in-scope recall on test, and the test operating point of the threshold
calibrated on validation by three criteria: `auto` (the package default: best accuracy with at least
`MIN_OOS_ROWS` out-of-scope validation rows, else 95 % in-scope recall), `accuracy_drop` 0.01 (the goal: in-scope
accuracy within 1 point of no rejection) and `accuracy` (in-scope classes + OOS as one class). "(stored)" marks the
score the run stored in the model (criterion `open_set.criterion` of the arm: `--criterion`, default `auto`).
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
CRITERIA = {"auto": ("auto", None), "drop1": ("accuracy_drop", 0.01), "acc": ("accuracy", None)}
NAMES = {"banking77": "Banking77", "hwu64": "HWU64"}


def marks_of(dataset: str) -> tuple[str, str]:
    """The docs section of a data set: Banking77's is the historical `open_set` one, every other its own."""
    tag = "open_set" if dataset == "banking77" else f"open_set_{dataset}"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


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


def keep_known_outliers(texts: list[str], labels: list[str], rows: int | None, seed: int):
    """The training rows with only `rows` seeded out-of-scope rows kept (None: all of them)."""
    oos = np.flatnonzero(np.array(labels, dtype=object) == OOS)
    if rows is None or rows >= len(oos):
        return texts, labels
    drop = set(np.random.default_rng(seed).permutation(oos)[rows:].tolist())
    keep = [i for i in range(len(texts)) if i not in drop]
    return [texts[i] for i in keep], [labels[i] for i in keep]


def arm_config(
    name: str, parquet: Path, out_dir: Path, epochs: float | None, criterion: str, target, max_steps: int = -1
) -> dict:
    raw = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    raw = deep_update(raw, ARMS[name])
    raw["data"]["parquet_path"] = str(parquet)
    raw["data"]["out_of_scope_label"] = OOS
    raw["checkpointing"]["checkpoints_dir"] = str(out_dir / name)
    raw["metric_validation"]["plots"] = False
    raw["open_set"] = {**raw.get("open_set", {}), "enabled": True, "criterion": criterion, "target": target}
    if epochs is not None:
        raw["training"]["num_epochs"] = epochs
    if max_steps > 0:
        raw = deep_update(raw, {"scheduler": {"num_training_steps": max_steps}})
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


def table(results: dict[str, dict[str, dict]], command: str, dataset: str = "banking77") -> str:
    """`results`: known out-of-scope training rows ("all" or N) -> arm -> `evaluate_arm`'s result."""
    lines = [
        marks_of(dataset)[0],
        f"## Open set on {NAMES.get(dataset, dataset)}: 25 % of the intents out of scope "
        "(`bench/open_set_banking77.py`)",
        "",
        f"Command: `{command}`. Thresholds chosen on validation rows only; numbers on the test file (%). "
        "known OOS: out-of-scope training rows the run may use (all, or a seeded few); val OOS: how many of them "
        "validate (what `auto` weighs).",
        "",
        "| known OOS | val OOS | arm | score | AUROC | FPR95 | in-acc (no rej.) | in-acc @auto | OOS rec @auto "
        "| in-acc @drop1 | OOS rec @drop1 | OOS prec @drop1 | in-acc @acc | OOS rec @acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for known, arms in results.items():
        for arm, r in arms.items():
            for name in ("msp", "energy", "knn", "mahalanobis", "fused"):
                tf, points = r["threshold_free"], r["points"]
                u, d, a = (points[f"{tag}/{name}"]["test"] for tag in ("auto", "drop1", "acc"))
                stored = " (stored)" if r["stored"][0] == name else ""
                lines.append(
                    f"| {known} | {r.get('val_oos_rows', '')} | {arm} | {name}{stored} "
                    f"| {100 * tf[f'oos_auroc_{name}']:.2f} | {100 * tf[f'oos_fpr95_{name}']:.2f} "
                    f"| {100 * r['no_rejection_in_scope_accuracy']:.2f} | {100 * u['in_scope_accuracy']:.2f} "
                    f"| {100 * u['oos_recall']:.2f} | {100 * d['in_scope_accuracy']:.2f} "
                    f"| {100 * d['oos_recall']:.2f} | {100 * d['oos_precision']:.2f} "
                    f"| {100 * a['in_scope_accuracy']:.2f} | {100 * a['oos_recall']:.2f} |"
                )
    lines.append(marks_of(dataset)[1])
    return "\n".join(lines)


def known_rows(value: str) -> int | None:
    """`--oos-train-rows` values: "all" or a positive count."""
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or a positive count, got {value!r}")
    return int(value)


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
    parser.add_argument("--criterion", default="auto", help="what the run stores in the model (default: auto)")
    parser.add_argument("--target", type=float, default=None)
    parser.add_argument(
        "--oos-train-rows",
        nargs="+",
        type=known_rows,
        default=[None, 100],
        metavar="N",
        help="known out-of-scope training rows per protocol: all, or a seeded few (default: all 100, both)",
    )
    parser.add_argument("--max-steps", type=int, default=-1, help="smoke: stop every training after N steps")
    parser.add_argument("--intents", type=int, default=None, help="smoke: use this many intents only")
    parser.add_argument("--max-per-class", type=int, default=None, help="smoke: rows per intent and split")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "open_set_banking77.json"))
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="only render: join the --out files of runs made side by side (one process per protocol or arm)",
    )
    args = parser.parse_args()
    if args.merge:
        merge_runs([Path(p) for p in args.merge], args.docs, Path(args.out))
        return

    (train_texts, train_labels), (test_texts, test_labels), oos = split_intents(
        Path(args.data), args.seed, args.oos_share, args.intents, args.max_per_class
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="open_set_"))
    print(f"{len(oos)} out-of-scope intents: {', '.join(oos)}", flush=True)

    results: dict[str, dict[str, dict]] = {}
    for known in args.oos_train_rows:
        protocol = "all" if known is None else str(known)
        folder = workdir / f"known_{protocol}"
        folder.mkdir(parents=True, exist_ok=True)
        parquet = folder / "train.parquet"
        texts, labels = keep_known_outliers(train_texts, train_labels, known, args.seed)
        pq.write_table(pa.table({"text": texts, "label": labels}), parquet)
        results[protocol] = {}
        for arm in args.arms:
            raw = arm_config(arm, parquet, folder, args.epochs, args.criterion, args.target, args.max_steps)
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
            column = labeled.table.column("text").to_pylist()
            val = ([column[i] for i in val_idx], labeled.labels[val_idx].tolist())
            label2id = {v: k for k, v in labeled.id2label.items()}
            test = (test_texts, [label2id.get(v, -1) for v in test_labels])
            result = evaluate_arm(Path(cfg.checkpointing.checkpoints_dir) / "best", val, test)
            result["val_oos_rows"] = int((labeled.labels[val_idx] < 0).sum())
            result["seconds"] = round(seconds, 1)
            results[protocol][arm] = result
    command = "python -m bench.open_set_banking77 " + " ".join(
        f"--{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k in ("epochs", "intents", "max_per_class", "criterion", "target", "max_steps") and v is not None and v != -1
    )
    command += " --oos-train-rows " + " ".join("all" if n is None else str(n) for n in args.oos_train_rows)
    if Path(args.data).name != "banking77":
        command += f" --data {args.data}"
    if args.arms != list(ARMS):
        command += " --arms " + " ".join(args.arms)
    dataset = Path(args.data).name
    section = table(results, command.strip(), dataset)
    print("\n" + section, flush=True)
    if args.docs:
        write_section(Path(args.docs), section, marks_of(dataset))
    run = {"oos_intents": oos, "dataset": dataset, "args": vars(args), "command": command.strip(), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(run, indent=2))


def merge_runs(paths: list[Path], docs: str, out: Path) -> None:
    """One table of several runs made side by side (each its own process and `--out`): protocols and arms joined
    in the order given; the runs must have held out the same intents."""
    runs = [json.loads(p.read_text()) for p in paths]
    if any(r["oos_intents"] != runs[0]["oos_intents"] for r in runs):
        raise SystemExit("the runs held out different intents (--seed / --oos-share differ): not one protocol")
    results: dict[str, dict[str, dict]] = {}
    for r in runs:
        for known, arms in r["results"].items():
            results.setdefault(known, {}).update(arms)
    command = "` and, side by side, `".join(r["command"] for r in runs)
    dataset = runs[0].get("dataset", "banking77")
    section = table(results, command, dataset)
    print(section, flush=True)
    if docs:
        write_section(Path(docs), section, marks_of(dataset))
    merged = {"oos_intents": runs[0]["oos_intents"], "commands": [r["command"] for r in runs], "results": results}
    out.write_text(json.dumps(merged, indent=2))


if __name__ == "__main__":
    main()
