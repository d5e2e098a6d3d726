"""The YAML config -> `transformers.TrainingArguments`: one place decides every Trainer option."""

from __future__ import annotations

import os
from typing import Any

from ..config import TrainConfig


def build_training_arguments(cfg: TrainConfig, **overrides: Any):
    """Map the YAML onto `transformers.TrainingArguments`: one place decides every Trainer option."""
    from transformers import TrainingArguments

    t, ck, sch = cfg.training, cfg.checkpointing, cfg.scheduler
    strategy = "steps" if ck.save_every_n_batches else "epoch"
    warmup: float | int = sch.warmup_steps if sch.warmup_steps < 1 else int(sch.warmup_steps)
    scheduler_kwargs: dict[str, Any] = {}
    if sch.name == "cosine":
        scheduler_kwargs["num_cycles"] = sch.num_cycles
    elif sch.name == "cosine_with_restarts":
        scheduler_kwargs["num_cycles"] = max(1, round(sch.num_cycles))
    kwargs: dict[str, Any] = dict(
        output_dir=ck.checkpoints_dir,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        num_train_epochs=t.num_epochs,
        max_steps=sch.num_training_steps or -1,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=cfg.optimizer.learning_rate,
        weight_decay=cfg.optimizer.weight_decay,
        lr_scheduler_type=sch.name,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=warmup,
        max_grad_norm=t.gradient_clip_val or 0.0,
        seed=t.seed,
        data_seed=t.seed,
        fp16=t.mixed_precision == "fp16",
        bf16=t.mixed_precision == "bf16",
        dataloader_num_workers=cfg.data.num_workers,
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=ck.save_every_n_batches,
        save_steps=ck.save_every_n_batches,
        save_total_limit=ck.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=cfg.metric_for_best_model,
        greater_is_better=cfg.greater_is_better,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        report_to=resolved_report_to(t.report_to),
        label_names=["labels", "classifier_mask", "metric_mask"],
        remove_unused_columns=False,
    )
    import torch
    from transformers.utils import is_torch_bf16_gpu_available

    if t.mixed_precision == "bf16" and not is_torch_bf16_gpu_available():
        kwargs["use_cpu"] = True  # bf16 autocast on the CPU; TrainingArguments refuses bf16 without it
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # several CPU processes (torchrun, accelerate launch --multi_gpu): DDP over gloo
        kwargs.update(ddp_backend="gloo", use_cpu=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def resolved_report_to(report_to: list[str]) -> list[str]:
    """`training.report_to` for `TrainingArguments`: "all" is expanded here without neptune, which hf_metric logs
    to itself (see the `neptune` section)."""
    if "all" not in report_to:
        return list(report_to)
    from transformers.integrations import get_available_reporting_integrations

    return [name for name in get_available_reporting_integrations() if name != "neptune"]
