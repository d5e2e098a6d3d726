"""A trained model as a function of featurized batches: PyTorch or onnxruntime, the same outputs from both.

`onnx_module.InferenceModule` is the ONE definition of what inference returns, run by the PyTorch backend and
traced into ONNX by `hf_metric.sharing.export`: the head's logits, the L2-normalised embedding, and, when the
model stores kNN reference rows, the kNN vote's class probabilities and the fused log-probabilities
``log((1 - w) * softmax(head) + w * p_knn)`` (`hf_metric.model.knn_fusion`), and, when the model has an
open-set rejection rule, its score (`hf_metric.open_set.onnx_graph.OpenSetGraphScore`; reject rows below
`config.open_set_threshold`). This module imports no torch at load time: the onnxruntime backend runs without it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

ONNX_FILE = "model.onnx"
EXPORT_INFO_FILE = "hf_metric_export.json"
OPEN_SET_STATISTICS_FILE = "open_set_statistics.npz"
"""In an export: the Mahalanobis class means and precision of the model's rejection rule (evaluate reads them)."""
OUTPUT_NAMES = ("logits", "embeddings", "head_logits", "knn_probabilities", "open_set_scores")
"""Every possible output; a model has the first three, `knn_probabilities` with stored kNN rows, and
`open_set_scores` with an open-set rejection rule (the ONNX graph's output names)."""
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "input_values", "input_features")
"""What `InferenceModule` takes, in this order when given by position: text, then image, then audio inputs."""


@dataclass
class ModelOutputs:
    """One batch's outputs as float32 numpy arrays (`knn_probabilities` None without stored kNN rows,
    `open_set_scores` None without a rejection rule)."""

    logits: np.ndarray
    embeddings: np.ndarray
    head_logits: np.ndarray
    knn_probabilities: np.ndarray | None = None
    open_set_scores: np.ndarray | None = None


def read_model_config(model_dir: str) -> dict[str, Any]:
    """A model (or export) folder's `config.json` as a dict, without loading the model."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError:
        from ..errors import ConfigError

        raise ConfigError(f"{model_dir}: not a model folder (no config.json)") from None


def read_id2label(model_dir: str) -> dict[int, str]:
    """Label names by id from a model (or export) folder's `config.json`, without loading the model."""
    return {int(i): str(name) for i, name in read_model_config(model_dir)["id2label"].items()}


class TorchBackend:
    """The saved model in PyTorch (`device`: cpu, cuda, ...)."""

    name = "torch"

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        import torch

        from ..model.modeling import MetricClassifierModel
        from .onnx_module import InferenceModule

        self.torch = torch
        self.model = MetricClassifierModel.from_pretrained(model_dir).to(device).eval()
        self.module = InferenceModule(self.model).eval()
        self.device = device
        self.id2label = {int(i): str(n) for i, n in self.model.config.id2label.items()}

    @property
    def rejects(self) -> bool:
        """Whether the model has an open-set rejection rule (a calibrated threshold)."""
        return self.model.config.open_set_threshold is not None

    def open_set_scores(self, outputs: ModelOutputs) -> np.ndarray:
        """The model's configured open-set score of each row (higher = more in-scope), from batch outputs."""
        torch = self.torch

        def tensor(a: np.ndarray):
            return torch.as_tensor(a).to(self.device)

        with torch.inference_mode():
            scores = self.model.open_set_scores(
                tensor(outputs.logits), tensor(outputs.head_logits), tensor(outputs.embeddings)
            )
        return scores.float().cpu().numpy()

    def open_set_rule(self) -> tuple[float, str]:
        """(threshold, out-of-scope label): rows whose open-set score is below the threshold get the label."""
        return self.model.config.open_set_threshold, self.model.config.out_of_scope_label

    def open_set_settings(self):
        """The model's rejection rule and statistics for the evaluator (`OpenSetSettings`)."""
        from ..open_set.evaluation import OpenSetSettings

        return OpenSetSettings.from_model(self.model)

    @property
    def reference(self) -> tuple[Any, np.ndarray] | None:
        """The stored kNN rows (embeddings, label ids), or None."""
        if self.model.config.knn_reference_size == 0:
            return None
        return self.model.knn_reference_embeddings.detach().cpu(), self.model.knn_reference_labels.cpu().numpy()

    def __call__(self, inputs: dict[str, np.ndarray]) -> ModelOutputs:
        torch = self.torch
        tensors = {k: torch.as_tensor(v).to(self.device) for k, v in inputs.items() if k in INPUT_NAMES}
        with torch.inference_mode():
            outputs = self.module(**tensors)
        return ModelOutputs(
            **{n: o.float().cpu().numpy() for n, o in zip(self.module.output_names, outputs, strict=True)}
        )


class OnnxBackend:
    """An exported folder (`hf-metric export`) run by onnxruntime on the CPU with `threads` intra-op threads."""

    name = "onnx"

    def __init__(self, export_dir: str, threads: int | None = None) -> None:
        from ..optional import require

        require("onnxruntime", "onnx", "--backend onnx")
        import onnxruntime as ort

        path = os.path.join(export_dir, ONNX_FILE)
        if not os.path.isfile(path):
            from ..errors import ConfigError

            raise ConfigError(f"{export_dir}: no {ONNX_FILE} (create it with `hf-metric export --format onnx`)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.input_types = {
            i.name: np.int64 if i.type == "tensor(int64)" else np.float32 for i in self.session.get_inputs()
        }
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.id2label = read_id2label(export_dir)
        self.export_dir = export_dir
        self.config = read_model_config(export_dir)

    @property
    def rejects(self) -> bool:
        """Whether the exported model has an open-set rejection rule (its graph then outputs `open_set_scores`)."""
        if self.config.get("open_set_threshold") is None:
            return False
        if "open_set_scores" not in self.output_names:
            from ..errors import ConfigError

            raise ConfigError(
                f"{self.export_dir}: the model has an open-set rule but {ONNX_FILE} has no open_set_scores output "
                "(exported by an older hf_metric); export it again"
            )
        return True

    def open_set_scores(self, outputs: ModelOutputs) -> np.ndarray:
        """The graph's open-set score of each row (reject where it is below `config.json`'s threshold)."""
        return outputs.open_set_scores

    def open_set_rule(self) -> tuple[float, str]:
        """(threshold, out-of-scope label) from the export's `config.json`."""
        return self.config["open_set_threshold"], self.config.get("out_of_scope_label", "oos")

    def open_set_settings(self):
        """The exported rule and its statistics (kNN rows, Mahalanobis fit) for the evaluator."""
        from ..open_set.evaluation import OpenSetSettings, OpenSetStatistics

        c, reference = self.config, self.reference
        stats = OpenSetStatistics(
            None if reference is None else reference[0], fusion_stats=c.get("open_set_fusion_stats")
        )
        path = os.path.join(self.export_dir, OPEN_SET_STATISTICS_FILE)
        if os.path.isfile(path):
            with np.load(path) as data:
                stats.means, stats.precision = data["means"], data["precision"]
        temperature = c.get("open_set_energy_temperature", 1.0)
        return OpenSetSettings(c.get("open_set_score"), c.get("open_set_threshold"), stats, temperature)

    @property
    def reference(self) -> tuple[Any, np.ndarray] | None:
        """The stored kNN rows, read from the export's `knn_reference.npz` (None without)."""
        path = os.path.join(self.export_dir, "knn_reference.npz")
        if not os.path.isfile(path):
            return None
        with np.load(path) as data:
            return data["embeddings"], data["labels"]

    def __call__(self, inputs: dict[str, np.ndarray]) -> ModelOutputs:
        feed = {name: np.asarray(inputs[name], dtype=self.input_types[name]) for name in self.input_names}
        return ModelOutputs(**dict(zip(self.output_names, self.session.run(self.output_names, feed), strict=True)))


def load_backend(model_dir: str, backend: str = "torch", device: str = "cpu", threads: int | None = None):
    """`TorchBackend` of a saved model folder, or `OnnxBackend` of an exported one."""
    if backend == "onnx":
        return OnnxBackend(model_dir, threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchBackend(model_dir, device)


def run_batches(backend: Any, featurizer: Any, values: list[Any], batch_size: int) -> ModelOutputs:
    """The outputs of `values` (an input column's rows, in their order), run `batch_size` rows at a time.

    Texts are batched by length (as sentence-transformers' `encode` does) so that a batch pads little; the
    outputs are put back in the input order.
    """
    order = np.argsort([len(v) for v in values], kind="stable") if values and isinstance(values[0], str) else None
    ordered = [values[i] for i in order] if order is not None else list(values)
    parts = [backend(featurizer.encode(ordered[i : i + batch_size])) for i in range(0, len(ordered), batch_size)]
    out = concat_outputs(parts)
    if order is not None:
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out = ModelOutputs(**{f: a[inverse] if a is not None else None for f, a in vars(out).items()})
    return out


def concat_outputs(parts: list[ModelOutputs]) -> ModelOutputs:
    """The outputs of consecutive runs, joined row-wise in order."""
    joined = {f: [getattr(p, f) for p in parts] for f in OUTPUT_NAMES}
    return ModelOutputs(**{f: np.concatenate(v) if v and v[0] is not None else None for f, v in joined.items()})
