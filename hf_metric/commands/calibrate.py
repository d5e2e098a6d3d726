"""`hf-metric calibrate`: re-choose a trained model's open-set rule on a new validation file, weights unchanged."""

from __future__ import annotations

import argparse

from .common import add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Re-calibrate a trained model's out-of-scope rejection on a labelled Parquet file (in-scope rows with the "
    "model's labels, known out-of-scope rows with its out-of-scope label), without retraining: the score and "
    "threshold are chosen as after training (criterion auto: the best validation accuracy with enough "
    "out-of-scope rows, else a target in-scope recall) and written into config.json atomically, in place or into "
    "a copy (--out). The weights are not touched; export again for ONNX."
)


def configure(parser: argparse.ArgumentParser) -> None:
    from ..open_set.calibration import CRITERIA

    add_model_arguments(parser, "labelled Parquet validation file (text, label[, classifier_mask, metric_mask])")
    parser.add_argument("--criterion", choices=("auto", *CRITERIA), default="auto", help="how to choose (default auto)")
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="the criterion's target: in-scope recall (auto with few outliers, in_scope_recall; default 0.95), "
        "accepted out-of-scope share (fpr; 0.05) or accuracy drop (accuracy_drop; 0.01)",
    )
    parser.add_argument(
        "--score",
        choices=("auto", "msp", "energy", "knn", "mahalanobis", "fused"),
        default="auto",
        help="the score to threshold (default auto: chosen by the criterion among those the model can compute)",
    )
    parser.add_argument("--out", metavar="DIR", help="write the re-calibrated model folder here (default: in place)")
    parser.add_argument(
        "--out-of-scope-label", metavar="LABEL", help="label of out-of-scope rows (default: the model's, e.g. oos)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, mps); default cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, DataError
    from ..evaluation.tables import format_metrics_table
    from ..inference.backends import load_backend, read_id2label, read_model_config
    from ..inference.evaluate import read_test_file
    from ..model.open_set_scores import OUT_OF_SCOPE_ID
    from ..open_set.recalibrate import file_scores, recalibrate
    from .common import check_model_dir, featurizer, model_config

    if args.target is not None and not 0.0 <= args.target <= 1.0:
        raise ConfigError(f"--target {args.target}: must be in [0, 1]")
    if args.target is not None and args.criterion == "accuracy":
        raise ConfigError("--target: the accuracy criterion has no target")
    check_model_dir(args.model)
    cfg = model_config(args, args.data)
    oos_label = args.out_of_scope_label or read_model_config(args.model).get("out_of_scope_label") or "oos"
    labeled = read_test_file(args.data, read_id2label(args.model), oos_label)
    if args.criterion in ("accuracy", "fpr") and not (labeled.labels == OUT_OF_SCOPE_ID).any():
        raise DataError(f"{args.data}: criterion {args.criterion} needs rows labelled {oos_label!r}; there are none")
    backend = load_backend(args.model, "torch", args.device)
    feat = featurizer(args.model, args.data, cfg)
    scores, logits, labels, fusion_stats = file_scores(backend, labeled, feat, cfg.training.batch_size)
    if args.score not in ("auto", *scores):
        raise ConfigError(f"--score {args.score}: this model cannot compute it (have: {', '.join(scores)})")
    try:
        result, metrics = recalibrate(
            args.model, scores, logits, labels, fusion_stats, args.score, args.criterion, args.target, args.out
        )
    except ValueError as err:
        raise DataError(f"{args.data}: {err}") from None
    print(f"Open set: {result.describe()}")
    print(format_metrics_table(metrics))
    print(f"Written: {args.out or args.model}/config.json")
    return 0
