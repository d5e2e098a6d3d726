"""The trained model's outputs over a whole featurized dataset, through the trainer's evaluation dataloader (so
every process embeds its share and the rows come back gathered, in order): for the stored kNN reference and the
open-set calibration after training."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def dataset_outputs(trainer, dataset) -> dict[str, np.ndarray]:
    """Logits, the head's own logits, embeddings, labels and classifier mask of every row of a featurized
    dataset, gathered from every process in order."""
    model = trainer.model
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("logits", "head_logits", "embeddings", "labels", "ce")}
    for inputs in trainer.get_eval_dataloader(dataset):
        inputs = trainer._prepare_inputs(inputs)
        labels = inputs.pop("labels")
        mask = inputs.pop("classifier_mask", None)
        inputs.pop("metric_mask", None)
        out = model(**inputs)
        head = out.classifier_logits if out.classifier_logits is not None else out.logits
        mask = torch.ones_like(labels) if mask is None else mask
        for key, value in zip(parts, (out.logits, head, out.embeddings, labels, mask), strict=True):
            value = value.float() if value.is_floating_point() else value
            parts[key].append(trainer.accelerator.gather_for_metrics(value))
    return {k: torch.cat(v).cpu().numpy() for k, v in parts.items()}
