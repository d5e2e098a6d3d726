"""Crash-safe checkpoints: each is written into a staging folder and renamed into place when complete, so an
interrupted save never leaves a half-written `checkpoint-N` for `resume_from: latest` to pick up."""

from __future__ import annotations

import json
import os
import shutil
import uuid

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic import atomic_directory, replace_directory
from ..errors import ConfigError

STAGING_DIR = ".staging"
WEIGHTS_FILE = "model.safetensors"


class AtomicCheckpointsMixin:
    """For a `transformers.Trainer` subclass: `_save_checkpoint` writes into `<output_dir>/.staging/` first, then
    `save_extra_checkpoint_files` (the subclass's own state) and one rename; `save_final_model` is atomic too."""

    _staging_root: str | None = None

    def save_extra_checkpoint_files(self, checkpoint_dir: str) -> None:
        """State that travels with a checkpoint, written before the rename (override in the subclass)."""

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial=trial)
        staging_root = os.path.join(run_dir, STAGING_DIR)
        folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staged = os.path.join(run_dir, folder), os.path.join(staging_root, folder)
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        if self.state.best_model_checkpoint == staged:
            self.state.best_model_checkpoint = final
        self.accelerator.wait_for_everyone()  # every process has written its RNG state into `staged`
        if self.args.should_save:
            state_file = os.path.join(staged, "trainer_state.json")
            if os.path.exists(state_file):  # record the final path, not the staging one
                self.state.save_to_json(state_file)
            self.save_extra_checkpoint_files(staged)
            replace_directory(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            self._rotate_checkpoints_in(run_dir)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial):
        if self._staging_root is not None:
            return self._staging_root
        return super()._get_output_dir(trial)

    def _rotate_checkpoints_in(self, run_dir: str) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        rotate_checkpoints(
            output_dir=run_dir,
            save_total_limit=self.args.save_total_limit,
            best_model_checkpoint=self.state.best_model_checkpoint,
            use_mtime=True,
        )

    def save_final_model(self, path: str) -> None:
        """`save_model` into `path` atomically (main process only)."""
        if not self.args.should_save:
            return
        with atomic_directory(path) as tmp:
            self.save_model(tmp)


def check_checkpoints_dir(folder: str) -> None:
    """Fail before training, in one line, when `checkpointing.checkpoints_dir` cannot be created or written."""
    probe = os.path.join(folder, f".write-test-{uuid.uuid4().hex}")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(probe, "wb") as fh:
            fh.write(b"0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise ConfigError(f"checkpointing.checkpoints_dir: cannot write to {folder}: {err.strerror or err}") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def check_free_space(folder: str, model, copies: int = 2) -> None:
    """Fail before training when `folder` has no room for `copies` checkpoints: weights plus AdamW's two moments
    (4 bytes each per parameter), so a run does not die at its first save hours later."""
    per_checkpoint = 3 * sum(p.numel() * 4 for p in model.parameters())
    free = shutil.disk_usage(folder).free
    if free < copies * per_checkpoint:
        raise ConfigError(
            f"checkpointing.checkpoints_dir: {folder} has {free / 2**20:.0f} MiB free, a checkpoint needs about "
            f"{per_checkpoint / 2**20:.0f} MiB ({copies} at least)"
        )


def check_checkpoint_matches(checkpoint: str, model) -> None:
    """Fail in one line when `checkpoint` was not written by a run of this config: other labels, another head or
    backbone (tensor shapes), or pickled weights only (hf_metric loads weights from safetensors only)."""
    from safetensors import safe_open

    where = f"training.resume_from: {checkpoint}"
    config_file, weights = os.path.join(checkpoint, "config.json"), os.path.join(checkpoint, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ConfigError(f"{where} has no {WEIGHTS_FILE} (hf_metric resumes from safetensors weights only)")
    try:
        with open(config_file, encoding="utf-8") as fh:
            saved = json.load(fh)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{where}: unreadable config.json ({err})") from None
    labels = {int(k): v for k, v in (saved.get("id2label") or {}).items()}
    if labels != dict(model.config.id2label):
        raise ConfigError(
            f"{where} was trained on other labels ({len(labels)} classes, e.g. {sorted(labels.values())[:3]}; this "
            f"data has {model.config.num_labels}, e.g. {sorted(model.config.id2label.values())[:3]})"
        )
    for key in ("head_type", "pooling", "projection_dim"):
        if saved.get(key) != getattr(model.config, key):
            raise ConfigError(f"{where} has {key} {saved.get(key)!r}, this config {getattr(model.config, key)!r}")
    with safe_open(weights, framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("knn_reference_")}
    differ = [k for k in expected if shapes.get(k) != expected[k]]
    if differ:
        key = differ[0]
        raise ConfigError(
            f"{where} holds another model: {len(differ)} tensors differ, e.g. {key} "
            f"{shapes.get(key, 'missing')} vs {expected[key]} here"
        )
