"""`InferenceModule`: what inference returns, as one `nn.Module` that both the PyTorch backend runs and
`torch.onnx.export` traces, so onnxruntime serves exactly what PyTorch computes.

Outputs (`output_names`): the (fused) `logits`, the L2-normalised `embeddings`, the head's own `head_logits`; with
stored kNN rows the vote's `knn_probabilities`; with an open-set rule its `open_set_scores`
(`hf_metric.open_set.onnx_graph.OpenSetGraphScore`). The kNN vote and the fusion are `hf_metric.model.knn_fusion`'s
(written once); only the search differs from the model's forward: one dense top-k over the stored rows instead of
the blocked, threaded exact search, because a traced graph needs static operations. Both find the same neighbours."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..model.knn_fusion import fused_log_probabilities, softmax_vote
from ..open_set.onnx_graph import OpenSetGraphScore
from .backends import INPUT_NAMES, OUTPUT_NAMES


@contextmanager
def _head_only(model: Any) -> Iterator[None]:
    """Run the model's forward without its own kNN fusion and open-set score (`InferenceModule` computes both
    in traceable operations)."""
    c = model.config
    weight, threshold = c.knn_fusion_weight, c.open_set_threshold
    c.knn_fusion_weight, c.open_set_threshold = 0.0, None
    try:
        yield
    finally:
        c.knn_fusion_weight, c.open_set_threshold = weight, threshold


class InferenceModule(nn.Module):
    """A loaded `MetricClassifierModel` (put in eval mode) as `(inputs) -> outputs named by output_names`.

    Inputs are the model's (text: `input_ids, attention_mask[, token_type_ids]`; images: `pixel_values`; audio:
    `input_values` or `input_features`), by name or by position in `input_names` order (default `INPUT_NAMES`;
    the export passes the names its graph takes).
    """

    def __init__(self, model: Any, input_names: Sequence[str] = INPUT_NAMES) -> None:
        super().__init__()
        self.model = model.eval()
        self.input_names = tuple(input_names)
        config = model.config
        self.stored = config.knn_reference_size > 0
        self.fused = config.knn_fusion_weight > 0 and self.stored
        rejects = config.open_set_threshold is not None
        self.open_set = OpenSetGraphScore(model) if rejects else None
        self.output_names = [*OUTPUT_NAMES[: 4 if self.stored else 3], *(["open_set_scores"] if rejects else [])]

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.outputs(*inputs, **named)
        if self.open_set is None:
            return outputs
        return (*outputs, self.open_set(outputs[0], outputs[2], outputs[1]))

    def outputs(self, *inputs: torch.Tensor, **named: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(logits, embeddings, head_logits[, knn_probabilities]): everything but the open-set score."""
        if len(inputs) > len(self.input_names):
            raise TypeError(f"at most {len(self.input_names)} inputs by position, got {len(inputs)}")
        given = {**dict(zip(self.input_names, inputs, strict=False)), **named}
        with _head_only(self.model):
            out = self.model(**{k: v for k, v in given.items() if v is not None})
        head, emb = out.logits.float(), out.embeddings
        if not self.stored:
            return head, emb, head
        p_knn = self.knn_probabilities(emb)
        if not self.fused:
            return head, emb, head, p_knn
        return fused_log_probabilities(head, p_knn, self.model.config.knn_fusion_weight), emb, head, p_knn

    def knn_probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The kNN vote over the stored rows: a dense top-k of cosine similarities (both sides L2-normalised),
        then `softmax_vote`."""
        config, ref = self.model.config, self.model.knn_reference_embeddings
        scores, idx = torch.topk(embeddings @ ref.T, min(config.knn_fusion_k, ref.shape[0]), dim=1)
        labels = self.model.knn_reference_labels[idx]
        return softmax_vote(scores, labels, config.num_labels, config.knn_fusion_temperature)
