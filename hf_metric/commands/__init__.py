"""`hf-metric`: the command line of the whole life of a model: train, evaluate, calibrate, predict, embed, index,
verify, export, push.

Each subcommand is one module with `configure(parser)` and `run(args) -> exit code`. User errors (config, data,
upload) print one line `error: ...` and exit with code 2; so do command-line usage errors.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import HfMetricUserError
from . import calibrate, evaluate, export, index, predict, push, train, verify
from .common import OneLineParser

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]
SUBCOMMANDS: dict[str, tuple[str, str, Configure, Run]] = {
    "train": ("train a model from a YAML config", train.DESCRIPTION, train.configure, train.run),
    "evaluate": ("every metric on a held-out labelled file", evaluate.DESCRIPTION, evaluate.configure, evaluate.run),
    "calibrate": (
        "re-choose the open-set threshold on a new validation file",
        calibrate.DESCRIPTION,
        calibrate.configure,
        calibrate.run,
    ),
    "predict": (
        "label a Parquet file (streamed)",
        predict.PREDICT_DESCRIPTION,
        predict.configure_predict,
        predict.run_predict,
    ),
    "embed": (
        "embeddings of a Parquet file (.npy or .parquet)",
        predict.EMBED_DESCRIPTION,
        predict.configure_embed,
        predict.run_embed,
    ),
    "index": ("enrol a labelled file into a gallery", index.DESCRIPTION, index.configure, index.run),
    "verify": ("same identity or not, for pairs of inputs", verify.DESCRIPTION, verify.configure, verify.run),
    "export": ("ONNX export with a parity check", export.DESCRIPTION, export.configure, export.run),
    "push": ("upload a model folder to the Hub", push.DESCRIPTION, push.configure, push.run),
}
"""name -> (one-line help, description, configure(parser), run(args))."""


def build_parser(prog: str = "hf-metric") -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog,
        description="Supervised metric learning on Hugging Face Transformers: train -> evaluate -> predict / embed / "
        "index / verify -> export -> push. `hf-metric COMMAND --help` describes each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name, (summary, description, configure, run) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=summary, description=description)
        configure(child)
        child.set_defaults(handler=run)
    return parser


def execute(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; a user error prints one line and returns its exit code (2)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        return handler(args)
    except HfMetricUserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def main(argv: list[str] | None = None) -> int:
    """The `hf-metric` console entry point."""
    args = build_parser().parse_args(argv)
    return execute(args.handler, args)


def train_main(argv: list[str] | None = None, prog: str = "train_metric_classifier.py") -> int:
    """`python train_metric_classifier.py --config F` and `hf-metric-train`: `hf-metric train` without the word."""
    parser = OneLineParser(prog=prog, description=train.DESCRIPTION)
    train.configure(parser)
    return execute(train.run, parser.parse_args(argv))
