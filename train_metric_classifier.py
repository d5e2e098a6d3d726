#!/usr/bin/env python
"""Entry point: `python train_metric_classifier.py --config FILE` (or under `accelerate launch`)."""

import sys

from hf_metric.cli import main

if __name__ == "__main__":
    sys.exit(main())
