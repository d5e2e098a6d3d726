"""A classification head on its own: weights and config in one safetensors file, loadable onto a backbone.

The head sees only the pooled output, so a head trained on a backbone works on any model with that backbone
and pooling: keep several heads (label sets, head types) for one encoder and swap them for inference. The
file holds the head's state dict; its metadata holds what rebuilds it (type, kwargs, labels, width, pooling).
`hf_metric.training.finalize` writes `head.safetensors` next to the best model.
"""

from __future__ import annotations

import json
import os

import torch
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..model.heads import build_head
from ..model.modeling import MetricClassifierConfig, MetricClassifierModel

HEAD_FILE = "head.safetensors"
HEAD_FORMAT = "hf_metric.Head/1"


def _head_file(path: str | os.PathLike) -> str:
    path = str(path)
    return os.path.join(path, HEAD_FILE) if os.path.isdir(path) else path


def write_head_file(state: dict[str, torch.Tensor], config: MetricClassifierConfig, path: str | os.PathLike) -> str:
    """Write a head's state dict with `config`'s head settings as metadata; returns the file written."""
    from safetensors.torch import save_file

    path = _head_file(path)
    metadata = {
        "format": HEAD_FORMAT,
        "head_type": config.head_type,
        "head_kwargs": json.dumps(config.head_kwargs or {}),
        "id2label": json.dumps({str(i): name for i, name in config.id2label.items()}),
        "in_features": str(config.hidden_size),
        "pooling": config.pooling,
    }
    save_file({name: t.detach().cpu().contiguous() for name, t in state.items()}, path, metadata=metadata)
    return path


def save_head(model: MetricClassifierModel, path: str | os.PathLike) -> str:
    """Write `model.head` to `path` (a folder gets `head.safetensors`); returns the file written."""
    return write_head_file(model.head.state_dict(), model.config, path)


def export_head(model_dir: str | os.PathLike) -> str:
    """Write `head.safetensors` into a saved model folder, from its own weights and config (without building
    the model: the main process of a sharded run has no full copy in memory)."""
    from safetensors import safe_open

    model_dir = str(model_dir)
    index = os.path.join(model_dir, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = [SAFE_WEIGHTS_NAME]
    prefix, state = "head.", {}
    for name in files:
        with safe_open(os.path.join(model_dir, name), framework="pt") as f:
            state.update({k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})  # noqa: SIM118
    return write_head_file(state, MetricClassifierConfig.from_pretrained(model_dir), model_dir)


def load_head(model: MetricClassifierModel, path: str | os.PathLike) -> MetricClassifierModel:
    """Replace `model.head` by the head saved at `path` (a file or a folder holding `head.safetensors`).

    The model's config takes the head's type, kwargs and labels, so `save_pretrained` afterwards saves a model
    that predicts with this head. Raises `ValueError` if the width or pooling differ from the model's.
    """
    from safetensors import safe_open

    path = _head_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    if meta.get("format") != HEAD_FORMAT:
        raise ValueError(f"{path}: not a head file (format {meta.get('format')!r}, expected {HEAD_FORMAT!r})")
    config = model.config
    width, pooling = int(meta["in_features"]), meta["pooling"]
    if width != config.hidden_size or pooling != config.pooling:
        raise ValueError(
            f"{path}: head trained on {pooling}-pooled width {width}, model has {config.pooling} width "
            f"{config.hidden_size}"
        )
    id2label = {int(i): name for i, name in json.loads(meta["id2label"]).items()}
    head_kwargs = json.loads(meta["head_kwargs"])
    head = build_head(meta["head_type"], width, len(id2label), **head_kwargs)
    head.load_state_dict(state)
    model.head = head.to(device=model.device, dtype=model.dtype)
    config.head_type, config.head_kwargs = meta["head_type"], head_kwargs or None
    config.id2label, config.label2id = id2label, {name: i for i, name in id2label.items()}
    config.class_margins = None  # training-only margins belonged to the old label set
    model.class_margins = None
    return model
