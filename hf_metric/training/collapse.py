"""The collapse watch: notice when the classifier predicts (almost) one class for everything, and say what to do.

On validation a collapse is judged by `metrics.collapse_statistics` on the whole set. On the training batch it is
checked every few optimizer steps from the logits already computed (no extra forward pass); a P x K batch holds
only P classes, so there a collapse means one predicted class for rows of several, seen at two checks in a row
(an untrained head may well predict one class at first).
"""

from __future__ import annotations

import logging

import torch

from ..evaluation.metrics import COLLAPSE_REMEDIES, collapse_statistics
from ..model.objective import rows_in

logger = logging.getLogger(__name__)


class CollapseWatch:
    """Training-batch statistics every `every` optimizer steps (None: never) and one warning per run."""

    def __init__(self, every: int | None, is_main_process: bool = True) -> None:
        self.every = every
        self.is_main_process = is_main_process
        self.pending: dict[str, float] = {}  # the latest training-batch statistics, not yet logged
        self._watched_step = -1
        self._collapsed_checks = 0  # consecutive training-batch checks that saw a collapse
        self._warned = False

    def watch_batch(self, step: int, logits: torch.Tensor, labels: torch.Tensor, classifier_mask) -> None:
        """Check this step's first micro-batch (not step 0), from its logits."""
        if not self.every or step == 0 or step % self.every or step == self._watched_step:
            return
        self._watched_step = step
        rows = rows_in(labels, classifier_mask)
        if not rows.any():
            return
        stats, collapsed = collapse_statistics(logits.detach()[rows], labels[rows].cpu().numpy(), max_distinct=1)
        stats.pop("normalized_prediction_entropy", None)  # a batch holds only a few classes: not comparable
        self.pending = {f"batch_{k}": round(v, 6) for k, v in stats.items()}
        self._collapsed_checks = self._collapsed_checks + 1 if collapsed else 0
        if self._collapsed_checks >= 2:
            self.warn(int(stats["distinct_predictions"]), int(rows.sum()), f"training batch (step {step})")

    def take_pending(self) -> dict[str, float]:
        """The statistics to add to the next training log (then forgotten)."""
        pending, self.pending = self.pending, {}
        return pending

    def warn(self, distinct: int, rows: int, where: str) -> None:
        """The collapse warning, once per run and from the main process only."""
        if self._warned or not self.is_main_process:
            return
        self._warned = True
        logger.warning(
            "prediction collapse: the classifier predicts %d distinct class(es) for %d rows of the %s; %s",
            distinct,
            rows,
            where,
            COLLAPSE_REMEDIES,
        )
