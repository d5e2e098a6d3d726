"""Console entry points: `hf-metric` (every subcommand, see `hf_metric.commands`) and the training-only
`hf-metric-train` / `python train_metric_classifier.py --config FILE` (also under `accelerate launch`)."""

from __future__ import annotations

import sys

from .commands import main as app
from .commands import train_main


def main(argv: list[str] | None = None) -> int:
    """Train from `--config FILE` (with `--set`, `--resume` and the Hub flags); user errors exit with code 2."""
    return train_main(argv)


__all__ = ["app", "main"]

if __name__ == "__main__":
    sys.exit(main())
