"""`hf-metric predict` and `hf-metric embed`: label or embed a Parquet file, streamed, written atomically."""

from __future__ import annotations

import argparse

from .common import add_backend_arguments, add_config_arguments, add_model_arguments

PREDICT_DESCRIPTION = (
    "Label every row of a Parquet file: keeps every input column and adds predicted_label, score, top_labels, "
    "top_scores, head_label (the head alone) and knn_label (the vote of the stored training rows); with --gallery "
    "DIR (built by `hf-metric index`) also gallery_label, gallery_score, gallery_top_labels, gallery_top_scores, "
    "gallery_status and, when the gallery has a calibrated threshold, is_unknown. Streams the file in record "
    "batches (bounded memory) and writes the output atomically."
)
EMBED_DESCRIPTION = (
    "Write the L2-normalised embedding of every row: OUT.npy (float32, rows x dim) or OUT.parquet (every input "
    "column plus `embedding`, a list<float32>). Streamed, written atomically."
)


def _configure(parser: argparse.ArgumentParser, out_help: str) -> None:
    add_model_arguments(parser, "Parquet file with the input column (text)")
    parser.add_argument("--out", required=True, metavar="FILE", help=out_help)
    parser.add_argument("--read-batch-rows", type=int, default=4096, help="rows read per record batch (4096)")
    add_backend_arguments(parser)
    add_config_arguments(parser, required=False)


def configure_predict(parser: argparse.ArgumentParser) -> None:
    _configure(parser, "output Parquet file")
    parser.add_argument("--top-k", type=int, default=5, help="labels and scores kept per row (5)")
    parser.add_argument("--gallery", metavar="DIR", help="identify each row against this gallery (hf-metric index)")
    parser.add_argument(
        "--within-group",
        action="store_true",
        help="compare each row only with the gallery rows of its own `group` (e.g. the trees at its address)",
    )


def configure_embed(parser: argparse.ArgumentParser) -> None:
    _configure(parser, "output file: .npy or .parquet")


def _setup(args: argparse.Namespace):
    from ..errors import ConfigError
    from ..inference.backends import load_backend
    from ..inference.predict import StreamSettings
    from .common import check_model_dir, featurizer, model_config

    if args.read_batch_rows < 1 or getattr(args, "top_k", 1) < 1:
        raise ConfigError("--read-batch-rows and --top-k must be >= 1")
    check_model_dir(args.model, args.backend)
    cfg = model_config(args, args.data)
    feat = featurizer(args.model, args.data, cfg)
    backend = load_backend(args.model, args.backend, args.device, args.threads)
    return backend, feat, StreamSettings(args.read_batch_rows, cfg.training.batch_size, not args.no_progress)


def run_predict(args: argparse.Namespace) -> int:
    from ..inference.predict import predict_file

    if args.within_group and not args.gallery:
        from ..errors import ConfigError

        raise ConfigError("--within-group needs --gallery DIR")
    gallery = _gallery_columns(args) if args.gallery else None  # before the model loads: a wrong one fails fast
    backend, feat, settings = _setup(args)
    rows = predict_file(args.data, args.out, backend, feat, args.top_k, settings, gallery)
    print(f"Labelled {rows} rows: {args.out}")
    return 0


def _gallery_columns(args: argparse.Namespace):
    """The gallery part of predict: the gallery, checked against the model's fingerprint."""
    from ..inference.gallery_build import load_gallery_for
    from ..inference.gallery_predict import GalleryColumns

    gallery = load_gallery_for(args.gallery, args.model)
    return GalleryColumns(gallery, args.top_k, args.within_group)


def run_embed(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..inference.predict import embed_file

    if not args.out.endswith((".npy", ".parquet")):
        raise ConfigError(f"--out {args.out}: must end with .npy or .parquet")
    backend, feat, settings = _setup(args)
    rows = embed_file(args.data, args.out, backend, feat, settings)
    print(f"Embedded {rows} rows: {args.out}")
    return 0
