"""`MetricClassifierTrainer`: a `transformers.Trainer` that trains with the model's `TrainingObjective`, exactly.

It overrides only what a Trainer subclass must own, and delegates the rest:

- the train sampler: P classes x K rows per batch (`samplers.ClassBalancedBatchSampler`), so the metric loss has
  positives;
- `get_batch_samples` and `compute_loss`: the rows of each loss part are counted over the whole
  gradient-accumulation window and all processes, and the objective divides each micro-batch's sum by those
  counts, so 2 x 8 rows give the same update as 16 (and N processes x B rows as one process with N*B);
- `create_optimizer`: per-parameter learning rates (`optim.parameter_groups`);
- `log`, `evaluate` and `evaluation_loop`: the loss parts in the training log, the training-batch collapse watch
  (`collapse.CollapseWatch`), every validation metric and picture from `evaluation.MetricEvaluator` (retrieval
  against `bank.EmbeddingBank`, the recent training steps' embeddings), the pictures handed to the trackers;
- checkpoints: atomic (`checkpoints.AtomicCheckpointsMixin`), with the bank (and the hard-group curriculum)
  saved inside and restored on resume;
- steps with a non-finite loss or gradient norm are skipped, too many in a row stop the run
  (`guard.NonFiniteGuardMixin`).

With `group_sampling` the batches are group-aware (`group_sampler.GroupPKSampler`), and with its curriculum each
evaluation's per-group errors decide how often each group is drawn next (`curriculum.HardGroupCurriculum`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from ..data.prepare import labels_of
from ..evaluation.evaluator import EvalPredictions, MetricEvaluator
from .bank import EmbeddingBank
from .checkpoints import AtomicCheckpointsMixin
from .collapse import CollapseWatch
from .distributed import CROSS_PROCESS_MODES, cross_process_candidates, gather_rows
from .group_sampler import GroupSampling
from .guard import NonFiniteGuardMixin
from .optim import parameter_groups
from .samplers import row_lengths, train_sampler

logger = logging.getLogger(__name__)

BANK_FILE = "embedding_bank.safetensors"


@dataclass
class WindowCounts:
    """Rows that count for each loss part over one optimizer step (all micro-batches, all processes)."""

    ce_rows: torch.Tensor
    metric_anchors: torch.Tensor
    memory: tuple[torch.Tensor, torch.Tensor] | None = None
    """`training.bank_negatives`: the bank's newest rows when the window began, extra metric-loss candidates."""
    oos_rows: torch.Tensor | None = None
    """Known out-of-scope rows of the outlier-exposure part (`open_set.outlier_exposure_weight`)."""


class MetricClassifierTrainer(NonFiniteGuardMixin, AtomicCheckpointsMixin, Trainer):
    """Trainer for `MetricClassifierModel` (its `objective`: masked classification loss + metric loss).

    Args:
        samples_per_class: K of the P x K batches; `None` keeps the Trainer's random batches.
        evaluator: computes every validation metric and picture (default: a `MetricEvaluator` on the model's
            objective, without pictures).
        bank_steps: training steps whose embeddings the bank keeps as the retrieval reference.
        distributed_metric_loss: `global` or `local_anchors` (see `distributed.cross_process_candidates`).
        head_lr_multiplier, layerwise_lr_decay: per-parameter learning rates (`hf_metric.training.optim`).
        collapse_check_steps: every this many optimizer steps, the collapse watch looks at the training batch
            (logged as `batch_*` with the next training log); None: never.
        max_nonfinite_steps: consecutive non-finite steps (skipped) that stop training; None: never stop.
        group_sampling, length_grouping: group-aware P x K batches (with a curriculum); batches of similar lengths.
        Everything else as `transformers.Trainer`. Pass `TrainingArguments(label_names=["labels",
        "classifier_mask", "metric_mask"], remove_unused_columns=False)` so evaluation sees the masks
        (`hf_metric.training.arguments.build_training_arguments` does).
    """

    loss_is_scaled_for_ga = True  # the objective divides by the window counts itself

    def __init__(
        self,
        *args: Any,
        samples_per_class: int | None = 4,
        evaluator: MetricEvaluator | None = None,
        bank_steps: int = 50,
        distributed_metric_loss: str = "global",
        head_lr_multiplier: float = 1.0,
        layerwise_lr_decay: float = 1.0,
        collapse_check_steps: int | None = None,
        max_nonfinite_steps: int | None = 10,
        bank_negatives: tuple[int, int] | None = None,
        group_sampling: GroupSampling | None = None,
        length_grouping: bool = False,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if distributed_metric_loss not in CROSS_PROCESS_MODES:
            raise ValueError(f"distributed_metric_loss must be one of {CROSS_PROCESS_MODES}")
        self.samples_per_class, self.length_grouping = samples_per_class, length_grouping
        self.group_sampling = group_sampling
        self.curriculum = group_sampling.curriculum if group_sampling is not None else None
        self.distributed_metric_loss = distributed_metric_loss
        self.head_lr_multiplier = head_lr_multiplier
        self.layerwise_lr_decay = layerwise_lr_decay
        model = self._unwrapped()
        self.objective = model.objective
        self.evaluator = evaluator or MetricEvaluator(self.objective, class_names=model.config.id2label)
        rows_per_step = self._train_batch_size * self.args.gradient_accumulation_steps * self.accelerator.num_processes
        self.bank = EmbeddingBank(bank_steps, model.config.embedding_dim, max_rows_per_step=rows_per_step)
        self.collapse_watch = CollapseWatch(collapse_check_steps, self.is_world_process_zero())
        self.max_nonfinite_steps = max_nonfinite_steps
        self.bank_negatives = bank_negatives  # (rows, first step) of the cross-batch memory, or None
        self.latest_plots: dict[str, str] = {}  # name -> PNG path of the latest evaluation's pictures
        self.latest_group_analysis = None  # the latest `eval` error analysis by group (report.md)
        self._pending_images: dict[str, str] = {}
        self._part_sums: torch.Tensor | None = None  # the loss parts' window means summed since the last log
        self._part_steps = 0
        self._after_backward: tuple[torch.Tensor, torch.Tensor, dict] | None = None  # see `training_step`
        self._training_done = False

    def _unwrapped(self):
        return self.accelerator.unwrap_model(self.model)

    # ---- batches ---------------------------------------------------------------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.samples_per_class is None:
            return super()._get_train_sampler(dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        batch, k, world = self._train_batch_size, self.samples_per_class, self.accelerator.num_processes
        lengths = row_lengths(dataset) if self.length_grouping else None
        return train_sampler(labels_of(dataset), batch, k, seed, world, self.group_sampling, lengths)

    def _global_rows(self, inputs: dict[str, torch.Tensor], mask_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and 0/1 mask (the metric loss's candidates) of one micro-batch on every process, each padded to the
        largest (padding masked)."""
        labels, mask = inputs["labels"], inputs.get(mask_name)
        mask = self.objective.candidate_rows(labels, mask).to(torch.int64)
        if self.accelerator.num_processes == 1:
            return labels, mask
        return gather_rows(labels, pad_value=-1), gather_rows(mask, pad_value=0)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        self._part_steps += 1
        objective = self.objective
        counts = sum(objective.row_counts(b["labels"], b.get("classifier_mask")) for b in batch_samples).to(device)
        if self.accelerator.num_processes > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        # Anchors are counted on the global micro-batch: under several processes an anchor's positives may sit on
        # another process, and the metric loss sees them (`distributed.cross_process_candidates`).
        memory = self._memory()
        memory_labels = memory[1] if memory is not None else None
        rows = [self._global_rows(b, "metric_mask") for b in batch_samples]
        anchors = sum(objective.metric_count(labels, mask, memory_labels).float() for labels, mask in rows)
        return batch_samples, WindowCounts(counts[0], torch.as_tensor(anchors, device=device), memory, counts[1])

    def _memory(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The bank's newest rows as cross-batch memory, from `bank_negatives`' first step on (XBM's warm-up)."""
        if self.bank_negatives is None or self.state.global_step < self.bank_negatives[1] or not len(self.bank):
            return None
        embeddings, labels = self.bank.recent(self.bank_negatives[0])
        return embeddings.float(), labels

    # ---- optimizer -------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with per-parameter learning rates when a head multiplier or a layer-wise
        decay is set (their groups replace the Trainer's two weight-decay groups)."""
        opt_model = self.model if model is None else model
        if self.optimizer is None and (self.head_lr_multiplier != 1.0 or self.layerwise_lr_decay != 1.0):
            decay = self.get_decay_parameter_names(opt_model)
            lr, wd = self.args.learning_rate, self.args.weight_decay
            groups = parameter_groups(opt_model, lr, wd, decay, self.head_lr_multiplier, self.layerwise_lr_decay)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return super().create_optimizer(model)

    # ---- loss ------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        window = num_items_in_batch if isinstance(num_items_in_batch, WindowCounts) else None
        outputs = model(**inputs, return_loss=window is None)
        if window is None:  # evaluation: the model's own batch mean
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        labels, ce_mask, metric_mask = inputs["labels"], inputs.get("classifier_mask"), inputs.get("metric_mask")
        candidates = self_index = None
        if self.accelerator.num_processes > 1 and self.objective.metric_weight > 0:
            keep = self.objective.candidate_rows(labels, metric_mask)
            candidates, self_index = cross_process_candidates(
                outputs.embeddings, labels, keep, self.distributed_metric_loss
            )
        scale = float(self.accelerator.num_processes)  # DDP averages gradients over processes
        denominators = (window.ce_rows / scale, window.metric_anchors / scale, window.oos_rows / scale)
        parts = self.objective(
            outputs.logits,
            outputs.embeddings,
            labels,
            ce_mask,
            metric_mask,
            denominators,
            candidates,
            self_index,
            window.memory,
        )
        # this process's share of each window mean; the shares of all processes add up to it
        shares = torch.stack([part.detach().float() for part in parts.parts()]) / scale
        self._part_sums = shares if self._part_sums is None else self._part_sums + shares
        self._after_backward = (outputs.embeddings.detach(), outputs.logits.detach(), inputs)
        return (parts.loss, outputs) if return_outputs else parts.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, then the micro-batch's embeddings to the bank and its logits to the collapse watch.

        Both wait for the host (a boolean mask's row count, a copy to the CPU bank); done between forward and
        backward, that wait would keep an accelerator idle while the backward pass is launched. After it, the
        wait overlaps the one the step needs anyway (the gradient norm is read before the optimizer step).
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._after_backward is not None:
            (embeddings, logits, batch), self._after_backward = self._after_backward, None
            self._add_to_bank(embeddings, batch)
            self.collapse_watch.watch_batch(
                self.state.global_step, logits, batch["labels"], batch.get("classifier_mask")
            )
        return loss

    def _add_to_bank(self, embeddings: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        """Keep this micro-batch's metric rows (from every process) in the bank under the current step."""
        labels, keep = self._global_rows(inputs, "metric_mask")
        embeddings = embeddings.detach().float()
        if self.accelerator.num_processes > 1:  # padded like the labels; the mask drops the padding
            embeddings = gather_rows(embeddings)
        keep = keep.bool() & (labels >= 0)  # known out-of-scope rows are no class of the retrieval reference
        self.bank.add(self.state.global_step, embeddings[keep], labels[keep])

    # ---- logging and evaluation -----------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._part_sums is not None:
            parts, steps = self._part_sums, max(1, self._part_steps)
            if self.accelerator.num_processes > 1:
                parts = self.accelerator.reduce(parts, reduction="sum")
            for name, value in zip(self.objective.part_names, parts.tolist(), strict=True):
                logs[name] = round(value / steps, 6)
            self._part_sums, self._part_steps = None, 0
        if "loss" in logs:
            logs.update(self.collapse_watch.take_pending())
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
        metrics = {**output.metrics, **self.prediction_metrics(output, metric_key_prefix)}
        return EvalLoopOutput(output.predictions, output.label_ids, metrics, output.num_samples)

    def prediction_metrics(self, output: EvalLoopOutput, prefix: str) -> dict[str, float]:
        """The evaluator's metrics of the gathered validation predictions (pictures for `eval` on the main
        process), against the bank of recent training embeddings."""
        if output.predictions is None or output.label_ids is None:
            return {}
        predictions = EvalPredictions.from_loop(output.predictions, output.label_ids)
        reference = (self.bank.embeddings(), self.bank.labels().cpu().numpy()) if len(self.bank) else None
        tag = None
        if prefix == "eval" and self.is_world_process_zero():
            tag = "final" if self._training_done else f"step{self.state.global_step}"
        result = self.evaluator(predictions, reference, plot_tag=tag)
        if result.collapsed_rows is not None:
            distinct = int(result.metrics["distinct_predictions"])
            self.collapse_watch.warn(distinct, result.collapsed_rows, "validation set")
        if result.plots:
            self.latest_plots = self._pending_images = dict(result.plots)
        metrics = dict(result.metrics)
        if prefix == "eval" and result.group_analysis is not None:
            self.latest_group_analysis = result.group_analysis
            if self.curriculum is not None:
                metrics.update(self.curriculum.record(result.group_analysis.group_errors, self.state.epoch or 0.0))
        return {f"{prefix}_{k}": v for k, v in metrics.items()}

    # ---- checkpoints and resume -----------------------------------------------------------------------
    def save_extra_checkpoint_files(self, checkpoint_dir: str) -> None:
        """The bank and the curriculum travel with each checkpoint: a resumed run evaluates and draws as before."""
        self.bank.save(os.path.join(checkpoint_dir, BANK_FILE))
        if self.curriculum is not None:
            self.curriculum.save_checkpoint_files(checkpoint_dir)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        if isinstance(resume_from_checkpoint, str):
            bank_file = os.path.join(resume_from_checkpoint, BANK_FILE)
            if os.path.isfile(bank_file):
                self.bank.load(bank_file)
            else:
                logger.warning("%s has no embedding bank; retrieval metrics restart from an empty bank", bank_file)
            if self.curriculum is not None:
                self.curriculum.load_checkpoint_files(resume_from_checkpoint)
        self._training_done = False
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        self._training_done = True  # later evaluations judge the final (best) model
        return output
