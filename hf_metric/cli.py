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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run training; a config or data problem prints one line `error: ...` and returns exit code 2."""
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from .config import load_config

    try:
        cfg = load_config(args.config)
        from .run import train

        train(cfg)
    except HfMetricUserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
