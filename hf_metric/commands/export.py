"""`hf-metric export`: the model as ONNX (logits and embeddings), checked against PyTorch."""

from __future__ import annotations

import argparse

from .common import add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Export a trained model to ONNX (dynamic batch and sequence axes; outputs logits, embeddings, head_logits "
    "and, with stored kNN rows, knn_probabilities; with an open-set rule, open_set_scores: a row is out of scope "
    "when its score is below the threshold in hf_metric_export.json). The export is kept only if onnxruntime "
    "matches PyTorch within 1e-4 on sample rows; the differences are printed. Serve it with `--backend onnx`."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, None)
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (onnx)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write (replaced atomically)")
    parser.add_argument("--data", metavar="FILE", help="Parquet file whose first rows check parity (default: built-in)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (18)")
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..optional import require
    from .common import check_model_dir, featurizer, model_config

    require("onnxruntime", "onnx", "hf-metric export")
    require("onnx", "onnx", "hf-metric export")
    check_model_dir(args.model)
    cfg = model_config(args, args.data)
    feat = featurizer(args.model, args.data, cfg)
    if feat.input_column != "text":
        from ..errors import ConfigError

        raise ConfigError(
            f"--data {args.data}: ONNX export takes text models for now (this file holds {feat.input_column})"
        )
    texts = _sample_texts(args.data, feat.input_column) if args.data else None
    from ..sharing.export import PARITY_TOLERANCE, export_onnx

    parity = export_onnx(args.model, args.out, feat, texts, args.opset)
    for name, diff in parity.items():
        print(f"parity {name}: max |onnxruntime - torch| = {diff:.2e} (<= {PARITY_TOLERANCE})")
    print(f"Exported: {args.out}/model.onnx")
    return 0


def _sample_texts(path: str, column: str, rows: int = 16) -> list[str]:
    import pyarrow.parquet as pq

    from ..data.parquet import check_input_values

    batch = next(pq.ParquetFile(path).iter_batches(batch_size=rows, columns=[column]))
    return check_input_values(path, column, batch.column(0))
