"""Experiment tracking: a small Neptune callback, pictures for the trackers, and reading an offline run back.

transformers 5 deprecates its own `NeptuneCallback`, so hf_metric logs to Neptune through the `neptune` client
itself. The API token is never handled here: the client reads `NEPTUNE_API_TOKEN` from the environment, and
nothing else (the config, the logs, the saved files) ever holds it. Only the main process logs.

Neptune's hosted service closed in 2026: `mode: offline` stores the run under `.neptune/` (or
`$NEPTUNE_DATA_DIRECTORY`) and `neptune sync` uploads it later to a self-hosted server; `read_offline_run` reads
such a stored run without any server.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ..config import NeptuneSection

logger = logging.getLogger(__name__)

TRAIN_NAMESPACE, EVAL_NAMESPACE, FINAL_NAMESPACE = "train", "eval", "final"


def series_path(key: str) -> str:
    """Where a Trainer log key goes in the run: `eval_f1` -> `eval/f1`, `ce_loss` -> `train/ce_loss`."""
    if key.startswith("eval_"):
        return f"{EVAL_NAMESPACE}/{key.removeprefix('eval_')}"
    return f"{TRAIN_NAMESPACE}/{key}"


class NeptuneTracker(TrainerCallback):
    """Logs a training run to Neptune: the resolved config, every numeric Trainer log (loss parts, learning
    rate, gradient norm, evaluation metrics, bank statistics, the collapse watch) as series under `train/` and
    `eval/`, the evaluation pictures as image series under `plots/`, and, after training, the final metrics,
    pictures and report under `final/`.

    The run is opened lazily by the main process at the first event, so other processes never create one. A
    series only takes steps that increase (the server rejects the rest), so a value logged again at the same
    step (the `epoch` of an evaluation, the final evaluation after training) goes to `final/` or is skipped.

    Args:
        settings: the YAML `neptune` section.
        config: the resolved config as plain data (it holds no secret: the token lives only in the environment).
    """

    def __init__(self, settings: NeptuneSection, config: Mapping[str, Any] | None = None):
        self.settings = settings
        self.config = dict(config or {})
        self.run = None
        self._last_step: dict[str, float] = {}
        self._training = False

    # ---- the run -------------------------------------------------------------------------------------------
    def _ensure_run(self, state) -> Any | None:
        if not state.is_world_process_zero:
            return None
        if self.run is None:
            import neptune
            from neptune.utils import stringify_unsupported

            s = self.settings
            self.run = neptune.init_run(
                project=s.project,
                name=s.name,
                tags=list(s.tags) or None,
                with_id=s.with_id,
                mode=s.mode,
            )
            if self.config:
                self.run["config"] = stringify_unsupported(self.config)
        return self.run

    def _append(self, path: str, value: Any, step: float) -> bool:
        """Append to a series if `step` is past its last step; False (and nothing logged) otherwise."""
        if step <= self._last_step.get(path, float("-inf")):
            return False
        self._last_step[path] = step
        self.run[path].append(value, step=step)
        return True

    # ---- Trainer events ------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._training = True
        self._ensure_run(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def on_log(self, args, state, control, logs=None, **kwargs):
        run = self._ensure_run(state)
        if run is None or not logs:
            return
        numbers = {k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        is_eval = any(k.startswith("eval_") for k in numbers)
        for key, value in numbers.items():
            if not self._training:  # after train(): the final evaluation of the best model
                run[f"{FINAL_NAMESPACE}/{key}"] = value
            elif not (is_eval and key == "epoch"):  # the training log of the same step already has the epoch
                self._append(series_path(key), value, state.global_step)

    def log_images(self, images: Mapping[str, str], step: int) -> None:
        """PNG files (name -> path) of one evaluation: image series `plots/<name>` during training, single
        images under `final/plots/` afterwards."""
        if self.run is None:
            return
        from neptune.types import File

        for name, path in images.items():
            if self._training:
                self._append(f"plots/{name}", File(path), step)
            else:
                self.run[f"{FINAL_NAMESPACE}/plots/{name}"].append(File(path))

    def finish(self, report_path: str | None = None, best_model_dir: str | None = None) -> None:
        """Upload the report (and the best model when `log_model_checkpoints`), then close the run."""
        if self.run is None:
            return
        if report_path and os.path.isfile(report_path):
            self.run[f"{FINAL_NAMESPACE}/report"].upload(report_path)
        if self.settings.log_model_checkpoints and best_model_dir and os.path.isdir(best_model_dir):
            self.run["model/best"].upload_files(os.path.join(best_model_dir, "*"))
        self.run.stop()
        self.run = None


def tensorboard_writers(callbacks: Iterable[TrainerCallback]) -> list[Any]:
    """The SummaryWriters of transformers' own `TensorBoardCallback`s (report_to: tensorboard), so pictures go
    into the same event files as the scalars instead of a second writer."""
    from transformers.integrations import TensorBoardCallback

    return [cb.tb_writer for cb in callbacks if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None]


def publish_images(callbacks: Iterable[TrainerCallback], images: Mapping[str, str], step: int) -> None:
    """Hand the pictures of one evaluation to every tracker that takes images: Neptune and TensorBoard."""
    callbacks = list(callbacks)
    for cb in callbacks:
        if isinstance(cb, NeptuneTracker):
            cb.log_images(images, step)
    writers = tensorboard_writers(callbacks)
    if writers and images:
        from matplotlib.image import imread

        for name, path in images.items():
            pixels = imread(path)[..., :3]  # RGBA floats in [0, 1] -> RGB
            for writer in writers:
                writer.add_image(f"plots/{name}", pixels, step, dataformats="HWC")
        for writer in writers:
            writer.flush()


@dataclass
class OfflineRun:
    """What an offline Neptune run holds: atoms (`config/...`, `final/...`) by path, float series as
    (step, value) lists, and image series as (step, PNG bytes) lists."""

    path: Path
    atoms: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[float | None, float]]] = field(default_factory=dict)
    images: dict[str, list[tuple[float | None, bytes]]] = field(default_factory=dict)


def offline_run_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders of the offline runs under `data_dir` (default: `$NEPTUNE_DATA_DIRECTORY` or `.neptune`)."""
    from neptune.constants import NEPTUNE_DATA_DIRECTORY, OFFLINE_DIRECTORY

    root = Path(data_dir or os.getenv("NEPTUNE_DATA_DIRECTORY", NEPTUNE_DATA_DIRECTORY)) / OFFLINE_DIRECTORY
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def read_offline_run(run_dir: str | os.PathLike) -> OfflineRun:
    """Read a stored offline run back with the client's own disk queue and operation classes (what `neptune
    sync` replays to a server), without changing it: nothing is acknowledged, so it can still be synced."""
    from neptune.core.components.queue.disk_queue import DiskQueue
    from neptune.internal.operation import (
        AssignBool,
        AssignFloat,
        AssignInt,
        AssignString,
        LogFloats,
        LogImages,
        Operation,
    )

    run = OfflineRun(Path(run_dir))
    queue = DiskQueue(Path(run_dir), lambda op: op.to_dict(), Operation.from_dict, threading.RLock())
    try:
        while (element := queue.get()) is not None:
            op, key = element.obj, "/".join(element.obj.path)
            if isinstance(op, AssignFloat | AssignInt | AssignBool | AssignString):
                run.atoms[key] = op.value
            elif isinstance(op, LogFloats):
                run.series.setdefault(key, []).extend((v.step, v.value) for v in op.values)
            elif isinstance(op, LogImages):
                run.images.setdefault(key, []).extend((v.step, base64.b64decode(v.value.data)) for v in op.values)
    finally:
        queue.close()  # not `with`: its exit would delete an emptied queue
    return run
