"""The exported graph made fast on CPU: transformer fusions, and optional dynamic int8 quantisation.

onnxruntime applies its generic graph optimisations when a session loads, which is why a plain export gains
little over PyTorch. The fusions that pay on CPU for transformer encoders (one `Attention` op per layer,
`EmbedLayerNormalization`, `SkipLayerNormalization`, `BiasGelu`) come from `onnxruntime.transformers.optimizer`,
which matches the attention pattern of transformers' *eager* attention, needs symbolic shape inference (opset
<= 17: opset 18's `ReduceL2` with axes as an input defeats it) and the head count and hidden size. So a text
backbone of a BERT-like type is traced with eager attention (the same math as sdpa, within 1e-6) and fused
here; other backbones keep the plain graph (onnxruntime still optimises it at load).

`quantize_int8` quantises the backbone's weights to int8 (`onnxruntime.quantization.quantize_dynamic`:
activations quantised per batch at run time) and keeps the head, the projection, the kNN search and the
open-set score in float32: they cost little, and the stored kNN rows and the calibrated threshold then meet
float32 numbers. Its outputs differ from PyTorch by more than the fp32 parity tolerance: `int8_check` states a
tolerance of its own and measures the accuracy change on labelled rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ORT_MODEL_TYPES = {
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "camembert": "bert",
    "distilbert": "bert",
    "mpnet": "bert",
    "electra": "bert",
}
"""transformers `model_type` -> the `onnxruntime.transformers.optimizer` model type whose fusions apply."""
OPTIMIZED_OPSET = 17
"""The opset the fusions work at (symbolic shape inference fails on opset 18's reductions)."""
BACKBONE_SCOPE = "/model/backbone/"
"""Node-name prefix of the backbone in a graph traced from `InferenceModule` (what int8 quantises)."""
FUSED_OPS = ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu")


@contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's optimizer and quantizer log every node and tensor at INFO (much on the root logger)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def fusion_type(model: Any) -> str | None:
    """The optimizer model type of a model's backbone, or None when its fusions do not apply."""
    return ORT_MODEL_TYPES.get(getattr(model.config.encoder_config, "model_type", None))


@contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Trace the backbone with eager attention (the pattern the fusions recognise); restored afterwards."""
    backbone = model.backbone
    before = backbone.config._attn_implementation
    backbone.set_attn_implementation("eager")
    try:
        yield
    finally:
        backbone.set_attn_implementation(before)


def optimize_graph(path: str, model: Any) -> dict[str, int]:
    """Fuse the graph at `path` in place for CPU inference; returns the fused operators' counts."""
    from onnxruntime.transformers import optimizer

    encoder = model.config.encoder_config
    with _quiet():
        fused = optimizer.optimize_model(
            path,
            model_type=fusion_type(model),
            num_heads=int(encoder.num_attention_heads),
            hidden_size=int(encoder.hidden_size),
            opt_level=0,  # fusions only: onnxruntime applies its generic optimisations when a session loads
        )
        fused.save_model_to_file(path)
    counts = fused.get_fused_operator_statistics()
    return {op: int(counts[op]) for op in FUSED_OPS if counts.get(op)}


def quantize_int8(path: str, out_path: str) -> int:
    """Dynamic int8 quantisation of the backbone of the graph at `path` into `out_path` (weights int8 per output
    channel, activations uint8 quantised per batch); returns how many matrix products stay float32 (head,
    projection, kNN, open set)."""
    import onnx

    graph = onnx.load(path).graph
    outside = [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and not n.name.startswith(BACKBONE_SCOPE)]
    # the quantizer rewrites a Gemm into a MatMul named `<gemm>_MatMul` before choosing the nodes
    outside += [f"{n.name}_MatMul" for n in graph.node if n.op_type == "Gemm" and n.name in outside]
    with _quiet():
        _quantize(path, out_path, outside)
    return sum(1 for n in graph.node if n.name in outside)


def _quantize(path: str, out_path: str, outside: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        path,
        out_path,
        weight_type=QuantType.QInt8,
        per_channel=True,  # MiniLM: mean embedding cosine to float32 0.993 (0.968 per tensor), min 0.979 (0.887)
        nodes_to_exclude=outside,
        # fused contrib ops (Attention, SkipLayerNormalization) have no ONNX type inference: their outputs are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def file_megabytes(path: str) -> float:
    return round(os.path.getsize(path) / 2**20, 2)
