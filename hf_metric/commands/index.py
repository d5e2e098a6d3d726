"""`hf-metric index`: enrol a labelled Parquet file into a gallery (new, or appended), remove identities, and
calibrate the unknown-identity threshold."""

from __future__ import annotations

import argparse

from .common import add_backend_arguments, add_config_arguments, add_model_arguments

DESCRIPTION = (
    "Build a gallery of enrolled identities from a labelled Parquet file (input column, label, optional group "
    "and id columns; labels the model never saw are fine): L2-normalised embeddings in safetensors, labels, groups "
    "and row ids in Parquet, the model's fingerprint in gallery.json. --append enrols more rows into an existing "
    "gallery, --remove deletes an identity, --calibrate FILE chooses the unknown-identity threshold on queries of "
    "known and unknown identities. Every change is atomic: a failed run leaves the gallery as it was."
)


def configure(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, None)
    parser.add_argument("--data", metavar="FILE", help="labelled Parquet file to enrol (streamed)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the gallery folder (created or updated)")
    parser.add_argument("--append", action="store_true", help="add the rows to the gallery in --out")
    parser.add_argument(
        "--match",
        choices=("row", "identity"),
        default=None,
        help="match a query with the nearest enrolled row (default) or the nearest identity centroid",
    )
    parser.add_argument(
        "--remove", action="append", default=[], metavar="LABEL", help="delete this identity's rows (repeatable)"
    )
    parser.add_argument(
        "--calibrate",
        metavar="FILE",
        help="labelled queries of enrolled AND unenrolled identities: choose the unknown-identity threshold",
    )
    parser.add_argument(
        "--within-group", action="store_true", help="calibrate with each query searched within its group only"
    )
    parser.add_argument(
        "--criterion",
        choices=("accuracy", "fpr"),
        default=None,
        help="calibration: best open-set accuracy (default), or at most --target of unknown queries accepted (fpr)",
    )
    parser.add_argument("--target", type=float, default=None, help="calibration target of --criterion fpr (0.05)")
    parser.add_argument("--read-batch-rows", type=int, default=4096, help="rows read per record batch (4096)")
    add_backend_arguments(parser)
    add_config_arguments(parser, required=False)


def run(args: argparse.Namespace) -> int:
    import os

    from ..errors import ConfigError
    from ..inference.backends import load_backend
    from ..inference.gallery import MANIFEST_FILE
    from ..inference.gallery_build import EmbeddedRows, embed_rows, gallery_from_parquet, load_gallery_for
    from ..inference.gallery_calibration import calibrate_gallery
    from ..inference.predict import StreamSettings
    from .common import check_model_dir, featurizer, model_config

    if not (args.data or args.calibrate or args.remove):
        raise ConfigError("give --data FILE to enrol, --remove LABEL or --calibrate FILE")
    if args.read_batch_rows < 1:
        raise ConfigError("--read-batch-rows must be >= 1")
    check_model_dir(args.model, args.backend)
    existing = os.path.isfile(os.path.join(args.out, MANIFEST_FILE))
    if (args.append or not args.data) and not existing:
        raise ConfigError(f"--out {args.out}: no gallery there to update (build one with --data FILE first)")
    gallery = load_gallery_for(args.out, args.model) if args.append or not args.data else None
    cfg = model_config(args, args.data or args.calibrate)
    backend = load_backend(args.model, args.backend, args.device, args.threads)
    settings = StreamSettings(args.read_batch_rows, cfg.training.batch_size, not args.no_progress)
    if args.data:
        feat = featurizer(args.model, args.data, cfg)
        match = args.match or (gallery.match if gallery is not None else "row")
        new = gallery_from_parquet(backend, args.data, feat, settings, match=match)
        if gallery is not None and gallery.calibration is not None and not args.calibrate:
            print("note: the unknown-identity threshold was calibrated before these rows; recalibrate with --calibrate")
        gallery = new if gallery is None else gallery.add(new)
    if args.match:
        gallery.set_match(args.match)
    for label in args.remove:
        print(f"Removed {gallery.remove(label)} rows of {label!r}")
    if args.calibrate:
        feat = featurizer(args.model, args.calibrate, cfg)
        queries: EmbeddedRows = embed_rows(args.calibrate, backend, feat, settings)
        if args.within_group and queries.groups is None:
            raise ConfigError(f"--calibrate {args.calibrate}: --within-group needs a 'group' column")
        groups = queries.groups if args.within_group else None
        chosen = calibrate_gallery(
            gallery, queries.embeddings, queries.labels, groups, args.criterion, args.target, args.calibrate
        )
        metrics = chosen["metrics"]
        print(
            f"Unknown-identity threshold {chosen['threshold']:.4f} ({chosen['criterion']}): on {args.calibrate} "
            f"open-set accuracy {metrics['open_set_accuracy']:.4f}, unknown rejected {metrics['oos_recall']:.4f}, "
            f"known accepted {metrics['in_scope_recall']:.4f}"
        )
    gallery.save(args.out)
    print(f"Gallery {args.out}: {len(gallery)} rows, {len(gallery.identities)} identities (match per {gallery.match})")
    return 0
