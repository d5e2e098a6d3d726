"""`hf-metric export`: the model (text, image or audio) as ONNX (logits and embeddings), checked against PyTorch."""

from __future__ import annotations

import argparse

from .common import add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Export a trained text, image or audio model to ONNX (dynamic batch axis, and sequence axis for text; outputs "
    "logits, embeddings, head_logits "
    "and, with stored kNN rows, knn_probabilities; with an open-set rule, open_set_scores: a row is out of scope "
    "when its score is below the threshold in hf_metric_export.json). The export is kept only if onnxruntime "
    "matches PyTorch within 1e-4 on sample rows; the differences are printed. Serve it with `--backend onnx`."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, None)
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    parser.add_argument(
        "--data",
        metavar="FILE",
        help="Parquet file whose first rows check parity (text default: built-in sentences; required for image "
        "and audio models)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18)")
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..optional import require
    from .common import check_model_dir, featurizer, featurizer_settings, model_config

    require("onnxruntime", "onnx", "hf-metric export")
    require("onnx", "onnx", "hf-metric export")
    check_model_dir(args.model)
    if args.data is None and not _has_tokenizer(args.model):
        from ..errors import ConfigError

        raise ConfigError(f"--model {args.model}: an image or audio model needs --data FILE (rows to check parity)")
    cfg = model_config(args, args.data)
    feat = featurizer(args.model, args.data, cfg)
    samples = _sample_rows(args.data, feat.input_column) if args.data else None
    from ..sharing.export import PARITY_TOLERANCE, export_onnx

    parity = export_onnx(args.model, args.out, feat, samples, args.opset, featurizer_settings(cfg, feat.input_column))
    for name, diff in parity.items():
        print(f"parity {name}: max |onnxruntime - torch| = {diff:.2e} (<= {PARITY_TOLERANCE})")
    print(f"Exported: {args.out}/model.onnx")
    return 0


def _has_tokenizer(model_dir: str) -> bool:
    import os

    return any(os.path.isfile(os.path.join(model_dir, f)) for f in ("tokenizer_config.json", "tokenizer.json"))


def _sample_rows(path: str, column: str, rows: int = 16) -> list:
    """The first `rows` values of the input column (texts, or image/audio cells)."""
    import pyarrow.parquet as pq

    from ..data.parquet import check_input_values

    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=[column]))
    return check_input_values(path, column, batch.column(0))
