"""Shared by bench/audio_spoken_words.py and bench/image_digits.py: train one from-scratch backbone per recipe
(same backbone, epochs and seed), then score the best checkpoint (chosen on a validation split of train,
never on test) on the held-out test file.

Recipes (config overrides on the modality's quickstart YAML):
- `ce_linear`: plain cross-entropy, linear head, random batches, no augmentation, no metric loss;
- `ce_class_weights`: the same with inverse-frequency class weights (focal loss with gamma 0 and alpha = class
  weights is exactly the class-weighted cross-entropy);
- `focal`: focal loss (gamma 2), otherwise as `ce_linear`;
- `recipe`: the recommended metric-learning recipe: the quickstart as it ships (cosine head, P x K batches,
  CE + SupCon on a projected embedding, augmentation on).

Test metrics: accuracy, macro-F1, macro-F1 over the `rare` least frequent training classes, kNN accuracy
(k=10, cosine, reference = the training rows' embeddings) and training wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.quality import deep_update

ROOT = Path(__file__).resolve().parents[1]

PLAIN = {"training": {"sampler": "random"}, "model": {"knn_fusion_weight": 0.0}, "head": {"type": "linear"}}
RECIPES: dict[str, dict[str, Any]] = {
    "ce_linear": {**PLAIN, "loss": {"metric": {"weight": 0.0}}, "augment": False},
    "ce_class_weights": {**PLAIN, "loss": {"metric": {"weight": 0.0}}, "augment": False, "class_weights": True},
    "focal": {**PLAIN, "loss": {"classification": {"type": "focal"}, "metric": {"weight": 0.0}}},
    "recipe": {},
}
RECIPES["focal"]["augment"] = False


def recipe_config(base: dict, name: str, train_path: str, out_dir: Path, epochs: float, max_steps: int | None):
    from hf_metric.data.parquet import read_labeled_parquet

    override = dict(RECIPES[name])
    augment = override.pop("augment", True)
    class_weights = override.pop("class_weights", False)
    raw = deep_update(base, override)
    raw["data"]["parquet_path"] = train_path
    raw["training"]["num_epochs"] = epochs
    raw["checkpointing"]["checkpoints_dir"] = str(out_dir / name)
    raw["metric_validation"] = {"plots": False}
    if max_steps:
        raw.setdefault("scheduler", {})["num_training_steps"] = max_steps
        raw["checkpointing"]["save_every_n_batches"] = max_steps
    for key in ("image_augment", "audio_augment"):
        if key in raw["data"]:
            raw["data"][key]["enabled"] = bool(augment) and raw["data"][key].get("enabled", False)
    if class_weights:
        counts = np.bincount(read_labeled_parquet(train_path).labels).astype(float)
        weights = counts.sum() / (len(counts) * counts)
        raw.setdefault("loss", {})["classification"] = {"type": "focal", "gamma": 0.0, "alpha": weights.tolist()}
    return raw


def test_scores(best_dir: Path, train_path: str, test_path: str, rare: int, batch_size: int = 64) -> dict:
    """Accuracy, macro-F1, rare-class macro-F1 and kNN accuracy of the saved model on the test file."""
    import torch
    from sklearn.metrics import f1_score

    import hf_metric  # noqa: F401  (registers the model classes)
    from hf_metric.data.featurize import featurizer_for
    from hf_metric.data.parquet import input_column_of, read_labeled_parquet
    from hf_metric.evaluation.metrics import knn_predict
    from hf_metric.model.modeling import MetricClassifierModel

    model = MetricClassifierModel.from_pretrained(best_dir).eval()
    label2id = {name: int(i) for name, i in model.config.label2id.items()}
    column = input_column_of(test_path)
    featurizer = featurizer_for(str(best_dir), column, settings=_settings(best_dir))

    def embed(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import datasets

        labeled = read_labeled_parquet(path)
        featurizer.source = path
        ds = featurizer.prepare(datasets.Dataset(labeled.table), train=False)
        names = [labeled.id2label[i] for i in labeled.labels]
        logits, embeddings = [], []
        with torch.no_grad():
            for start in range(0, len(ds), batch_size):
                batch = ds[start : start + batch_size]
                inputs = {k: v for k, v in batch.items() if k not in ("labels", "metric_mask", "classifier_mask")}
                out = model(**inputs)
                logits.append(out.logits)
                embeddings.append(out.embeddings)
        return torch.cat(logits).numpy(), torch.cat(embeddings).numpy(), np.array([label2id[n] for n in names])

    _, train_emb, train_y = embed(train_path)
    logits, test_emb, test_y = embed(test_path)
    pred = logits.argmax(-1)
    counts = np.bincount(train_y, minlength=len(label2id))
    rare_ids = np.argsort(counts, kind="stable")[:rare]
    knn, _ = knn_predict(torch.tensor(test_emb), torch.tensor(train_emb), train_y, k=10, distance="cos")
    return {
        "test_accuracy": float((pred == test_y).mean()),
        "test_macro_f1": float(f1_score(test_y, pred, average="macro")),
        f"test_macro_f1_rarest_{rare}": float(f1_score(test_y, pred, labels=rare_ids, average="macro")),
        "test_knn_accuracy": float((np.asarray(knn) == test_y).mean()),
    }


def _settings(best_dir: Path):
    from hf_metric.data.featurize import FeaturizerSettings

    resolved = yaml.safe_load((best_dir.parent / "resolved_config.yaml").read_text())
    data = resolved["data"]
    return FeaturizerSettings(data=type("Data", (), {"max_audio_seconds": data["max_audio_seconds"]})())


def run(modality_yaml: str, train_path: str, test_path: str, rare: int, args: Any) -> dict:
    from hf_metric.loading import config_from_dict
    from hf_metric.run import train

    base = yaml.safe_load((ROOT / "configs" / modality_yaml).read_text())
    out_dir = Path(args.out_dir)
    results = {}
    for name in args.recipes:
        raw = recipe_config(base, name, train_path, out_dir, args.epochs, args.max_steps)
        start = time.perf_counter()
        val = train(config_from_dict(raw))
        seconds = time.perf_counter() - start
        scores = test_scores(out_dir / name / "best", train_path, test_path, rare)
        results[name] = {**scores, "val_macro_f1": val["eval_f1"], "train_seconds": round(seconds, 1)}
        print(name, json.dumps(results[name]), flush=True)
    keys = ["test_accuracy", "test_macro_f1", f"test_macro_f1_rarest_{rare}", "test_knn_accuracy"]
    print(f"\n| recipe | accuracy | macro-F1 | macro-F1 ({rare} rarest) | kNN accuracy | val macro-F1 | train s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cells = " | ".join(f"{100 * r[k]:.2f}" for k in keys)
        print(f"| {name} | {cells} | {100 * r['val_macro_f1']:.2f} | {r['train_seconds']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"epochs": args.epochs, "results": results}, indent=2))
    return results


def add_arguments(parser: Any, epochs: float, out: str) -> None:
    parser.add_argument("--epochs", type=float, default=epochs)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--max-steps", type=int, default=None, help="smoke test: stop every run after N steps")
    parser.add_argument("--out-dir", default=str(ROOT / "checkpoints" / out))
    parser.add_argument("--json", default=None, help="also write the results here")
