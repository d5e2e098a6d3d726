"""`hf-metric export`: the model (text, image or audio) as ONNX (logits and embeddings), checked against PyTorch,
fused for CPU inference and optionally quantised to int8 (with its accuracy change printed)."""

from __future__ import annotations

import argparse

from .common import add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Export a trained text, image or audio model to ONNX (dynamic batch axis, and sequence axis for text; outputs "
    "logits, embeddings, head_logits "
    "and, with stored kNN rows, knn_probabilities; with an open-set rule, open_set_scores: a row is out of scope "
    "when its score is below the threshold in hf_metric_export.json). BERT-like text backbones are fused for CPU "
    "inference (attention, layer norms, GELU). The export is kept only if onnxruntime matches PyTorch within 1e-4 "
    "on sample rows; the differences are printed. --quantize int8 then quantises the backbone (dynamic int8) and "
    "prints the accuracy change on the --data rows. Serve it with `--backend onnx`."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, None)
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="Parquet file whose first rows check parity (text default: built-in sentences; required for image "
        "and audio models); with --quantize, its rows (and labels) measure the int8 accuracy change",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (17: the graph fusions need <= 17)")
    parser.add_argument("--no-optimize", action="store_true", help="keep the plain traced graph (no fusions)")
    parser.add_argument(
        "--quantize", choices=("int8",), default=None, help="dynamic int8 quantisation of the backbone's weights"
    )
    parser.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=1.0,
        metavar="POINTS",
        help="int8: refuse the export when accuracy on the labelled --data rows drops by more (1.0)",
    )
    parser.add_argument(
        "--check-rows", type=int, default=5000, metavar="N", help="int8: rows of --data checked (first N; 5000)"
    )
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..optional import require
    from .common import check_model_dir, featurizer, featurizer_settings, model_config

    require("onnxruntime", "onnx", "hf-metric export")
    require("onnx", "onnx", "hf-metric export")
    check_model_dir(args.model)
    if args.data is None and not _has_tokenizer(args.model):
        raise ConfigError(f"--model {args.model}: an image or audio model needs --data FILE (rows to check parity)")
    if args.check_rows < 1:
        raise ConfigError("--check-rows must be >= 1")
    cfg = model_config(args, args.data)
    feat = featurizer(args.model, args.data, cfg)
    samples = _rows(args.data, feat.input_column, 16)[0] if args.data else None
    from ..sharing.export import PARITY_TOLERANCE, ExportOptions, export_onnx
    from ..sharing.int8_check import describe

    options = ExportOptions(opset=args.opset, optimize=not args.no_optimize, quantize=args.quantize)
    options.max_accuracy_drop, options.batch_size = args.max_accuracy_drop, cfg.training.batch_size
    if args.quantize and args.data:
        options.check_rows, options.check_labels = _rows(args.data, feat.input_column, args.check_rows)
    settings = featurizer_settings(cfg, feat.input_column)
    info = export_onnx(args.model, args.out, feat, samples, options, settings)
    for name, diff in info["parity_max_abs_diff"].items():
        print(f"parity {name}: max |onnxruntime - torch| = {diff:.2e} (<= {PARITY_TOLERANCE})")
    optimization = info["optimization"]
    if optimization.get("operators"):
        print("fused for CPU: " + ", ".join(f"{op} x{n}" for op, n in optimization["operators"].items()))
    elif "skipped" in optimization:
        print(f"graph fusion skipped ({optimization['skipped']}): the plain graph is kept")
    if "int8" in info:
        for line in describe(info["int8"]):
            print(line)
    print(f"Exported: {args.out}/model.onnx")
    return 0


def _has_tokenizer(model_dir: str) -> bool:
    import os

    return any(os.path.isfile(os.path.join(model_dir, f)) for f in ("tokenizer_config.json", "tokenizer.json"))


def _rows(path: str, column: str, rows: int) -> tuple[list, list[str] | None]:
    """The first `rows` values of the input column (texts, or image/audio cells) and their labels (None when
    the file has no `label` column)."""
    import pyarrow.parquet as pq

    from ..data.parquet import LABEL_COLUMN, check_input_values

    source = pq.ParquetFile(path)
    columns = [column] + ([LABEL_COLUMN] if LABEL_COLUMN in source.schema_arrow.names else [])
    batch = next(source.iter_batches(batch_size=rows, columns=columns))
    labels = [str(x) for x in batch.column(1).to_pylist()] if len(columns) > 1 else None
    return check_input_values(path, column, batch.column(0)), labels
