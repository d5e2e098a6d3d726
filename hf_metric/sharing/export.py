"""ONNX export of a trained model: logits and embeddings with dynamic batch and sequence axes, checked for parity.

`torch.onnx.export` traces `inference.onnx_module.InferenceModule` (the head's logits, the embedding and, with
stored kNN rows, the kNN vote and the fused prediction), so onnxruntime serves exactly what the PyTorch
backend computes. optimum is not used: optimum-onnx pins transformers < 4.58. The export folder holds
`model.onnx`, the model's `config.json` (labels), its tokenizer, the stored kNN rows (`knn_reference.npz`) for
retrieval metrics, and `hf_metric_export.json` with the parity numbers.

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
    ONNX_FILE,
    OPEN_SET_STATISTICS_FILE,
    OUTPUT_NAMES,
    OnnxBackend,
    TorchBackend,
)

PARITY_TOLERANCE = 1e-4
SAMPLE_TEXTS = (
    "I still have not received my new card",
    "how do I reset my password",
    "why was I charged twice for the same invoice today",
    "hello",
)
"""Rows for the parity check when the user gives no data file."""


class ExportParityError(HfMetricUserError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance: the export is not kept."""


def export_onnx(
    model_dir: str, out_dir: str, featurizer: Any, sample_texts: list[str] | None = None, opset: int = 18
) -> dict[str, float]:
    """Export `model_dir` to `out_dir/model.onnx` (+ config, tokenizer, kNN rows) atomically and return the
    parity check: output name -> max |onnxruntime - PyTorch| on `sample_texts`; raises `ExportParityError`
    (and writes nothing) above `PARITY_TOLERANCE`."""
    import torch

    torch_backend = TorchBackend(model_dir)
    module = torch_backend.module
    texts = list(sample_texts or SAMPLE_TEXTS)
    dummy = featurizer.encode(texts[:2], return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in dummy]
    outputs = list(module.output_names)
    dynamic = {name: {0: "batch", 1: "sequence"} for name in names}
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
        torch_backend.model.config.save_pretrained(tmp)
        featurizer.processor.save_pretrained(tmp)
        if torch_backend.reference is not None:
            emb, labels = torch_backend.reference
            np.savez(os.path.join(tmp, "knn_reference.npz"), embeddings=emb.numpy(), labels=labels)
        config = torch_backend.model.config
        if config.open_set_threshold is not None and config.open_set_mahalanobis:
            model = torch_backend.model
            means, precision = (
                t.detach().float().cpu().numpy() for t in (model.open_set_means, model.open_set_precision)
            )
            np.savez(os.path.join(tmp, OPEN_SET_STATISTICS_FILE), means=means, precision=precision)
        parity = parity_check(torch_backend, OnnxBackend(tmp), featurizer, texts)
        worst = max(parity.values())
        if worst > PARITY_TOLERANCE:
            raise ExportParityError(
                f"{model_dir}: ONNX outputs differ from PyTorch by {worst:.2e} > {PARITY_TOLERANCE} ({parity})"
            )
        info = {"format": "onnx", "opset": opset, "outputs": outputs, "parity_max_abs_diff": parity}
        if config.open_set_threshold is not None:
            info["open_set"] = open_set_rule(config)
        write_json_atomic(os.path.join(tmp, EXPORT_INFO_FILE), info)
    return parity


def open_set_rule(config: Any) -> dict[str, Any]:
    """The rejection rule an ONNX user applies to the `open_set_scores` output."""
    return {
        "score": config.open_set_score,
        "threshold": config.open_set_threshold,
        "rule": "out of scope when open_set_scores < threshold (float32)",
        "out_of_scope_label": config.out_of_scope_label,
    }


def parity_check(torch_backend: Any, onnx_backend: Any, featurizer: Any, texts: list[str]) -> dict[str, float]:
    """Max absolute difference per output between the two backends, over batches of 1 and of all `texts`
    (different batch sizes and sequence lengths than the traced example); for `open_set_scores` relative to the
    largest score when that exceeds 1."""
    worst: dict[str, float] = {}
    for batch in ([texts[0]], texts):
        inputs = featurizer.encode(batch)
        a, b = torch_backend(inputs), onnx_backend(inputs)
        for name in OUTPUT_NAMES:
            x, y = getattr(a, name), getattr(b, name)
            if x is not None:
                # open-set scores (a Mahalanobis distance may be in the thousands): relative beyond magnitude 1
                scale = max(1.0, float(np.abs(x).max())) if name == "open_set_scores" else 1.0
                worst[name] = max(worst.get(name, 0.0), float(np.abs(x - y).max()) / scale)
    return worst
