"""`MetricClassifierTrainer`: a `transformers.Trainer` that trains with CE + a metric loss, exactly.

It overrides only what it must:

- the train sampler (P classes x K rows per batch, so the metric loss has positives);
- `get_batch_samples`, to count the CE rows and metric anchors of the whole gradient-accumulation window (and
  of all processes), and `compute_loss`, to normalise each part by those counts. The sum of the micro-batch
  losses is then the loss of the whole window, so 2 x 8 rows give the same update as 16;
- `log` and `evaluation_loop`, to report the loss parts and the classifier metrics, watch for a collapse of
  the predictions (on validation and, every few steps, on the training batch), and draw the evaluation
  pictures (`hf_metric.plots`), which `evaluate` then hands to the trackers;
- `_save_checkpoint`, to write every checkpoint into a staging folder and rename it into place, so that an
  interrupted save never leaves a half-written checkpoint for `resume_from` to pick up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput

from .bank import EmbeddingBank
from .distributed import CROSS_PROCESS_MODES, cross_process_per_anchor, gather_rows
from .losses import masked_mean
from .metrics import (
    COLLAPSE_REMEDIES,
    bank_statistics,
    classification_metrics,
    collapse_statistics,
    knn_metrics,
    recall_at_k,
    top_k_accuracy,
)
from .optim import parameter_groups
from .samplers import ClassBalancedBatchSampler

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
BANK_FILE = "embedding_bank.safetensors"


@dataclass
class RetrievalEvalSettings:
    """How validation rows are compared with the embedding bank (the YAML `metric_validation` section)."""

    recall_at_k: tuple[int, ...] = (1, 5, 10)
    distance: str = "cos"
    knn_k: int = 10
    keep_last_n_emb_steps: int = 50


@dataclass
class PlotSettings:
    """Where the evaluation pictures go (`<checkpoints_dir>/plots`) and how the embedding map is drawn."""

    out_dir: str
    embedding_map: str = "pca"


@dataclass
class WindowCounts:
    """Rows that count for each loss part over one optimizer step (all micro-batches, all processes)."""

    ce_rows: torch.Tensor
    metric_anchors: torch.Tensor


@contextmanager
def atomic_directory(final_path: str) -> Iterator[str]:
    """Yield a temporary sibling folder to write into; on success it replaces `final_path` in one rename."""
    parent = os.path.dirname(os.path.abspath(final_path))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp-{os.path.basename(final_path)}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(final_path):
        shutil.rmtree(final_path)
    os.replace(tmp, final_path)


class MetricClassifierTrainer(Trainer):
    """Trainer for `MetricClassifierModel` (masked CE + metric loss).

    Args:
        samples_per_class: K of the P x K batches; `None` keeps the Trainer's random batches.
        metric_loss_name: the name the metric part is logged under (`supcon_loss` for SupCon).
        retrieval: the embedding bank and retrieval metrics (`RetrievalEvalSettings`).
        distributed_metric_loss: `global` or `local_anchors`, see `_cross_process_metric_loss`.
        head_lr_multiplier, layerwise_lr_decay: per-parameter learning rates (`hf_metric.optim`).
        plots: draw the evaluation pictures (`PlotSettings`); None: no pictures.
        collapse_check_steps: every this many optimizer steps, the collapse watch looks at the training batch
            (logged as `batch_*` with the next training log); None: never.
        Everything else as `transformers.Trainer`. Pass `TrainingArguments(label_names=["labels",
        "classifier_mask", "metric_mask"], remove_unused_columns=False)` so evaluation sees the masks
        (`hf_metric.config.build_training_arguments` does).
    """

    loss_is_scaled_for_ga = True  # compute_loss divides by the window counts itself

    def __init__(
        self,
        *args: Any,
        samples_per_class: int | None = 4,
        metric_loss_name: str = "supcon",
        retrieval: RetrievalEvalSettings | None = None,
        distributed_metric_loss: str = "global",
        head_lr_multiplier: float = 1.0,
        layerwise_lr_decay: float = 1.0,
        plots: PlotSettings | None = None,
        collapse_check_steps: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.head_lr_multiplier = head_lr_multiplier
        self.layerwise_lr_decay = layerwise_lr_decay
        if distributed_metric_loss not in CROSS_PROCESS_MODES:
            raise ValueError(f"distributed_metric_loss must be one of {CROSS_PROCESS_MODES}")
        self.distributed_metric_loss = distributed_metric_loss
        self.samples_per_class = samples_per_class
        self.retrieval = retrieval or RetrievalEvalSettings()
        config = self._loss_model().config
        self.bank = EmbeddingBank(
            capacity_steps=self.retrieval.keep_last_n_emb_steps,
            dim=config.embedding_dim,
            max_rows_per_step=self._train_batch_size
            * self.args.gradient_accumulation_steps
            * self.accelerator.num_processes,
        )
        self.metric_part_name = f"{metric_loss_name}_loss"
        self._part_sums: torch.Tensor | None = None  # (CE, metric) window means summed since the last log
        self._part_steps = 0  # optimizer steps accumulated in `_part_sums` since the last log
        self._staging_root: str | None = None
        self.plots = plots
        self.latest_plots: dict[str, str] = {}  # name -> PNG path of the latest evaluation's pictures
        self._pending_images: dict[str, str] = {}
        self._training_done = False
        self.collapse_check_steps = collapse_check_steps
        self._batch_watch: dict[str, float] = {}  # the latest training-batch collapse statistics, not yet logged
        self._watched_step = -1
        self._collapsed_checks = 0  # consecutive training-batch checks that saw a collapse
        self._collapse_warned = False
        self._class_counts: dict[int, int] | None = None

    # ---- batches ---------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.samples_per_class is None:
            return super()._get_train_sampler(dataset)
        return ClassBalancedBatchSampler(
            dataset["labels"],
            batch_size=self._train_batch_size,
            samples_per_class=self.samples_per_class,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def _loss_model(self):
        return self.accelerator.unwrap_model(self.model)

    def _metric_rows(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and 0/1 metric mask of one micro-batch (rows with label -100 are out of the loss)."""
        labels = inputs["labels"]
        mask = inputs.get("metric_mask")
        keep = (labels >= 0) & (mask.bool() if mask is not None else True)
        return labels, keep.to(torch.int64)

    def _global_metric_rows(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """`_metric_rows` of this micro-batch on every process, each padded to the largest (padding masked)."""
        labels, mask = self._metric_rows(inputs)
        if self.accelerator.num_processes == 1:
            return labels, mask
        return gather_rows(labels, pad_value=-1), gather_rows(mask, pad_value=0)

    def _ce_rows(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        labels, ce_mask = inputs["labels"], inputs.get("classifier_mask")
        return ((labels >= 0) & (ce_mask.bool() if ce_mask is not None else True)).sum().float()

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        self._part_steps += 1
        ce_rows = torch.stack([self._ce_rows(b) for b in batch_samples]).sum().to(device)
        if self.accelerator.num_processes > 1:
            ce_rows = self.accelerator.reduce(ce_rows, reduction="sum")
        # Anchors are counted on the global micro-batch: under several processes an anchor's positives may
        # sit on another process, and the metric loss sees them (see `_cross_process_metric_loss`).
        loss_fn = self._loss_model().metric_loss_fn
        anchors = sum(loss_fn.num_anchors(*self._global_metric_rows(b)).float() for b in batch_samples)
        return batch_samples, WindowCounts(ce_rows, torch.as_tensor(anchors, device=device))

    # ---- optimizer -------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with per-parameter learning rates when a head multiplier or a layer-wise
        decay is set (their groups replace the Trainer's two weight-decay groups)."""
        opt_model = self.model if model is None else model
        if self.optimizer is None and (self.head_lr_multiplier != 1.0 or self.layerwise_lr_decay != 1.0):
            groups = parameter_groups(
                opt_model,
                self.args.learning_rate,
                self.args.weight_decay,
                self.get_decay_parameter_names(opt_model),
                self.head_lr_multiplier,
                self.layerwise_lr_decay,
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    # ---- loss ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        config = self._loss_model().config
        ce, metric = outputs.ce_loss, outputs.metric_loss
        loss_fn = self._loss_model().metric_loss_fn
        if isinstance(num_items_in_batch, WindowCounts):
            # mean over this micro-batch x its share of the window = this batch's part of the window mean
            if self.accelerator.num_processes > 1 and config.metric_loss_weight > 0:
                metric, local_anchors = self._cross_process_metric_loss(outputs.embeddings, inputs)
            else:
                local_anchors = loss_fn.num_anchors(*self._metric_rows(inputs))
            scale = float(self.accelerator.num_processes)  # DDP averages gradients over processes
            ce = ce * self._ce_rows(inputs) / num_items_in_batch.ce_rows.clamp(min=1) * scale
            metric = metric * local_anchors / num_items_in_batch.metric_anchors.clamp(min=1) * scale
            # this process's share of each window mean; the shares of all processes add up to it
            parts = torch.stack([ce.detach().float(), metric.detach().float()]) / scale
            self._part_sums = parts if self._part_sums is None else self._part_sums + parts
            self._add_to_bank(outputs.embeddings, inputs)
            self._watch_training_batch(outputs.logits, inputs)
        loss = config.classification_loss_weight * ce + config.metric_loss_weight * metric
        return (loss, outputs) if return_outputs else loss

    def _cross_process_metric_loss(
        self, embeddings: torch.Tensor, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean metric loss of this process's anchors against all processes' candidates, and their count."""
        labels, mask = self._metric_rows(inputs)
        loss_fn = self._loss_model().metric_loss_fn
        rows, valid = cross_process_per_anchor(loss_fn, embeddings, labels, mask, self.distributed_metric_loss)
        return masked_mean(rows, valid), valid.sum().float()

    def _add_to_bank(self, embeddings: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        """Keep this micro-batch's metric rows (from every process) in the bank under the current step."""
        labels, keep = self._global_metric_rows(inputs)
        embeddings = embeddings.detach().float()
        if self.accelerator.num_processes > 1:  # padded like the labels; the mask drops the padding
            embeddings = gather_rows(embeddings)
        keep = keep.bool()
        self.bank.add(self.state.global_step, embeddings[keep], labels[keep])

    # ---- collapse watch ----------------------------------------------------------------------------------
    def _watch_training_batch(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        """Every `collapse_check_steps` optimizer steps (not at step 0, where an untrained head may well
        predict one class), the collapse statistics of this process's first micro-batch of the step, from the
        logits it already has. A batch holds only P classes, so here a collapse means one predicted class for
        rows of several; seen at two checks in a row, it triggers the warning."""
        step, every = self.state.global_step, self.collapse_check_steps
        if not every or step == 0 or step % every or step == self._watched_step:
            return
        self._watched_step = step
        labels, ce_mask = inputs["labels"], inputs.get("classifier_mask")
        rows = (labels >= 0) & (ce_mask.bool() if ce_mask is not None else True)
        if not rows.any():
            return
        stats, collapsed = collapse_statistics(logits.detach()[rows], labels[rows].cpu().numpy(), max_distinct=1)
        stats.pop("normalized_prediction_entropy", None)  # a batch holds only a few classes: not comparable
        self._batch_watch = {f"batch_{k}": round(v, 6) for k, v in stats.items()}
        self._collapsed_checks = self._collapsed_checks + 1 if collapsed else 0
        if self._collapsed_checks >= 2:
            self._warn_collapse(int(stats["distinct_predictions"]), int(rows.sum()), f"training batch (step {step})")

    def _warn_collapse(self, distinct: int, rows: int, where: str) -> None:
        """The collapse warning, once per run and from the main process only."""
        if self._collapse_warned or not self.is_world_process_zero():
            return
        self._collapse_warned = True
        logger.warning(
            "prediction collapse: the classifier predicts %d distinct class(es) for %d rows of the %s; %s",
            distinct,
            rows,
            where,
            COLLAPSE_REMEDIES,
        )

    # ---- logging and evaluation -----------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._part_sums is not None:
            parts, steps = self._part_sums, max(1, self._part_steps)
            if self.accelerator.num_processes > 1:
                parts = self.accelerator.reduce(parts, reduction="sum")
            logs["ce_loss"] = round(parts[0].item() / steps, 6)
            logs[self.metric_part_name] = round(parts[1].item() / steps, 6)
            self._part_sums, self._part_steps = None, 0
        if "loss" in logs and self._batch_watch:
            logs.update(self._batch_watch)
            self._batch_watch = {}
        super().log(logs, start_time)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """`Trainer.evaluate`, then the pictures of this evaluation go to the trackers (after the metrics are
        logged, so a TensorBoard writer closed at the end of training has been reopened by then)."""
        metrics = super().evaluate(*args, **kwargs)
        if self._pending_images:
            from .tracking import publish_images

            publish_images(self.callback_handler.callbacks, self._pending_images, self.state.global_step)
            self._pending_images = {}
        return metrics

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ) -> EvalLoopOutput:
        output = super().evaluation_loop(
            dataloader, description, False, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix
        )
        metrics = dict(output.metrics)
        metrics.update(self.prediction_metrics(output, metric_key_prefix))
        return EvalLoopOutput(
            predictions=output.predictions, label_ids=output.label_ids, metrics=metrics, num_samples=output.num_samples
        )

    def validation_losses(
        self, logits: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, ce_rows: np.ndarray, metric_rows
    ) -> dict[str, float]:
        """Loss and its parts over the whole validation set at once (the predictions gathered from every
        process, without the duplicates of an uneven last batch): the same numbers for any batch size and
        process count. The metric loss pairs every validation row with every other, in chunks of anchors."""
        model = self._loss_model()
        config = model.config
        labels_t = torch.as_tensor(labels)
        ce_rows_t, ce_valid = model.classification_loss_fn.per_row(
            torch.as_tensor(logits), labels_t, torch.as_tensor(ce_rows)
        )
        emb, mask = torch.as_tensor(embeddings, dtype=torch.float32), torch.as_tensor(metric_rows)
        total, count = torch.zeros((), dtype=torch.float64), 0
        with torch.no_grad():
            for start in range(0, len(emb), 1024):
                chunk = slice(start, start + 1024)
                rows, valid = model.metric_loss_fn.per_anchor(
                    emb[chunk],
                    labels_t[chunk],
                    mask[chunk],
                    candidates=(emb, labels_t, mask),
                    self_index=torch.arange(start, min(start + 1024, len(emb))),
                )
                total, count = total + rows[valid].double().sum(), count + int(valid.sum())
        ce = masked_mean(ce_rows_t, ce_valid).item()
        metric = total.item() / max(count, 1)
        return {
            "loss": config.classification_loss_weight * ce + config.metric_loss_weight * metric,
            "ce_loss": ce,
            self.metric_part_name: metric,
        }

    def prediction_metrics(self, output: EvalLoopOutput, prefix: str) -> dict[str, float]:
        """Classifier metrics over validation rows with classifier_mask = 1, retrieval metrics of validation
        rows against the embedding bank, bank statistics and prediction diversity."""
        if output.predictions is None or output.label_ids is None:
            return {}
        predictions = output.predictions if isinstance(output.predictions, tuple) else (output.predictions,)
        label_ids = output.label_ids if isinstance(output.label_ids, tuple) else (output.label_ids,)
        logits, labels = predictions[0], np.asarray(label_ids[0])
        ce_rows = np.asarray(label_ids[1]).astype(bool) if len(label_ids) > 1 else np.ones(len(labels), bool)
        metric_rows = np.asarray(label_ids[2]).astype(bool) if len(label_ids) > 2 else np.ones(len(labels), bool)
        metrics = {}
        if len(predictions) > 1:
            metrics.update(self.validation_losses(logits, predictions[1], labels, ce_rows, metric_rows))
        metrics.update(classification_metrics(logits[ce_rows], labels[ce_rows]))
        metrics["top5_accuracy"] = top_k_accuracy(logits[ce_rows], labels[ce_rows], k=5)
        watch, collapsed = collapse_statistics(logits[ce_rows], labels[ce_rows])
        metrics.update(watch)
        if collapsed:
            self._warn_collapse(int(watch["distinct_predictions"]), int(ce_rows.sum()), "validation set")
        if len(predictions) > 1 and len(self.bank) > 0:
            metrics.update(self.retrieval_metrics(np.asarray(predictions[1]), labels, ce_rows, metric_rows))
        if self.plots is not None and prefix == "eval" and self.is_world_process_zero():
            embeddings = np.asarray(predictions[1]) if len(predictions) > 1 else None
            self.draw_plots(logits, embeddings, labels, ce_rows)
        return {f"{prefix}_{k}": v for k, v in metrics.items()}

    def draw_plots(self, logits: np.ndarray, embeddings: np.ndarray | None, labels: np.ndarray, ce_rows) -> None:
        """The pictures of this evaluation (`hf_metric.plots.evaluation_plots`) into `plots.out_dir`, named
        with the step (`_final` for the evaluations after training); kept for `evaluate` to publish."""
        from .plots import evaluation_plots

        tag = "final" if self._training_done else f"step{self.state.global_step}"
        labelled = labels >= 0
        self.latest_plots = evaluation_plots(
            self.plots.out_dir,
            tag,
            embeddings[labelled] if embeddings is not None else None,
            labels[labelled],
            labels[ce_rows],
            np.asarray(logits[ce_rows]).argmax(axis=-1),
            class_names=self._loss_model().config.id2label,
            class_counts=self._train_class_counts(),
            method=self.plots.embedding_map,
        )
        self._pending_images = dict(self.latest_plots)

    def _train_class_counts(self) -> dict[int, int] | None:
        """Training rows per class id, so the per-class F1 picture marks the classes that are rare in training."""
        if self.train_dataset is None or "labels" not in getattr(self.train_dataset, "column_names", ()):
            return None
        if self._class_counts is None:
            ids, counts = np.unique(np.asarray(self.train_dataset["labels"]), return_counts=True)
            self._class_counts = {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i >= 0}
        return self._class_counts

    def retrieval_metrics(
        self, embeddings: np.ndarray, labels: np.ndarray, ce_rows: np.ndarray, metric_rows: np.ndarray
    ) -> dict[str, float]:
        """Recall@K (queries: rows with metric_mask = 1), kNN accuracy/F1 (queries: rows with classifier_mask
        = 1, as for the classifier) against the bank, and the bank's own statistics."""
        r = self.retrieval
        bank_emb, bank_labels = self.bank.embeddings(), self.bank.labels().cpu().numpy()
        out: dict[str, float] = {}
        if metric_rows.any():
            recalls = recall_at_k(
                embeddings[metric_rows], labels[metric_rows], bank_emb, bank_labels, r.recall_at_k, r.distance
            )
            out.update({f"recall@{k}": v for k, v in recalls.items()})
        if ce_rows.any():
            knn = knn_metrics(embeddings[ce_rows], labels[ce_rows], bank_emb, bank_labels, r.knn_k, None, r.distance)
            out.update(knn)
        out.update({f"bank_{k}": float(v) for k, v in bank_statistics(bank_emb, bank_labels).items()})
        return out

    # ---- checkpoints ----------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial) -> None:
        """Write the checkpoint into `<output_dir>/.staging/` and rename it into place when complete."""
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
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(staging_root, ignore_errors=True)
            self._rotate_checkpoints_in(run_dir)
        self.accelerator.wait_for_everyone()

    def _get_output_dir(self, trial):
        if getattr(self, "_staging_root", None) is not None:
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

    def save_extra_checkpoint_files(self, checkpoint_dir: str) -> None:
        """State that travels with a checkpoint (written before the atomic rename): the embedding bank, so
        that a resumed run evaluates against the same rows."""
        self.bank.save(os.path.join(checkpoint_dir, BANK_FILE))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if isinstance(resume_from_checkpoint, str):
            bank_file = os.path.join(resume_from_checkpoint, BANK_FILE)
            if os.path.isfile(bank_file):
                self.bank.load(bank_file)
            else:
                logger.warning("%s has no embedding bank; retrieval metrics restart from an empty bank", bank_file)
        self._training_done = False
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self._training_done = True  # later evaluations judge the final (best) model
        return output

    @torch.no_grad()
    def embed_dataset(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and labels of every row of a tokenized dataset, gathered from every process in order."""
        model = self.model
        model.eval()
        embeddings, labels = [], []
        for inputs in self.get_eval_dataloader(dataset):
            inputs = self._prepare_inputs(inputs)
            row_labels = inputs.pop("labels")
            features = {k: v for k, v in inputs.items() if k not in ("metric_mask", "classifier_mask")}
            out = model(**features)
            embeddings.append(self.accelerator.gather_for_metrics(out.embeddings.float()))
            labels.append(self.accelerator.gather_for_metrics(row_labels))
        return torch.cat(embeddings), torch.cat(labels)

    def save_final_model(self, path: str) -> None:
        """`save_model` into `path` atomically (main process only)."""
        if not self.args.should_save:
            return
        with atomic_directory(path) as tmp:
            self.save_model(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write through a temporary file and rename it into place: a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_json_atomic(path: str, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True))
