"""Shared fixtures: a tiny random BERT with a word-level tokenizer built here, and synthetic Parquet data.

Each synthetic class has its own keywords, so a 2-layer, 32-wide model learns it in a few dozen steps.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

CLASS_WORDS = {
    "billing": ["invoice", "charge", "refund"],
    "delivery": ["parcel", "courier", "shipping"],
    "account": ["password", "login", "profile"],
    "card": ["visa", "pin", "contactless"],
}
FILLER = ["please", "help", "my", "the", "is", "not", "working", "today", "why", "what", "where", "can", "you"]


def synthetic_rows(per_class: int = 30, seed: int = 0, classes=None) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for label in classes or CLASS_WORDS:
        for _ in range(per_class):
            words = [rng.choice(CLASS_WORDS[label]), *rng.sample(FILLER, 4)]
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": label, "metric_mask": 1, "classifier_mask": 1})
    rng.shuffle(rows)
    return rows


def write_parquet(path: Path, rows: list[dict] | dict[str, list]) -> Path:
    table = pa.table(rows) if isinstance(rows, dict) else pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    return path


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory, monkeypatch) -> Path:
    """A data cache (`hf_metric.data.arrow_cache`) of each test's own, in the session's temporary folder: not the
    user's (a CLI run in a child process still uses the user's)."""
    folder = tmp_path_factory.mktemp("arrow_cache")
    monkeypatch.setattr("hf_metric.data.arrow_cache.cache_folder", lambda: folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT (hidden 32) and its tokenizer, saved like a Hub model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = sorted({w for ws in CLASS_WORDS.values() for w in ws} | set(FILLER))
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3}
    vocab.update({w: i + 4 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    path = tmp_path_factory.mktemp("tiny_bert")
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_config(model_dir: str, parquet_path, checkpoints_dir, **overrides) -> dict:
    """A config dict for a tiny run; each of `overrides` updates its section (a dict) or replaces the key."""
    cfg = {
        "model_name": model_dir,
        # the tiny runs keep the plainest model: linear head, no kNN fusion, CE + 1.0 x SupCon
        "model": {"classifier_dropout": 0.0, "knn_fusion_weight": 0.0},
        "head": {"type": "linear"},
        "loss": {"classification": {"type": "ce", "weight": 1.0}, "metric": {"type": "supcon", "weight": 1.0}},
        "data": {"parquet_path": str(parquet_path), "val_ratio": 0.25},
        "training": {
            "batch_size": 8,
            "samples_per_class": 2,
            "num_epochs": 2,
            "max_seq_length": 16,
            "logging_steps": 5,
            "seed": 0,
        },
        "optimizer": {"learning_rate": 3e-3},
        "scheduler": {"warmup_steps": 0},
        "checkpointing": {"checkpoints_dir": str(checkpoints_dir), "save_best_by": "f1"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def make_config(tmp_path, tiny_model_dir):
    """Write a YAML config for a tiny run (`tiny_config`) and return its path."""

    def _make(parquet_path, **overrides) -> Path:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, parquet_path, tmp_path / "ckpt", **overrides)))
        return path

    return _make


def sampler_batches(sampler):
    """A batch sampler's epoch as an (n_batches, batch_size) index array; every batch full."""
    import numpy as np

    idx = np.fromiter(iter(sampler), dtype=np.int64)
    assert len(idx) == len(sampler) and len(idx) % sampler.batch_size == 0
    return idx.reshape(-1, sampler.batch_size)


def assert_p_by_k_every_epoch(sampler, labels, p: int, k: int, epochs: int = 3) -> None:
    """Every epoch sees every row once, in batches of `p` distinct classes x `k` rows each."""
    import numpy as np

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        batches = sampler_batches(sampler)
        assert set(batches.ravel()) == set(range(len(labels)))
        for batch in batches:
            classes, per_class = np.unique(labels[batch], return_counts=True)
            assert len(classes) == p and (per_class == k).all()


@pytest.fixture
def install_user_module(tmp_path, monkeypatch):
    """`install(name, source)`: a module written into a folder outside the package and importable by name, as a
    user's own module listed under `imports:` would be; forgotten by `sys.modules` afterwards."""
    import sys
    import textwrap

    folder, installed = tmp_path / "user_code", []

    def install(name: str, source: str) -> str:
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(folder))
        installed.append(name)
        return name

    yield install
    for name in installed:
        sys.modules.pop(name, None)


def synthetic_run_config(tmp_path, model_dir: str, **overrides) -> dict:
    """`tiny_config` on 10 synthetic rows per class written to `tmp_path`."""
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    return tiny_config(model_dir, data, tmp_path / "ckpt", **overrides)
