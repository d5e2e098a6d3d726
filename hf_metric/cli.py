"""Command line: `python train_metric_classifier.py --config FILE` (also under `accelerate launch`)."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import HfMetricUserError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train_metric_classifier.py",
        description="Train a text classifier and its embedding space with masked CE + SupCon.",
    )
    parser.add_argument(
        "--config", required=True, help="YAML config (see configs/metric_classifier_training.example.yaml)"
    )
    hub = parser.add_argument_group("Hub", "override the YAML `hub` section")
    hub.add_argument("--push-to-hub", action="store_true", default=None, help="upload <checkpoints_dir>/best")
    hub.add_argument("--hub-model-id", help="repo id (owner/name) to push to")
    hub.add_argument(
        "--hub-private", action=argparse.BooleanOptionalAction, default=None, help="create the repo private"
    )
    hub.add_argument("--hub-revision", help="branch to push to (created if missing)")
    return parser.parse_args(argv)


def apply_overrides(cfg, args: argparse.Namespace):
    """The config with the command-line Hub flags applied, validated again (a flag can make it invalid)."""
    import dataclasses

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


def main(argv: list[str] | None = None) -> int:
    """Run training; a config or data problem prints one line `error: ...` and returns exit code 2."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from .config import load_config

    try:
        cfg = apply_overrides(load_config(args.config), args)
        from .run import train

        train(cfg)
    except HfMetricUserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
