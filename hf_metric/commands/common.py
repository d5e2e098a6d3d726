"""What every `hf-metric` subcommand shares: the one-line error parser, `--config`/`--set`, and the settings
of a command run on a trained model."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import yaml

from ..errors import ConfigError

RESOLVED_CONFIG = "resolved_config.yaml"
"""Written by `hf-metric train` into checkpoints_dir, next to the `best/` model folder."""
PLACEHOLDER_DATA = "<none>"
"""`data.parquet_path` of a command that reads no training file (it is required by the schema)."""


class OneLineParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors are one line (`prog: error: ...`) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def add_config_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """`--config FILE` and repeated `--set dotted.key=value`."""
    help_config = "YAML config (see configs/metric_classifier_training.example.yaml)"
    if not required:
        help_config += f"; default: the run's {RESOLVED_CONFIG} next to --model, else the built-in defaults"
    parser.add_argument("--config", required=required, metavar="FILE", help=help_config)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set training.batch_size=16 (repeatable; the value is YAML; "
        "validated like the file: an unknown key is an error with a did-you-mean hint)",
    )


def add_model_arguments(parser: argparse.ArgumentParser, data_help: str | None) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="a trained model folder (e.g. checkpoints/best)")
    if data_help:
        parser.add_argument("--data", required=True, metavar="FILE", help=data_help)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=("torch", "onnx"),
        default="torch",
        help="torch: the model folder in PyTorch; onnx: a folder written by `hf-metric export` (onnxruntime, CPU)",
    )
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, mps); default cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the library's own)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def model_config(args: argparse.Namespace, data: str | None = None):
    """The `TrainConfig` of a command on a trained model: `--config`, else `<model>/../resolved_config.yaml`
    (written by training), else defaults; `data.parquet_path` filled in; `--set` applied and validated."""
    from ..config import apply_overrides
    from ..loading import config_from_dict

    path = args.config
    if path is None:
        candidate = os.path.join(os.path.dirname(os.path.abspath(args.model)), RESOLVED_CONFIG)
        path = candidate if os.path.isfile(candidate) else None
    raw: Any = {} if path is not None else _export_defaults(args.model)
    if path is not None:
        try:
            with open(path, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config ({type(err).__name__})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("data", {})
    # the command's file replaces a training `datasets` source
    if isinstance(raw["data"], dict) and (data or not raw["data"].get("dataset")):
        raw["data"].pop("dataset", None)
        raw["data"]["parquet_path"] = data or raw["data"].get("parquet_path") or PLACEHOLDER_DATA
    try:
        return apply_overrides(raw, args.overrides, config_from_dict)
    except ConfigError as err:
        raise ConfigError(str(err) if str(err).startswith("--set ") or path is None else f"{path}: {err}") from None


FEATURIZER_KEYS = {"max_seq_length": "training", "max_audio_seconds": "data"}
"""Settings that change a model's inputs: an ONNX export records them (`hf_metric_export.json`)."""


def featurizer_settings(cfg, input_column: str) -> dict[str, Any]:
    """The settings of `FEATURIZER_KEYS` that apply to `input_column` (text: tokens; audio: seconds)."""
    key = {"text": "max_seq_length", "audio": "max_audio_seconds"}.get(input_column)
    return {key: getattr(getattr(cfg, FEATURIZER_KEYS[key]), key)} if key else {}


def _export_defaults(model_dir: str) -> dict[str, Any]:
    """An export folder's featurizer settings as config defaults, so it is served with the inputs it was checked
    with (`--config` / `--set` still win); empty for a model folder."""
    import json

    from ..inference.backends import EXPORT_INFO_FILE

    try:
        with open(os.path.join(model_dir, EXPORT_INFO_FILE), encoding="utf-8") as fh:
            saved = json.load(fh).get("featurizer") or {}
    except (OSError, ValueError):
        return {}
    raw: dict[str, Any] = {}
    for key, section in FEATURIZER_KEYS.items():
        if key in saved:
            raw.setdefault(section, {})[key] = saved[key]
    return raw


def check_model_dir(path: str, backend: str = "torch") -> None:
    """A one-line error when `path` is not a model (or, for onnx, an export) folder."""
    needed = "model.onnx" if backend == "onnx" else "config.json"
    if not os.path.isfile(os.path.join(path, needed)):
        raise ConfigError(f"--model {path}: not a {'exported ' if backend == 'onnx' else ''}model folder (no {needed})")


def featurizer(model_dir: str, data_path: str | None, cfg, column: str | None = None):
    """The featurizer of the input column of `data_path` (text when no file is read; `column`: this input kind),
    from the model's processor and the run's data settings (`max_seq_length`, `max_audio_seconds`: inputs are cut
    as in training)."""
    from ..data.featurize import FeaturizerSettings, featurizer_for
    from ..data.parquet import TEXT_COLUMN, input_column_of

    column = column or (TEXT_COLUMN if data_path is None else input_column_of(data_path))
    settings = FeaturizerSettings(cfg.training.max_seq_length, cfg.data)
    return featurizer_for(model_dir, column, settings=settings)
