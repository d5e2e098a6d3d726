"""`hf-metric evaluate`: every metric of a trained model on a held-out labelled Parquet file."""

from __future__ import annotations

import argparse

from .common import add_backend_arguments, add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Score a trained model on a labelled Parquet file: accuracy, macro-F1, top-k, per-class and rare-class F1, "
    "Recall@K and kNN accuracy against the training rows stored in the model, the head alone vs the kNN-fused "
    "prediction. Labels are matched to the model's by name; rows with the out-of-scope label count as out of scope "
    "(open-set metrics: in-scope accuracy, OOS recall/precision, AUROC, FPR@95); a `group` column adds the error "
    "analysis by group. With --gallery DIR: identification against the gallery instead (labels matched by name "
    "against the gallery's, any label allowed; precision_at_1, cmc@K, r_precision, map_at_r, mrr, dir@fpir, and "
    "verification_auc, eer, tar@far on pairs sampled from the file)."
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
    parser.add_argument("--gallery", metavar="DIR", help="identify the rows against this gallery (hf-metric index)")
    parser.add_argument(
        "--within-group", action="store_true", help="with --gallery: search each row within its `group` only"
    )
    parser.add_argument("--read-batch-rows", type=int, default=4096, help="with --gallery: rows per record batch")
    add_backend_arguments(parser)
    add_config_arguments(parser, required=False)


def run_gallery(args: argparse.Namespace) -> int:
    """`evaluate --gallery`: identification, open-set and verification metrics against an enrolled gallery."""
    from ..evaluation.tables import format_metrics_table
    from ..inference.backends import load_backend
    from ..inference.gallery_build import load_gallery_for
    from ..inference.gallery_eval import evaluate_gallery_file
    from ..inference.predict import StreamSettings
    from .common import check_model_dir, featurizer, model_config

    check_model_dir(args.model, args.backend)
    gallery = load_gallery_for(args.gallery, args.model)
    cfg = model_config(args, args.data)
    feat = featurizer(args.model, args.data, cfg)
    backend = load_backend(args.model, args.backend, args.device, args.threads)
    settings = StreamSettings(args.read_batch_rows, cfg.training.batch_size, not args.no_progress)
    plots = cfg.metric_validation.plots
    summary = evaluate_gallery_file(
        args.data,
        backend,
        feat,
        gallery,
        settings=settings,
        within_group=args.within_group,
        out_dir=args.out,
        plots=plots,
    )
    print(format_metrics_table(summary["metrics"]))
    if args.out:
        print(f"Written: {args.out}/metrics.json, {args.out}/report.md" + (f", {args.out}/plots/" if plots else ""))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.gallery:
        return run_gallery(args)
    if args.within_group:
        from ..errors import ConfigError

        raise ConfigError("--within-group needs --gallery DIR")
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
