"""Crash-safe checkpoints: each is written into a staging folder and renamed into place when complete, so an
interrupted save never leaves a half-written `checkpoint-N` for `resume_from: latest` to pick up."""

from __future__ import annotations

import os
import shutil

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..atomic import atomic_directory, replace_directory

STAGING_DIR = ".staging"


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
