"""A training run to be killed by tests/test_crash_safety.py: `crash_worker.py CONFIG`.

HFM_STEP_SLEEP: seconds to sleep in every training step (a wider window for a kill between checkpoints).
HFM_HANG_AT_SAVE=N and HFM_HANG_MARKER=PATH: the N-th checkpoint save writes PATH and hangs after the checkpoint
is staged but before its rename, so the test can kill the process in the middle of a save.
"""

import os
import sys
import time

from hf_metric.cli import main
from hf_metric.training.trainer import MetricClassifierTrainer

step_sleep = float(os.environ.get("HFM_STEP_SLEEP", "0"))
hang_at = int(os.environ.get("HFM_HANG_AT_SAVE", "0"))
saves = {"n": 0}
original_step, original_extra = (
    MetricClassifierTrainer.training_step,
    MetricClassifierTrainer.save_extra_checkpoint_files,
)


def training_step(self, *args, **kwargs):
    time.sleep(step_sleep)
    return original_step(self, *args, **kwargs)


def save_extra_checkpoint_files(self, checkpoint_dir):
    original_extra(self, checkpoint_dir)
    saves["n"] += 1
    if saves["n"] == hang_at:
        with open(os.environ["HFM_HANG_MARKER"], "w") as fh:
            fh.write(checkpoint_dir)
        time.sleep(600)


MetricClassifierTrainer.training_step = training_step
MetricClassifierTrainer.save_extra_checkpoint_files = save_extra_checkpoint_files
sys.exit(main(["--config", sys.argv[1]]))
