"""ONNX export of a trained model (text, image or audio): logits and embeddings, checked for parity.

`torch.onnx.export` traces `inference.onnx_module.InferenceModule` (the head's logits, the embedding and, with
stored kNN rows, the kNN vote and the fused prediction), so onnxruntime serves exactly what the PyTorch
backend computes. optimum is not used: optimum-onnx pins transformers < 4.58. The export folder holds
`model.onnx`, the model's `config.json` (labels), its tokenizer / image processor / feature extractor, the
stored kNN rows (`knn_reference.npz`) for retrieval metrics, and `hf_metric_export.json` with the parity
numbers and the featurizer settings the export was checked with (`featurizer`: `max_seq_length`,
`max_audio_seconds`), which serving from the folder uses as its defaults.

Axes: text inputs have dynamic batch and sequence axes; image and audio inputs a dynamic batch axis only (the
featurizer resizes images and cuts or pads clips to `max_audio_seconds`, so the other axes are fixed).

A model with an open-set rejection rule gets one more output, `open_set_scores` (its calibrated score, any of
`open_set_graph.EXPORTABLE_SCORES`), and `hf_metric_export.json` states the rule: a row is out of scope when
``open_set_scores < threshold`` (the threshold is also `config.json`'s `open_set_threshold`); it is then answered
with `out_of_scope_label`. The Mahalanobis statistics are saved too (`open_set_statistics.npz`) for `evaluate`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..atomic import atomic_directory, write_json_atomic
from ..errors import HfMetricUserError
from ..inference.backends import (
    EXPORT_INFO_FILE,
    INPUT_NAMES,
    ONNX_FILE,
    OPEN_SET_STATISTICS_FILE,
    OUTPUT_NAMES,
    OnnxBackend,
    TorchBackend,
)

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
"""Inputs with a dynamic sequence axis (tokens); the other inputs (pixels, audio features) vary in batch only."""

PARITY_TOLERANCE = 1e-4
SAMPLE_TEXTS = (
    "I still have not received my new card",
    "how do I reset my password",
    "why was I charged twice for the same invoice today",
    "hello",
)
"""Rows for the parity check of a text model when the user gives no data file (image and audio models need one)."""


class ExportParityError(HfMetricUserError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance: the export is not kept."""


def export_onnx(
    model_dir: str,
    out_dir: str,
    featurizer: Any,
    samples: list[Any] | None = None,
    opset: int = 18,
    settings: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Export `model_dir` to `out_dir/model.onnx` (+ config, processor, kNN rows) atomically and return the
    parity check: output name -> max |onnxruntime - PyTorch| on `samples` (rows of the input column: texts, or
    image/audio cells; default `SAMPLE_TEXTS` for text); raises `ExportParityError` (and writes nothing) above
    `PARITY_TOLERANCE`. `settings` (the featurizer's `max_seq_length` / `max_audio_seconds`) go into
    `hf_metric_export.json` for serving."""
    import torch

    from ..inference.onnx_module import InferenceModule

    if samples is None and featurizer.input_column != "text":
        raise HfMetricUserError(f"{model_dir}: an {featurizer.input_column} model needs sample rows to export")
    torch_backend = TorchBackend(model_dir)
    samples = list(samples or SAMPLE_TEXTS)
    dummy = featurizer.encode(samples[:2], return_tensors="pt")
    names = [n for n in INPUT_NAMES if n in dummy]
    module = InferenceModule(torch_backend.model, names).eval()
    outputs = list(module.output_names)
    dynamic = {name: {0: "batch", 1: "sequence"} if name in TEXT_INPUTS else {0: "batch"} for name in names}
    dynamic.update({name: {0: "batch"} for name in outputs})
    with atomic_directory(out_dir) as tmp:
        torch.onnx.export(
            module,
            tuple(dummy[n] for n in names),
            os.path.join(tmp, ONNX_FILE),
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
        _save_beside(torch_backend, featurizer, tmp)
        parity = parity_check(torch_backend, OnnxBackend(tmp), featurizer, samples)
        worst = max(parity.values())
        if worst > PARITY_TOLERANCE:
            raise ExportParityError(
                f"{model_dir}: ONNX outputs differ from PyTorch by {worst:.2e} > {PARITY_TOLERANCE} ({parity})"
            )
        info = {"format": "onnx", "opset": opset, "inputs": names, "outputs": outputs, "parity_max_abs_diff": parity}
        info["featurizer"] = {"input_column": featurizer.input_column, **(settings or {})}
        config = torch_backend.model.config
        if config.open_set_threshold is not None:
            info["open_set"] = open_set_rule(config)
        write_json_atomic(os.path.join(tmp, EXPORT_INFO_FILE), info)
    return parity


def _save_beside(torch_backend: Any, featurizer: Any, folder: str) -> None:
    """What serving the graph needs besides it: config (labels, open-set rule), processor, kNN rows, the
    Mahalanobis statistics of an open-set rule."""
    model = torch_backend.model
    model.config.save_pretrained(folder)
    featurizer.processor.save_pretrained(folder)
    if torch_backend.reference is not None:
        emb, labels = torch_backend.reference
        np.savez(os.path.join(folder, "knn_reference.npz"), embeddings=emb.numpy(), labels=labels)
    if model.config.open_set_threshold is not None and model.config.open_set_mahalanobis:
        means, precision = (t.detach().float().cpu().numpy() for t in (model.open_set_means, model.open_set_precision))
        np.savez(os.path.join(folder, OPEN_SET_STATISTICS_FILE), means=means, precision=precision)


def open_set_rule(config: Any) -> dict[str, Any]:
    """The rejection rule an ONNX user applies to the `open_set_scores` output."""
    return {
        "score": config.open_set_score,
        "threshold": config.open_set_threshold,
        "rule": "out of scope when open_set_scores < threshold (float32)",
        "out_of_scope_label": config.out_of_scope_label,
    }


def parity_check(torch_backend: Any, onnx_backend: Any, featurizer: Any, samples: list[Any]) -> dict[str, float]:
    """Max absolute difference per output between the two backends, over batches of 1 and of all `samples`
    (different batch sizes and sequence lengths than the traced example); for `open_set_scores` relative to the
    largest score when that exceeds 1."""
    worst: dict[str, float] = {}
    for batch in ([samples[0]], samples):
        inputs = featurizer.encode(batch)
        a, b = torch_backend(inputs), onnx_backend(inputs)
        for name in OUTPUT_NAMES:
            x, y = getattr(a, name), getattr(b, name)
            if x is not None:
                # open-set scores (a Mahalanobis distance may be in the thousands): relative beyond magnitude 1
                scale = max(1.0, float(np.abs(x).max())) if name == "open_set_scores" else 1.0
                worst[name] = max(worst.get(name, 0.0), float(np.abs(x - y).max()) / scale)
    return worst
