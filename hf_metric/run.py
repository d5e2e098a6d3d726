"""One training run, as its steps: config -> data -> model -> trainer -> train -> finalize.

Each step is a call into the package that owns it (`data.prepare`, `training.build`, `training.finalize`); this
module only orders them and handles what belongs to the run as a whole (resuming, the output folder).
"""

from __future__ import annotations

import os
from typing import Any

from .config import TrainConfig
from .errors import ConfigError


def train(cfg: TrainConfig) -> dict[str, float]:
    """Train, evaluate the best model, save it to `<checkpoints_dir>/best` (with its head file and model card,
    pushed to the Hub if configured) and return the final metrics."""
    from .atomic import write_text_atomic
    from .training.checkpoints import check_checkpoint_matches, check_checkpoints_dir, check_free_space
    from .training.finalize import finalize

    check_precision(cfg)
    resume = _resume_checkpoint(cfg)
    out_dir = cfg.checkpointing.checkpoints_dir
    check_checkpoints_dir(out_dir)
    trainer, data = build_run(cfg)
    model = trainer.accelerator.unwrap_model(trainer.model)
    check_free_space(out_dir, model)
    if resume is not None:
        check_checkpoint_matches(resume, model)
    if trainer.is_world_process_zero():
        write_text_atomic(os.path.join(out_dir, "resolved_config.yaml"), cfg.to_yaml())
    _train_refusing_pickles(trainer, resume)
    return finalize(trainer, cfg, data)


def build_run(cfg: TrainConfig, **argument_overrides: Any):
    """`(trainer, prepared data)`: everything up to `trainer.train()`."""
    from .data.featurize import FeaturizerSettings, featurizer_for
    from .data.prepare import input_column_of_data, prepare_datasets
    from .packaged_models import resolve_model_path
    from .training.arguments import build_training_arguments
    from .training.build import build_model, build_trainer, check_data_for_config

    check_precision(cfg)
    args = build_training_arguments(cfg, **argument_overrides)
    modality = input_column_of_data(cfg.data)
    model_path = None if cfg.model_config is not None else resolve_model_path(cfg.model_name)
    model_type = (cfg.model_config or {}).get("model_type")
    settings = FeaturizerSettings(cfg.training.max_seq_length, cfg.data, model_type, cfg.processor_config)
    featurizer = featurizer_for(model_path, modality, settings=settings)
    with args.main_process_first(desc="prepare data"):
        data = prepare_datasets(cfg.data, featurizer, cfg.training.seed, train_with_oos=cfg.open_set.train_with_oos)
    check_data_for_config(cfg, data)
    model = build_model(cfg, data, model_path, modality)
    return build_trainer(cfg, args, data, model, featurizer), data


def build_trainer(cfg: TrainConfig, **argument_overrides: Any):
    """The trainer of `build_run` alone (benchmarks and tests that drive it step by step)."""
    return build_run(cfg, **argument_overrides)[0]


def check_precision(cfg: TrainConfig) -> None:
    import torch

    if cfg.training.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("training.mixed_precision: fp16 needs a GPU; use bf16 (or no) on CPU")


def _resume_checkpoint(cfg: TrainConfig) -> str | None:
    """`resume_from`: a checkpoint folder, or `latest` for the newest complete one in checkpoints_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    target = cfg.training.resume_from
    if target is None:
        return None
    if target == "latest":
        folder = cfg.checkpointing.checkpoints_dir
        last = get_last_checkpoint(folder) if os.path.isdir(folder) else None
        if last is None:
            raise ConfigError(f"training.resume_from: no checkpoint found in {folder}")
        return last
    if not os.path.isfile(os.path.join(target, "trainer_state.json")):
        raise ConfigError(f"training.resume_from: {target} is not a checkpoint folder (no trainer_state.json)")
    return target


def _train_refusing_pickles(trainer, resume: str | None) -> None:
    """`trainer.train`; the Trainer loads a checkpoint's optimizer, scheduler and RNG state with
    `torch.load(weights_only=True)`, which refuses pickles that would run code: say so in one line."""
    import pickle

    try:
        trainer.train(resume_from_checkpoint=resume)
    except pickle.UnpicklingError as err:
        if resume is None:
            raise
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(
            f"training.resume_from: {resume} holds a pickle that is not plain tensors; refused ({reason})"
        ) from None
