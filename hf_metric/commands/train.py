"""`hf-metric train`: one training run from a YAML config (also `python train_metric_classifier.py`)."""

from __future__ import annotations

import argparse
import dataclasses

from .common import add_config_arguments

DESCRIPTION = "Train a classifier and its embedding space (masked CE + a metric loss) from a YAML config."


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, required=True)
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="PATH|latest",
        help="continue from a checkpoint folder, or (no value / `latest`) the newest one in checkpoints_dir; "
        "same as --set training.resume_from=...",
    )
    hub = parser.add_argument_group("Hub", "override the YAML `hub` section")
    hub.add_argument("--push-to-hub", action="store_true", default=None, help="upload <checkpoints_dir>/best")
    hub.add_argument("--hub-model-id", help="repo id (owner/name) to push to")
    hub.add_argument(
        "--hub-private", action=argparse.BooleanOptionalAction, default=None, help="create the repo private"
    )
    hub.add_argument("--hub-revision", help="branch to push to (created if missing)")


def hub_flags(cfg, args: argparse.Namespace):
    """The config with the command-line Hub flags applied, validated again (a flag can make it invalid)."""
    flags = {
        "push_to_hub": args.push_to_hub,
        "model_id": args.hub_model_id,
        "private": args.hub_private,
        "revision": args.hub_revision,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if not given:
        return cfg
    cfg = dataclasses.replace(cfg, hub=dataclasses.replace(cfg.hub, **given))
    cfg.validate()
    return cfg


def run(args: argparse.Namespace) -> int:
    from ..loading import load_config
    from ..run import train

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"training.resume_from={args.resume}")
    train(hub_flags(load_config(args.config, overrides), args))
    return 0
