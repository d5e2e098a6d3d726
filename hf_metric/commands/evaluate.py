"""`hf-metric evaluate`: every metric of a trained model on a held-out labelled Parquet file."""

from __future__ import annotations

import argparse

from .common import add_backend_arguments, add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Score a trained model on a labelled Parquet file: accuracy, macro-F1, top-k, per-class and rare-class F1, "
    "Recall@K and kNN accuracy against the training rows stored in the model, the head alone vs the kNN-fused "
    "prediction. Labels are matched to the model's by name; rows with the out-of-scope label count as out of scope "
    "(open-set metrics: in-scope accuracy, OOS recall/precision, AUROC, FPR@95)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, "labelled Parquet file (text, label[, classifier_mask, metric_mask])")
    parser.add_argument("--out", metavar="DIR", help="write metrics.json, report.md and plots/ here (atomically)")
    parser.add_argument(
        "--out-of-scope-label",
        metavar="LABEL",
        help="label of out-of-scope test rows (default: the config's data.out_of_scope_label, else the model's "
        "out_of_scope_label, e.g. oos); other labels the model does not know are an error",
    )
    add_backend_arguments(parser)
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluator import RetrievalSettings
    from ..evaluation.tables import format_metrics_table
    from ..inference.backends import load_backend, read_id2label, read_model_config
    from ..inference.evaluate import evaluate_file, read_test_file
    from .common import check_model_dir, featurizer, model_config

    check_model_dir(args.model, args.backend)
    cfg = model_config(args, args.data)
    mv = cfg.metric_validation
    feat = featurizer(args.model, args.data, cfg)
    oos_label = args.out_of_scope_label or cfg.data.out_of_scope_label
    oos_label = oos_label or read_model_config(args.model).get("out_of_scope_label")
    labeled = read_test_file(args.data, read_id2label(args.model), oos_label)
    backend = load_backend(args.model, args.backend, args.device, args.threads)
    summary = evaluate_file(
        labeled,
        backend,
        feat,
        RetrievalSettings(tuple(mv.recall_at_k), mv.distance, mv.knn_k),
        out_dir=args.out,
        batch_size=cfg.training.batch_size,
        plots=mv.plots,
        embedding_map=mv.embedding_map,
    )
    print(format_metrics_table(summary["metrics"]))
    if args.out:
        print(f"Written: {args.out}/metrics.json, {args.out}/report.md, {args.out}/plots/")
    return 0
