"""Non-finite guard: an optimizer step whose loss or gradient norm is NaN/inf is skipped, not applied.

One bad batch (an fp16 overflow, a degenerate batch, a corrupt row) must not turn every weight into NaN, and a
run that keeps producing them must stop early and say so, instead of saving NaN checkpoints for hours:

- a step is non-finite when the loss of any of its micro-batches (on any process) or the gradient norm (after
  the DDP all-reduce, so every process decides alike) is NaN or inf;
- it is skipped: no optimizer update and no scheduler step (as GradScaler does in fp16), a warning, and the
  count since the start of this process is logged as `nonfinite_steps` with the training loss;
- `max_nonfinite_steps` consecutive ones raise `TrainingDivergedError`, naming the last checkpoint, which is
  good: no skipped step changed the weights.

In fp16 GradScaler already skips steps whose scaled gradients overflow and lowers its scale (a few such steps
at the start are normal); the guard then counts only steps whose (unscaled) loss is non-finite.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any

import torch
from transformers.trainer_utils import get_last_checkpoint

from ..errors import TrainingDivergedError

logger = logging.getLogger(__name__)

NONFINITE_LOG_KEY = "nonfinite_steps"


class NonFiniteGuardMixin:
    """For a `transformers.Trainer` subclass; set `max_nonfinite_steps` (None: never stop) before training."""

    max_nonfinite_steps: int | None = 10
    nonfinite_steps = 0  # skipped steps since this process started
    _consecutive_nonfinite = 0
    _window_loss_finite: torch.Tensor | None = None
    _skip_next_step = False

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()  # stays on the device: no sync per micro-batch
        self._window_loss_finite = finite if self._window_loss_finite is None else self._window_loss_finite & finite
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """Called once per optimizer step, after clipping and before `optimizer.step()`: decide about the step."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        loss_ok = self._window_loss_finite if self._window_loss_finite is not None else torch.tensor(True)
        self._window_loss_finite = None
        if self.accelerator.num_processes > 1:  # one process's NaN loss skips the step everywhere
            loss_ok = self.accelerator.reduce(loss_ok.float().to(self.accelerator.device), reduction="sum")
            loss_ok = loss_ok == self.accelerator.num_processes
        loss_ok = bool(loss_ok)
        norm_ok = grad_norm is None or math.isfinite(float(grad_norm))
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None:  # fp16: GradScaler skips overflowing steps itself
            bad = not loss_ok
        else:
            bad = not (loss_ok and norm_ok)
            self._skip_next_step = bad
            self._install_step_guard()
        self._count(bad, loss_ok, grad_norm)
        return grad_norm

    def _count(self, bad: bool, loss_ok: bool, grad_norm: Any) -> None:
        if not bad:
            self._consecutive_nonfinite = 0
            return
        self.nonfinite_steps += 1
        self._consecutive_nonfinite += 1
        what = "loss" if not loss_ok else f"gradient norm ({float(grad_norm)})"
        step = self.state.global_step + 1
        logger.warning(
            "step %d: non-finite %s, optimizer step skipped (%d in a row, %d in all)",
            step,
            what,
            self._consecutive_nonfinite,
            self.nonfinite_steps,
        )
        limit = self.max_nonfinite_steps
        if limit is not None and self._consecutive_nonfinite >= limit:
            out = self.args.output_dir
            last = get_last_checkpoint(out) if os.path.isdir(out) else None
            raise TrainingDivergedError(
                f"training stopped at step {step}: {self._consecutive_nonfinite} consecutive optimizer steps had a "
                f"non-finite loss or gradient norm (training.max_nonfinite_steps = {limit}); last good checkpoint: "
                f"{last or 'none'}; try a lower learning rate, bf16 instead of fp16, or gradient_clip_val"
            )

    def _install_step_guard(self) -> None:
        """Wrap `optimizer.step` once, so that a step marked bad changes nothing and tells the Trainer it was
        skipped (`accelerator.optimizer_step_was_skipped`: then the scheduler does not step either)."""
        optimizer = self.optimizer
        if getattr(optimizer, "_hf_metric_guarded", False):
            return
        original = optimizer.step

        @functools.wraps(original)  # keeps the LR scheduler's marks on `step`
        def guarded_step(*args: Any, **kwargs: Any):
            skip, self._skip_next_step = self._skip_next_step, False
            optimizer._is_overflow = skip  # what `step_was_skipped` reports
            return None if skip else original(*args, **kwargs)

        optimizer.step = guarded_step
        optimizer._hf_metric_guarded = True

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:
            logs[NONFINITE_LOG_KEY] = self.nonfinite_steps
        super().log(logs, start_time)
