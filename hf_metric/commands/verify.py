"""`hf-metric verify`: are the two inputs of each pair the same identity?"""

from __future__ import annotations

import argparse

from .common import add_backend_arguments, add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Score pairs of inputs: a Parquet file with text_a/text_b (or image_a/image_b, audio_a/audio_b) and an optional "
    "`same` column (true/false or 1/0). Writes every input column plus similarity (cosine of the embeddings) and "
    "is_same (similarity >= the threshold). The threshold is --threshold T, or chosen on the file's `same` "
    "labels for a target false-accept rate (--far, default 0.001); with `same`, prints ROC AUC, EER and TAR@FAR."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, None)
    parser.add_argument("--pairs", required=True, metavar="FILE", help="Parquet file of pairs (streamed)")
    parser.add_argument("--out", required=True, metavar="FILE", help="output Parquet file (written atomically)")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=float, default=None, help="same identity when similarity >= T")
    rule.add_argument("--far", type=float, default=None, help="choose the threshold for this false-accept rate")
    parser.add_argument("--read-batch-rows", type=int, default=4096, help="rows read per record batch (4096)")
    add_backend_arguments(parser)
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..evaluation.tables import format_metrics_table
    from ..inference.backends import load_backend
    from ..inference.predict import StreamSettings, open_parquet
    from ..inference.verify import pair_kind, verify_file
    from .common import check_model_dir, featurizer, model_config

    if args.far is not None and not 0 < args.far < 1:
        raise ConfigError(f"--far must be in (0, 1), got {args.far}")
    if args.read_batch_rows < 1:
        raise ConfigError("--read-batch-rows must be >= 1")
    check_model_dir(args.model, args.backend)
    kind = pair_kind(args.pairs, open_parquet(args.pairs).schema_arrow.names)
    cfg = model_config(args, args.pairs)
    feat = featurizer(args.model, args.pairs, cfg, column=kind)
    backend = load_backend(args.model, args.backend, args.device, args.threads)
    settings = StreamSettings(args.read_batch_rows, cfg.training.batch_size, not args.no_progress)
    result = verify_file(args.pairs, args.out, backend, feat, args.threshold, args.far, settings)
    if result.metrics:
        print(format_metrics_table(result.metrics))
    print(f"Verified {result.rows} pairs at threshold {result.threshold:.6g} ({result.chosen_by}): {args.out}")
    return 0
