"""Identification of classes never trained on: hf_metric embeddings vs the untuned backbone vs a plain-CE model.

    python -m bench.identification --datasets hwu64 --protocol val               # choose settings here only
    python -m bench.identification --datasets hwu64 banking77 --protocol test    # the table, once at the end
    python -m bench.identification --render-only                                  # rewrite the docs pages

Per dataset (`../shared/data/<name>`, text + label [+ group]) and `--seed`, the classes are split at random:
3/4 train, 1/4 held out. The models train on the train classes' rows of the train file only:

- ``recipe``: hf_metric, `configs/metric_classifier_training.example.yaml` as is (plus `--overrides`);
- ``ce``: the same pipeline as plain cross-entropy: linear head, no metric loss, random batches, no kNN fusion;
- ``untuned``: the pretrained backbone (packaged all-MiniLM-L6-v2), mean pooling, no fine-tuning.

Each held-out class is then enrolled from k of its train-file rows (`--shots`, nested: the 5 rows are the first
of the 10), and its queries are identified among ALL classes: gallery = the train classes' training rows + the
enrolled rows, exact cosine search (`IdentificationEvaluator`). Queries: protocol ``test``, the held-out classes'
rows of the test file; protocol ``val`` (to choose settings; the test file is not read), the train classes are
split again 3/4 : 1/4 and the inner held-out classes' train-file rows after their first max(shots) are the
queries. With a `group` column (HWU64 scenarios) the search is also run within the query's group. Verification
(EER, TAR@FAR) on pairs of the query rows (`sample_pairs`: genuine, random and same-group impostors).
Results: JSON lines in docs/identification_results.jsonl, tables in docs/identification_bench(.ru).md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from bench.docs_section import append_result, read_results
from bench.identification_render import write_docs

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
EXAMPLE_CONFIG = ROOT / "configs" / "metric_classifier_training.example.yaml"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
RESULTS = ROOT / "docs" / "identification_results.jsonl"
MODELS = ("untuned", "recipe", "ce")
CE = {
    "head": {"type": "linear", "scale": None},
    "loss": {"metric": {"weight": 0.0}},
    "training": {"sampler": "random"},
    "model": {"knn_fusion_weight": 0.0},
}
"""Overrides that make the recipe plain cross-entropy (what `transformers.Trainer` + a linear head would train)."""
MAX_LENGTH = 64
REPORTED = ("precision_at_1", "map_at_r", "mrr", "cmc@5", "r_precision", "identification_queries")


# ----------------------------------------------------------------------------------------------------- data
def read_dataset(folder: Path, split: str) -> dict[str, np.ndarray]:
    table = pq.read_table(folder / f"{split}.parquet")
    out = {name: np.array(table.column(name).to_pylist(), dtype=object) for name in ("text", "label")}
    out["label"] = np.array([str(v).strip() for v in out["label"]], dtype=object)
    if "group" in table.column_names:
        out["group"] = np.array(table.column("group").to_pylist(), dtype=object)
    return out


def split_classes(labels: np.ndarray, seed: int) -> tuple[list[str], list[str]]:
    """(train classes, held-out classes): a seeded quarter of the sorted classes is held out (at least one)."""
    classes = sorted(set(labels.tolist()))
    held = max(1, round(len(classes) / 4))
    order = np.random.default_rng(seed).permutation(len(classes))
    return sorted(classes[i] for i in order[held:]), sorted(classes[i] for i in order[:held])


def rows_of(data: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: values[rows] for name, values in data.items()}


def per_class_order(labels: np.ndarray, classes: list[str], seed: int) -> dict[str, np.ndarray]:
    """Each class's row indices in a seeded random order (one generator, classes sorted)."""
    rng = np.random.default_rng(seed)
    return {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}


def cap_rows(labels: np.ndarray, classes: list[str], limit: int | None, seed: int) -> np.ndarray:
    """Rows of `classes`, at most `limit` in all (an equal share per class, seeded), sorted."""
    order = per_class_order(labels, classes, seed)
    share = None if limit is None else max(1, limit // len(classes))
    return np.sort(np.concatenate([rows[:share] for rows in order.values()]))


def build_protocol(data_dir: Path, protocol: str, shots: list[int], seed: int, max_train_rows: int | None) -> dict:
    """The training rows, the gallery's base rows, each held-out class's enrolment rows, and the queries."""
    train = read_dataset(data_dir, "train")
    seen, held = split_classes(train["label"], seed)
    if protocol == "val":
        seen, held = split_classes(rows_of(train, np.flatnonzero(np.isin(train["label"], seen)))["label"], seed + 1)
    train_rows = cap_rows(train["label"], seen, max_train_rows, seed)
    order = per_class_order(train["label"], held, seed)
    for c, rows in order.items():
        if len(rows) < max(shots) + (protocol == "val"):
            raise SystemExit(f"{data_dir}: held-out class {c!r} has {len(rows)} rows, fewer than k = {max(shots)}")
    enrol = {k: np.sort(np.concatenate([rows[:k] for rows in order.values()])) for k in shots}
    if protocol == "val":
        queries = rows_of(train, np.sort(np.concatenate([rows[max(shots) :] for rows in order.values()])))
    else:
        test = read_dataset(data_dir, "test")
        queries = rows_of(test, np.flatnonzero(np.isin(test["label"], held)))
    return {
        "name": data_dir.name,
        "train": rows_of(train, train_rows),
        "enrol": {k: rows_of(train, rows) for k, rows in enrol.items()},
        "queries": queries,
        "held": held,
        "seen": seen,
    }


# --------------------------------------------------------------------------------------------------- models
def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, nested sections key by key."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_update(out[key], value) if nested else value
    return out


def train_model(split: dict, overrides: dict[str, Any], args: argparse.Namespace, workdir: Path) -> tuple[str, float]:
    """Train the example config (+ overrides) on the split's training rows: (best model folder, seconds)."""
    from hf_metric.loading import config_from_dict
    from hf_metric.run import train

    parquet = workdir / "train.parquet"
    columns = {name: split["train"][name].tolist() for name in ("text", "label", "group") if name in split["train"]}
    pq.write_table(pa.table(columns), parquet)
    raw = deep_update(yaml.safe_load(EXAMPLE_CONFIG.read_text()), overrides)
    raw["model_name"] = args.model_name
    raw["data"]["parquet_path"] = str(parquet)
    raw["training"]["seed"] = args.seed
    if args.epochs is not None:
        raw["training"]["num_epochs"] = args.epochs
    raw["checkpointing"]["checkpoints_dir"] = str(workdir / "run")
    start = time.perf_counter()
    train(config_from_dict(raw))
    return str(workdir / "run" / "best"), time.perf_counter() - start


def trained_encoder(model_dir: str):
    """texts -> L2-normalised embeddings of a trained hf_metric model (its inference module, as `embed` uses)."""
    from hf_metric.data.featurize import TextFeaturizer
    from hf_metric.inference.backends import TorchBackend, run_batches

    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend, featurizer = TorchBackend(model_dir, device), TextFeaturizer.from_pretrained(model_dir, MAX_LENGTH)
    return lambda texts: run_batches(backend, featurizer, list(texts), 128).embeddings


def untuned_encoder(model_name: str):
    """texts -> L2-normalised mean-pooled last hidden states of the pretrained backbone (no fine-tuning)."""
    from transformers import AutoModel

    from hf_metric.data.featurize import TextFeaturizer
    from hf_metric.model.pooling import pool
    from hf_metric.packaged_models import resolve_model_path

    path = resolve_model_path(model_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, featurizer = AutoModel.from_pretrained(path).to(device).eval(), TextFeaturizer.from_pretrained(path, 64)

    @torch.inference_mode()
    def encode(texts: np.ndarray) -> np.ndarray:
        order = np.argsort([len(t) for t in texts], kind="stable")
        parts = []
        for start in range(0, len(texts), 128):
            batch = featurizer.encode([texts[i] for i in order[start : start + 128]], return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            states = model(**batch).last_hidden_state
            parts.append(torch.nn.functional.normalize(pool("mean", states, batch["attention_mask"]), dim=-1).cpu())
        out = torch.cat(parts).float().numpy()
        return out[np.argsort(order, kind="stable")]

    return encode


# --------------------------------------------------------------------------------------------------- scoring
def score(split: dict, encode, shots: list[int]) -> list[dict[str, Any]]:
    """One row per k (identification across all classes, and within group when there are groups), plus the
    verification numbers on the query pairs (the same for every k: they need no gallery)."""
    from hf_metric.evaluation.identification import IdentificationEvaluator

    queries, base = split["queries"], split["train"]
    q_emb, base_emb = encode(queries["text"]), encode(base["text"])
    grouped = "group" in queries
    evaluator = IdentificationEvaluator(verification=False)
    verification = evaluator.verification_metrics(q_emb, queries["label"], queries.get("group"))
    rows = []
    for k in shots:
        enrolled = split["enrol"][k]
        g_emb = np.concatenate([base_emb, encode(enrolled["text"])])
        g_labels = np.concatenate([base["label"], enrolled["label"]])
        got = evaluator.evaluate(q_emb, queries["label"], g_emb, g_labels)
        row = {"k": k, **{m: got[m] for m in REPORTED}}
        if grouped:
            g_groups = np.concatenate([base["group"], enrolled["group"]])
            within = IdentificationEvaluator(within_group=True, verification=False)
            got = within.evaluate(
                q_emb, queries["label"], g_emb, g_labels, query_groups=queries["group"], gallery_groups=g_groups
            )
            row.update({f"within_group_{m}": got[m] for m in ("precision_at_1", "map_at_r")})
        rows.append({**row, **{m: v for m, v in verification.items() if not m.startswith("threshold")}})
    return rows


def run_dataset(data_dir: Path, args: argparse.Namespace, run_id: str) -> None:
    split = build_protocol(data_dir, args.protocol, args.shots, args.seed, args.max_train_rows)
    common = {
        "run_id": run_id,
        "command": "python -m bench.identification " + shlex.join(sys.argv[1:]),
        "dataset": split["name"],
        "protocol": args.protocol,
        "seed": args.seed,
        "epochs": args.epochs,
        "max_train_rows": args.max_train_rows,
        "train_rows": len(split["train"]["label"]),
        "train_classes": len(split["seen"]),
        "held_out_classes": len(split["held"]),
        "threads": torch.get_num_threads(),
        "machine": machine_line(),
        "overrides": args.overrides,
    }
    for model in args.models:
        seconds = 0.0
        with tempfile.TemporaryDirectory(prefix=f"ident_{model}_") as tmp:
            if model == "untuned":
                encode = untuned_encoder(args.model_name)
            else:
                overrides = CE if model == "ce" else args.overrides
                model_dir, seconds = train_model(split, overrides, args, Path(tmp))
                encode = trained_encoder(model_dir)
            for row in score(split, encode, args.shots):
                append_result(args.results, {**common, "model": model, "train_seconds": round(seconds, 1), **row})


def machine_line() -> str:
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU, {platform.machine()}{gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--datasets", nargs="+", default=["hwu64", "banking77"], help="../shared/data/<name> or a folder"
    )
    parser.add_argument("--protocol", choices=("val", "test"), default="val")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--shots", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--seed", type=int, default=0, help="the class split, enrolment rows and training seed")
    parser.add_argument("--epochs", type=float, default=None, help="default: the example config's")
    parser.add_argument("--max-train-rows", type=int, default=None, help="cap on training rows (equal per class)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--overrides", type=json.loads, default={}, help="JSON overrides of the recipe's config")
    parser.add_argument("--model-name", default=MODEL_NAME)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--docs", default=str(ROOT / "docs" / "identification_bench"), help="'' writes no docs")
    parser.add_argument("--render-only", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.render_only:
        run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
        for name in args.datasets:
            run_dataset(Path(name) if Path(name).is_dir() else DATA / name, args, run_id)
    if args.docs:
        write_docs(read_results(args.results), Path(args.docs))


if __name__ == "__main__":
    main()
