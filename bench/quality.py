"""Does CE + metric learning beat plain cross-entropy? Train both on Banking77 and compare, end to end.

    python -m bench.quality                                   # the comparison: plain CE vs the example config
    python -m bench.quality --protocol val --epochs 2 --variants cosine cosine_proj ...   # ablations

Recipes (same packaged all-MiniLM-L6-v2 backbone, batch 32, lr 1e-4, linear warm-up 10 % / decay, max_len 64):

- ``baseline``: a plain `transformers.Trainer` fine-tuning `AutoModelForSequenceClassification` with CE on
  random batches (what a user would write without hf_metric); its embedding is the mean-pooled, L2-normalised
  last hidden state.
- ``hf_metric`` and the ablation variants: `configs/metric_classifier_training.example.yaml` with only the data
  path, the output folder and the overrides of `VARIANTS` changed, trained by `hf_metric.run.train`.

Protocols: ``test`` trains on the whole train file (hf_metric holds out its own `val_ratio` for checkpoint
selection) and evaluates on the official test file, once per reported candidate. ``val`` (for tuning) trains on
the train file minus a stratified 10 % split (seed 42; the same rows hf_metric's own split holds out) and
evaluates on that split; the test file is not read. ``nested`` is the test protocol one level down, for levers
that change what the test protocol trains on: hf_metric gets only the train file minus that split (and holds out
its own `val_ratio` of it, as under ``test``), and is scored on the split; the test file is not read.

Every model is scored by the same code: classifier accuracy and macro-F1 on the evaluation rows, and the
embedding space by weighted 10-NN classification of evaluation rows against the embeddings of all training rows
(`hf_metric.evaluation.metrics.knn_metrics`). Training time is the wall time of the training call, evaluation included.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
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

from bench.docs_section import append_result
from bench.quality_render import write_docs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "configs" / "metric_classifier_training.example.yaml"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SEED = 42
VAL_RATIO = 0.1
KNN_K = 10
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # scores are computed where the Trainer trained

VARIANTS: dict[str, dict[str, Any]] = {
    "hf_metric": {},
    "ce_only_pk": {"head": {"type": "linear"}, "loss": {"metric": {"weight": 0.0}}},
    "linear_supcon02": {"head": {"type": "linear"}, "loss": {"metric": {"weight": 0.2}}},
    "cosine": {"head": {"type": "cosine", "scale": 30.0}},
    "cosine_nosupcon": {"head": {"type": "cosine", "scale": 30.0}, "loss": {"metric": {"weight": 0.0}}},
    "cosine_proj": {"head": {"type": "cosine", "scale": 30.0}, "model": {"projection_dim": 128}},
    "cosine_supcon1": {"head": {"type": "cosine", "scale": 30.0}, "loss": {"metric": {"weight": 1.0}}},
    "cosine_t03": {"head": {"type": "cosine", "scale": 30.0}, "loss": {"metric": {"temperature": 0.3}}},
    "cosine_k2": {"head": {"type": "cosine", "scale": 30.0}, "training": {"samples_per_class": 2}},
    "cosine_ls01": {"head": {"type": "cosine", "scale": 30.0}, "loss": {"classification": {"label_smoothing": 0.1}}},
    "cosine_cls": {"head": {"type": "cosine", "scale": 30.0}, "model": {"pooling": "cls"}},
    "cosine_s20": {"head": {"type": "cosine", "scale": 20.0}},
    "cosine_headlr10": {"head": {"type": "cosine", "scale": 30.0}, "optimizer": {"head_lr_multiplier": 10.0}},
    "cosine_llrd08": {"head": {"type": "cosine", "scale": 30.0}, "optimizer": {"layerwise_lr_decay": 0.8}},
    "cosface": {"head": {"type": "cosface", "scale": 30.0, "margin": 0.1}},
    "arcface": {"head": {"type": "arcface", "scale": 30.0, "margin": 0.1}},
    "xbm": {"training": {"bank_negatives": {"size": 1024, "start_step": 100}}},
    "ls01": {"loss": {"classification": {"label_smoothing": 0.1}}},
    "headlr10": {"optimizer": {"head_lr_multiplier": 10.0}},
    "llrd08": {"optimizer": {"layerwise_lr_decay": 0.8}},
    "lr5e5": {"optimizer": {"learning_rate": 5.0e-5}},
    "lr2e4": {"optimizer": {"learning_rate": 2.0e-4}},
    "bs64": {"training": {"batch_size": 64}},
    "supcon05": {"loss": {"metric": {"weight": 0.5}}},
    "sched_cosine": {"scheduler": {"name": "cosine"}},
    "refit_all": {"data": {"validate_on_train": True}},
    "length_grouping": {"training": {"length_grouping": True}},
    "no_length_grouping": {"training": {"length_grouping": False}},
}
"""Ablation variants: overrides of the example config, section by section."""


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------- data
def cap_per_class(labels: np.ndarray, rows: np.ndarray, cap: int | None, seed: int = SEED) -> np.ndarray:
    """`rows` with at most `cap` of each label (a seeded draw, kept in file order): a smaller protocol whose
    evaluation rows stay whole."""
    if cap is None:
        return rows
    order = np.random.default_rng(seed).permutation(len(rows))
    taken: dict[Any, int] = {}
    keep = []
    for i in order:
        label = labels[rows[i]]
        if taken.get(label, 0) < cap:
            taken[label] = taken.get(label, 0) + 1
            keep.append(rows[i])
    return np.sort(np.asarray(keep, dtype=rows.dtype))


def load_split(data_dir: Path, protocol: str, workdir: Path, max_per_class: int | None = None) -> dict[str, Any]:
    """Texts and string labels of the training and evaluation rows, and the Parquet file hf_metric trains on
    (`max_per_class`: training rows of each class capped, the evaluation rows kept whole)."""
    from hf_metric.data.prepare import read_labeled_parquet, stratified_split

    train_path = data_dir / "train.parquet"
    labeled = read_labeled_parquet(train_path)
    texts = np.array(labeled.table.column("text").to_pylist(), dtype=object)
    names = np.array([labeled.id2label[i] for i in labeled.labels], dtype=object)
    if protocol in ("val", "nested"):
        # hf_metric's own split of this file (same function, labels, ratio and seed) holds out these rows.
        train_idx, eval_idx = stratified_split(labeled.labels, VAL_RATIO, SEED)
        if max_per_class is not None and protocol == "val":
            raise ValueError("max_per_class would change hf_metric's own split of the val protocol: use nested")
        train_idx = cap_per_class(labeled.labels, train_idx, max_per_class)
        split = {
            "train_texts": texts[train_idx],
            "train_labels": names[train_idx],
            "eval_texts": texts[eval_idx],
            "eval_labels": names[eval_idx],
        }
        if protocol == "val":
            split["val_ratio"] = VAL_RATIO  # hf_metric must hold out exactly these rows
        else:  # the test protocol one level down: hf_metric gets only the training rows, and splits them itself
            texts, names = split["train_texts"], split["train_labels"]
    else:
        keep = cap_per_class(labeled.labels, np.arange(len(texts)), max_per_class)
        texts, names = texts[keep], names[keep]
        test = pq.read_table(data_dir / "test.parquet")
        split = {
            "train_texts": texts,
            "train_labels": names,
            "eval_texts": np.array(test.column("text").to_pylist(), dtype=object),
            "eval_labels": np.array([str(v).strip() for v in test.column("label").to_pylist()], dtype=object),
        }
    # hf_metric reads the whole train file: its split removes the `val` rows itself (protocol val), or keeps
    # `val_ratio` of them aside for checkpoint selection (protocols test and nested).
    parquet = workdir / "train.parquet"
    pq.write_table(pa.table({"text": texts.tolist(), "label": names.tolist()}), parquet)
    split["parquet"] = parquet
    return split


# --------------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def encode(model, tokenizer, texts: np.ndarray, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """Logits (the model's prediction), head logits (before kNN fusion, if any) and L2-normalised embeddings
    of `texts`, in order. Texts are sorted by length so that batches pad little."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    parts: dict[str, list[torch.Tensor]] = {"logits": [], "head_logits": [], "embeddings": []}
    for start in range(0, len(texts), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=64, return_tensors="pt"
        ).to(device)
        out = model(**batch, output_hidden_states=True) if hasattr(model, "bert") else model(**batch)
        if getattr(out, "embeddings", None) is not None:
            emb = out.embeddings
        else:  # plain sequence classifier: mean-pooled last hidden state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            emb = torch.nn.functional.normalize((out.hidden_states[-1] * mask).sum(1) / mask.sum(1), dim=-1)
        head = getattr(out, "classifier_logits", None)
        parts["logits"].append(out.logits.float().cpu())
        parts["head_logits"].append((head if head is not None else out.logits).float().cpu())
        parts["embeddings"].append(emb.float().cpu())
    inverse = torch.from_numpy(np.argsort(order, kind="stable"))
    return {key: torch.cat(chunks)[inverse] for key, chunks in parts.items()}


def score(model, tokenizer, split: dict[str, Any], save_to: Path | None = None) -> dict[str, float]:
    from hf_metric.evaluation.metrics import accuracy, knn_metrics, macro_f1

    id2label = {int(k): v for k, v in model.config.id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    eval_ids = np.array([label2id[v] for v in split["eval_labels"]])
    train_ids = np.array([label2id[v] for v in split["train_labels"]])
    encoded = encode(model, tokenizer, split["eval_texts"])
    logits, head_logits, eval_emb = encoded["logits"], encoded["head_logits"], encoded["embeddings"]
    train_emb = encode(model, tokenizer, split["train_texts"])["embeddings"]
    predictions = logits.argmax(dim=1).numpy()
    head_predictions = head_logits.argmax(dim=1).numpy()
    knn = knn_metrics(eval_emb, eval_ids, train_emb, train_ids, k=KNN_K, ks=None)
    if save_to is not None:  # for offline analysis (e.g. classifier + kNN fusion) without retraining
        np.savez_compressed(
            save_to,
            eval_logits=head_logits.numpy(),
            eval_emb=eval_emb.numpy(),
            eval_ids=eval_ids,
            train_emb=train_emb.numpy(),
            train_ids=train_ids,
        )
    return {
        "accuracy": accuracy(predictions, eval_ids),
        "macro_f1": macro_f1(predictions, eval_ids),
        "head_accuracy": accuracy(head_predictions, eval_ids),
        "head_macro_f1": macro_f1(head_predictions, eval_ids),
        "knn_accuracy": knn["knn_accuracy"],
        "knn_f1": knn["knn_f1"],
    }


# --------------------------------------------------------------------------------------------------- recipes
def baseline_model(path: str | Path, names: list[str], seed: int) -> torch.nn.Module:
    """The plain arm's model, its new classification head drawn from `seed`: `Trainer` seeds only at its own
    construction, after the model exists, so without this the head's init was unseeded and a seed's run could
    not be repeated (HWU64 seed 42: 91.45 then 90.80 % test accuracy)."""
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )


def run_baseline(
    split: dict[str, Any],
    epochs: float,
    workdir: Path,
    seed: int = SEED,
    learning_rate: float = 1e-4,
    max_steps: int = -1,
    model_name: str = MODEL_NAME,
    bf16: bool = False,  # mixed precision, as the recipe's training.mixed_precision: bf16
) -> tuple[dict[str, float], float]:
    """Plain transformers: AutoModelForSequenceClassification + Trainer, CE, random batches (`max_steps` > 0
    overrides `epochs`, for smoke runs)."""
    import datasets
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from hf_metric.packaged_models import resolve_model_path

    path = resolve_model_path(model_name)
    names = sorted(set(split["train_labels"]))
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = baseline_model(path, names, seed)
    train = datasets.Dataset.from_dict(
        {"text": list(split["train_texts"]), "label": [label2id[v] for v in split["train_labels"]]}
    ).map(lambda b: tokenizer(b["text"], truncation=True, max_length=64), batched=True, remove_columns=["text"])
    args = TrainingArguments(
        output_dir=str(workdir / "baseline"),
        per_device_train_batch_size=32,
        num_train_epochs=epochs,
        max_steps=max_steps,
        learning_rate=learning_rate,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        max_grad_norm=1.0,
        save_strategy="no",
        logging_steps=50,
        report_to="none",
        seed=seed,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return score(model, tokenizer, split, _arrays(split, seeded_name("baseline", seed))), seconds


def machine_line() -> str:
    """CPU count and architecture, and the GPU when one trained (the rows' tables are split by it)."""
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{os.cpu_count()} CPU, {platform.machine()}{gpu}"


def seeded_name(name: str, seed: int) -> str:
    """`name` for the default seed (the names of earlier single-seed runs), `name_seedN` otherwise."""
    return name if seed == SEED else f"{name}_seed{seed}"


def _arrays(split: dict[str, Any], name: str) -> Path | None:
    return split["arrays_dir"] / f"{name}.npz" if split.get("arrays_dir") else None


def run_hf_metric(
    split: dict[str, Any], overrides: dict[str, Any], epochs: float | None, workdir: Path, name: str, **options: Any
) -> tuple[dict[str, float], float]:
    """`train_variant` (`options`: its seed and config), then the test/validation scores of the best model."""
    model, tokenizer, seconds = train_variant(split, overrides, epochs, workdir, name, **options)
    return score(model, tokenizer, split, _arrays(split, name)), seconds


def train_variant(
    split: dict[str, Any],
    overrides: dict[str, Any],
    epochs: float | None,
    workdir: Path,
    name: str,
    seed: int = SEED,
    config: Path = EXAMPLE_CONFIG,
):
    """Train `config` (default: the example config) with `overrides` on `split["parquet"]`: (best model, its
    tokenizer, train seconds). `split["val_ratio"]`, if set, replaces the config's `data.val_ratio`."""
    from transformers import AutoTokenizer

    from hf_metric.loading import config_from_dict
    from hf_metric.model.modeling import MetricClassifierModel
    from hf_metric.run import train

    raw = deep_update(yaml.safe_load(Path(config).read_text()), overrides)
    raw["data"]["parquet_path"] = str(split["parquet"])
    if "val_ratio" in split:
        raw["data"]["val_ratio"] = split["val_ratio"]
    raw["training"]["seed"] = seed
    if epochs is not None:
        raw["training"]["num_epochs"] = epochs
    raw["checkpointing"]["checkpoints_dir"] = str(out_dir := workdir / name)
    start = time.perf_counter()
    train(config_from_dict(raw))
    seconds = time.perf_counter() - start
    model = MetricClassifierModel.from_pretrained(out_dir / "best").to(DEVICE)
    return model, AutoTokenizer.from_pretrained(out_dir / "best"), seconds


# ------------------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "banking77"))
    parser.add_argument("--protocol", choices=["test", "val", "nested"], default="test")
    parser.add_argument("--epochs", type=float, default=None, help="default: 5 for the baseline, the config's")
    parser.add_argument("--variants", nargs="*", default=["baseline", "hf_metric"], help="baseline and/or VARIANTS")
    parser.add_argument("--arrays", default=None, help="folder: save eval logits and embeddings per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--max-train-per-class", type=int, default=None, help="a smaller protocol: cap each class's training rows"
    )
    parser.add_argument("--seeds", type=int, default=1, help=f"protocol test: seeds {SEED}, {SEED + 1}, ... each")
    parser.add_argument("--only-seed", type=int, default=None, help="just this one of --seeds (a process per seed)")
    parser.add_argument("--launched-by", default=None, help="the driver's command (bench/quality_sweep.py), recorded")
    parser.add_argument("--max-steps", type=int, default=-1, help="smoke runs: stop every training after N steps")
    parser.add_argument("--model", default=MODEL_NAME, help="both arms' backbone: a Hub id or a local folder")
    parser.add_argument("--bf16", action="store_true", help="both arms in bf16 mixed precision")
    parser.add_argument("--results", default=str(ROOT / "docs" / "quality_results.jsonl"), help="appended")
    parser.add_argument("--run-id", default=None, help="groups rows of one comparison (e.g. processes side by side)")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"), help="update this file ('' = no)")
    parser.add_argument("--render-only", action="store_true", help="only rewrite the docs section from --results")
    args = parser.parse_args()
    if args.render_only:
        write_docs(Path(args.results), Path(args.docs), Path(args.arrays) if args.arrays else None)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = [v for v in args.variants if v != "baseline" and v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: baseline, {', '.join(VARIANTS)}")
    if args.seeds > 1 and args.protocol == "val":
        # hf_metric's own split follows training.seed: another seed would train on quality's val rows
        parser.error("--seeds > 1 needs --protocol test (the val protocol's held-out rows depend on seed 42)")
    rows = []
    run_id = args.run_id or time.strftime("%Y-%m-%dT%H:%M:%S")
    command = "python -m bench.quality " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="hf_metric_quality_") as tmp:
        workdir = Path(tmp)
        split = load_split(Path(args.data), args.protocol, workdir, args.max_train_per_class)
        split["protocol"] = args.protocol
        if args.arrays:
            split["arrays_dir"] = Path(args.arrays) / args.protocol
            split["arrays_dir"].mkdir(parents=True, exist_ok=True)
        steps = {"scheduler": {"num_training_steps": args.max_steps}} if args.max_steps > 0 else {}
        steps |= {"model_name": args.model} | ({"training": {"mixed_precision": "bf16"}} if args.bf16 else {})
        baseline_options = {"max_steps": args.max_steps, "model_name": args.model, "bf16": args.bf16}
        seeds = [SEED + i for i in range(args.seeds)]
        if args.only_seed is not None:
            if args.only_seed not in seeds:
                parser.error(f"--only-seed {args.only_seed} is not one of the --seeds {seeds}")
            seeds = [args.only_seed]
        for seed, name in itertools.product(seeds, args.variants):
            if name == "baseline":
                metrics, seconds = run_baseline(split, args.epochs or 5.0, workdir, seed, **baseline_options)
            else:
                overrides = deep_update(VARIANTS[name], steps)
                metrics, seconds = run_hf_metric(
                    split, overrides, args.epochs, workdir, seeded_name(name, seed), seed=seed
                )
            row = {
                "run_id": run_id,
                "command": command,
                "dataset": Path(args.data).name,
                "seed": seed,
                "seeds": args.seeds,
                "variant": name,
                "protocol": args.protocol,
                "epochs": args.epochs,
                **({"max_train_per_class": args.max_train_per_class} if args.max_train_per_class else {}),
                "seconds": round(seconds, 1),
                **{k: round(v, 4) for k, v in metrics.items()},
                "overrides": VARIANTS.get(name, {}),
                **({"model": args.model} if args.model != MODEL_NAME else {}),
                **({"bf16": True} if args.bf16 else {}),
                "threads": torch.get_num_threads(),
                "load_avg": round(os.getloadavg()[0], 2),
                "machine": machine_line(),
                **({"launched_by": args.launched_by} if args.launched_by else {}),
            }
            rows.append(row)
            append_result(args.results, row)
    if args.docs:
        write_docs(Path(args.results), Path(args.docs), Path(args.arrays) if args.arrays else None)
    print(f"\n| variant | protocol | epochs | accuracy | macro-F1 | kNN acc | kNN F1 | train s |\n|{'---|' * 8}")
    for r in rows:
        print(
            f"| {r['variant']} | {r['protocol']} | {r['epochs'] or 'default'} | {r['accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r['knn_accuracy']:.4f} | {r['knn_f1']:.4f} | {r['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
