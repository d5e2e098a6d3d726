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

Speed (`onnx_optimize`): a BERT-like text backbone is traced with eager attention and fused for CPU inference
(Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu), still held to the 1e-4 parity (when the
fused graph misses it, the plain one is kept and the reason recorded). `quantize="int8"` then quantises the
backbone dynamically; that graph is held to `int8_check`'s tolerance and accuracy check instead.

A model with an open-set rejection rule gets one more output, `open_set_scores` (its calibrated score, any of
`hf_metric.open_set.onnx_graph.EXPORTABLE_SCORES`), and `hf_metric_export.json` states the rule: a row is out of
scope when ``open_set_scores < threshold`` (the threshold is also `config.json`'s `open_set_threshold`); it is then
answered with `out_of_scope_label`. The Mahalanobis statistics are saved too (`open_set_statistics.npz`) for
`evaluate`."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
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
    run_batches,
)
from ..inference.gallery_build import EXPORT_FINGERPRINT_KEY, model_fingerprint
from . import int8_check, onnx_optimize

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


@dataclass
class ExportOptions:
    """How to export: the opset, whether to fuse the graph for CPU inference, and int8 quantisation with its
    check (`check_rows`: rows of the input column, `check_labels`: their labels or None)."""

    opset: int = onnx_optimize.OPTIMIZED_OPSET
    optimize: bool = True
    quantize: str | None = None
    check_rows: list[Any] | None = None
    check_labels: list[str] | None = None
    max_accuracy_drop: float = int8_check.DEFAULT_MAX_ACCURACY_DROP
    batch_size: int = 32


def export_onnx(
    model_dir: str,
    out_dir: str,
    featurizer: Any,
    samples: list[Any] | None = None,
    options: ExportOptions | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export `model_dir` to `out_dir/model.onnx` (+ config, processor, kNN rows) atomically and return what
    `hf_metric_export.json` records: `parity_max_abs_diff` (output name -> max |onnxruntime - PyTorch| on
    `samples`: texts, or image/audio cells; default `SAMPLE_TEXTS` for text), `optimization`, and with int8 the
    `int8` report. Raises `ExportParityError` (and writes nothing) above `PARITY_TOLERANCE`, `Int8CheckError`
    outside the int8 tolerance. `settings` (the featurizer's `max_seq_length` / `max_audio_seconds`) are
    recorded for serving."""
    options = options or ExportOptions()
    if samples is None and featurizer.input_column != "text":
        raise HfMetricUserError(f"{model_dir}: an {featurizer.input_column} model needs sample rows to export")
    torch_backend = TorchBackend(model_dir)
    samples = list(samples or SAMPLE_TEXTS)
    fuse = options.optimize and onnx_optimize.fusion_type(torch_backend.model) is not None
    with atomic_directory(out_dir) as tmp:
        path = os.path.join(tmp, ONNX_FILE)
        names = _trace(torch_backend, featurizer, samples, path, options.opset, fuse)
        _save_beside(torch_backend, featurizer, tmp)
        optimization: dict[str, Any] = {"fused": False}
        if fuse:
            optimization = _fuse_or_keep_plain(torch_backend, featurizer, samples, path, tmp)
        parity = _checked_parity(model_dir, torch_backend, featurizer, samples, tmp)
        info = {"format": "onnx", "opset": options.opset, "inputs": names}
        info[EXPORT_FINGERPRINT_KEY] = model_fingerprint(model_dir)  # galleries of the model work with the export
        outputs = list(torch_backend.module.output_names)
        info.update(outputs=outputs, parity_max_abs_diff=parity, optimization=optimization)
        info["featurizer"] = {"input_column": featurizer.input_column, **(settings or {})}
        if options.quantize == "int8":
            info["int8"] = _quantize_checked(model_dir, torch_backend, featurizer, samples, tmp, options)
        config = torch_backend.model.config
        if config.open_set_threshold is not None:
            info["open_set"] = open_set_rule(config)
        write_json_atomic(os.path.join(tmp, EXPORT_INFO_FILE), info)
    return info


def _trace(torch_backend: Any, featurizer: Any, samples: list[Any], path: str, opset: int, eager: bool) -> list[str]:
    """Trace `InferenceModule` into `path` (with eager attention when the graph is to be fused); returns the
    graph's input names."""
    import torch

    from ..inference.onnx_module import InferenceModule

    dummy = featurizer.encode(samples[:2], return_tensors="pt")
    names = [n for n in INPUT_NAMES if n in dummy]
    model = torch_backend.model
    module = InferenceModule(model, names).eval()
    outputs = list(module.output_names)
    dynamic = {name: {0: "batch", 1: "sequence"} if name in TEXT_INPUTS else {0: "batch"} for name in names}
    dynamic.update({name: {0: "batch"} for name in outputs})
    with onnx_optimize.eager_attention(model) if eager else nullcontext():
        torch.onnx.export(
            module,
            tuple(dummy[n] for n in names),
            path,
            input_names=names,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    return names


def _fuse_or_keep_plain(torch_backend: Any, featurizer: Any, samples: list[Any], path: str, tmp: str):
    """Fuse the graph; keep the plain one (and say why) when the fused one misses the parity tolerance."""
    import shutil

    plain = path + ".plain"
    shutil.copyfile(path, plain)
    try:
        fused = onnx_optimize.optimize_graph(path, torch_backend.model)
        worst = max(parity_check(torch_backend, OnnxBackend(tmp), featurizer, samples).values())
        if worst <= PARITY_TOLERANCE:
            os.remove(plain)
            return {"fused": True, "operators": fused}
        reason = f"fused graph parity {worst:.2e} > {PARITY_TOLERANCE}"
    except Exception as err:  # any optimizer failure leaves the plain graph, which is correct
        reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    os.replace(plain, path)
    return {"fused": False, "skipped": reason}


def _checked_parity(model_dir: str, torch_backend: Any, featurizer: Any, samples: list[Any], tmp: str):
    parity = parity_check(torch_backend, OnnxBackend(tmp), featurizer, samples)
    worst = max(parity.values())
    if worst > PARITY_TOLERANCE:
        raise ExportParityError(
            f"{model_dir}: ONNX outputs differ from PyTorch by {worst:.2e} > {PARITY_TOLERANCE} ({parity})"
        )
    return parity


def _quantize_checked(
    model_dir: str, torch_backend: Any, featurizer: Any, samples: list[Any], tmp: str, options: ExportOptions
) -> dict[str, Any]:
    """Replace the float32 graph by its int8 quantisation, checked against PyTorch on the check rows."""
    path = os.path.join(tmp, ONNX_FILE)
    fp32_mb = onnx_optimize.file_megabytes(path)
    quantized = path + ".int8"
    kept_fp32 = onnx_optimize.quantize_int8(path, quantized)
    os.replace(quantized, path)
    rows = list(options.check_rows or samples)
    labels = options.check_labels if options.check_rows else None
    reference = run_batches(torch_backend, featurizer, rows, options.batch_size)
    int8_out = run_batches(OnnxBackend(tmp), featurizer, rows, options.batch_size)
    rule = torch_backend.open_set_rule() if torch_backend.rejects else None
    report = int8_check.int8_report(reference, int8_out, labels, torch_backend.id2label, rule)
    int8_check.check_int8(report, model_dir, options.max_accuracy_drop)
    report.update(
        fp32_megabytes=fp32_mb,
        int8_megabytes=onnx_optimize.file_megabytes(path),
        float32_matmuls_kept=kept_fp32,
        tolerance={
            "mean_cosine": int8_check.INT8_MIN_MEAN_COSINE,
            "min_cosine": int8_check.INT8_MIN_COSINE,
            "max_accuracy_drop_points": options.max_accuracy_drop,
        },
    )
    return report


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
