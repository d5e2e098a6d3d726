"""Hard-group curriculum: groups the model gets wrong on validation are drawn more often in training.

Every evaluation records the validation error rate of each group (`record`). From epoch `start_epoch` (0-based:
1 means after one uniform epoch) the `GroupPKSampler` asks `weights_for_epoch` and draws each group's chunks in
proportion to its error relative to the mean error, clipped to [`min_weight`, `max_oversample`]; before that, or
while every group is perfect, the draw is uniform. The weights an epoch was drawn with are kept, and both they and
the latest errors go into each checkpoint (`save` / `load`), so a resumed run replays its epoch exactly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..atomic import write_json_atomic

logger = logging.getLogger(__name__)

CURRICULUM_FILE = "hard_group_curriculum.json"


@dataclass
class CurriculumSettings:
    start_epoch: int = 1
    max_oversample: float = 3.0
    min_weight: float = 0.25


def error_weights(errors: Sequence[float], max_oversample: float, min_weight: float) -> np.ndarray | None:
    """Weights proportional to `errors` (NaN: unknown, weight 1), normalised to mean 1 over the known groups and
    clipped to [min_weight, max_oversample]; None when no known group has an error (uniform)."""
    err = np.asarray(errors, dtype=float)
    known = ~np.isnan(err)
    if not known.any() or err[known].sum() <= 0:
        return None
    weights = np.ones(len(err))
    weights[known] = np.clip(err[known] / err[known].mean(), min_weight, max_oversample)
    return weights


class HardGroupCurriculum:
    """Owner of the per-group validation errors and of the group weights of each epoch (see the module docstring)."""

    def __init__(self, settings: CurriculumSettings | None = None) -> None:
        self.settings = settings or CurriculumSettings()
        self.errors: dict[str, float] = {}
        self.epoch_weights: dict[int, dict[str, float]] = {}

    def record(self, group_errors: Mapping[str, float], epoch: float) -> dict[str, float]:
        """Store the latest per-group validation errors; returns what to log (the weights the next epoch gets)."""
        self.errors = {str(g): float(e) for g, e in group_errors.items()}
        groups = sorted(self.errors)
        next_epoch = int(epoch) + 1 if epoch > int(epoch) else int(epoch)
        active = next_epoch >= self.settings.start_epoch
        weights = self._weights(groups) if active else None
        logs = {"hard_groups_active": float(weights is not None)}
        if weights is not None:
            logs["hard_groups_max_weight"] = float(weights.max())
            logs["hard_groups_oversampled"] = float((weights > 1).sum())
            top = np.argsort(-weights)[:5]
            logger.info("hard-group weights (top 5): %s", ", ".join(f"{groups[i]}={weights[i]:.2f}" for i in top))
        return logs

    def _weights(self, groups: Sequence[str]) -> np.ndarray | None:
        s = self.settings
        return error_weights([self.errors.get(g, np.nan) for g in groups], s.max_oversample, s.min_weight)

    def weights_for_epoch(self, epoch: int, groups: Sequence[str]) -> np.ndarray | None:
        """The group weights epoch `epoch` is drawn with (None: uniform); fixed once asked, so a replay matches."""
        if epoch in self.epoch_weights:
            recorded = self.epoch_weights[epoch]
            return np.array([recorded.get(g, 1.0) for g in groups])
        weights = self._weights(groups) if epoch >= self.settings.start_epoch else None
        if weights is not None:
            self.epoch_weights = {epoch: dict(zip(groups, weights.tolist(), strict=True))}  # a resume needs the latest
        return weights

    def state_dict(self) -> dict:
        return {"errors": self.errors, "epoch_weights": {str(e): w for e, w in self.epoch_weights.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        self.errors = {str(g): float(e) for g, e in state.get("errors", {}).items()}
        self.epoch_weights = {int(e): dict(w) for e, w in state.get("epoch_weights", {}).items()}

    def save_checkpoint_files(self, checkpoint_dir: str) -> None:
        write_json_atomic(os.path.join(checkpoint_dir, CURRICULUM_FILE), self.state_dict())

    def load_checkpoint_files(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, CURRICULUM_FILE)
        if not os.path.isfile(path):
            logger.warning("%s is missing; the hard-group curriculum restarts from uniform weights", path)
            return
        with open(path, encoding="utf-8") as fh:
            self.load_state_dict(json.load(fh))
