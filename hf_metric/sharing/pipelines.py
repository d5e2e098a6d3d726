"""Pipelines for a trained `MetricClassifierModel`, registered with transformers when this module is imported
(the first use of any `hf_metric.<name>` does so).

- `pipeline("text-classification", model=path)` needs nothing from here: the model is an
  `AutoModelForSequenceClassification` whose config holds the label names.
- `pipeline("metric-embedding", model=path)`: the L2-normalized embedding the metric loss was trained on, one
  vector per text. The stock `feature-extraction` pipeline returns the model's first output, which for this
  model is the logits; `pipeline("feature-extraction", model=path, pipeline_class=MetricEmbeddingPipeline)` is
  the same thing under that name.
- `pipeline("knn-classification", model=path)`: labels texts by a vote of their nearest neighbours in a
  reference set (texts with labels, a saved reference, or a training checkpoint's embedding bank), with
  `hf_metric.metrics.knn_predict`. A reference saved as `knn_reference.safetensors` in the model folder is
  loaded with the model, so the classifier travels with it (and works for classes the head never saw). The
  reference is a `hf_metric.Gallery` (`knn.gallery`; `reference=` also takes a gallery folder written by
  `hf-metric index`), and `knn(texts, groups=[...])` votes only among the reference rows of each text's group.
- `pipeline("open-set-classification", model=path)` (or `pipeline("text-classification", model=path,
  pipeline_class=OpenSetClassificationPipeline)`): text classification that answers the model's
  `out_of_scope_label` for rows whose open-set score is below the model's threshold (`set_open_set`).

With a threshold in the model, both classification pipelines add `open_set_score` and `is_out_of_scope` to each
answer, and a rejected row gets `{"label": <out_of_scope_label>, "score": <its open-set score>}`; a model
without a threshold answers exactly as before.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoModel
from transformers.pipelines import PIPELINE_REGISTRY, FeatureExtractionPipeline, TextClassificationPipeline

from ..evaluation.ann import IndexedSearch
from ..evaluation.metrics import knn_predict
from ..inference.gallery import MANIFEST_FILE, Gallery
from ..inference.gallery_search import STATUS_NO_CANDIDATES
from ..model.neighbors import topk_neighbors
from ..model.open_set_scores import is_out_of_scope
from ..training.bank import BANK_FORMAT

EMBEDDING_TASK = "metric-embedding"
KNN_TASK = "knn-classification"
OPEN_SET_TASK = "open-set-classification"
KNN_REFERENCE_FILE = "knn_reference.safetensors"
KNN_REFERENCE_FORMAT = "hf_metric.KnnReference/1"
"""Written into the safetensors metadata of a kNN reference; `EmbeddingBank` files are accepted too."""


def open_set_answer(answer: dict[str, Any], config: Any, scores: torch.Tensor | None) -> dict[str, Any]:
    """`answer` ({"label", "score"}) with the open-set decision of the model's threshold (unchanged without)."""
    threshold = getattr(config, "open_set_threshold", None)
    if threshold is None or scores is None:
        return answer
    score = scores.reshape(-1)[:1].float().cpu()
    rejected = bool(is_out_of_scope(score, threshold)[0])
    if rejected:
        answer = {"label": config.out_of_scope_label, "score": float(score)}
    return {**answer, "open_set_score": float(score), "is_out_of_scope": rejected}


class OpenSetClassificationPipeline(TextClassificationPipeline):
    """`text-classification` that rejects out-of-scope texts when the model has an open-set threshold (module
    doc); with `top_k=None` a rejected row's list starts with the out-of-scope answer."""

    def postprocess(self, model_outputs: Any, *args: Any, **kwargs: Any) -> Any:
        answer = super().postprocess(model_outputs, *args, **kwargs)
        scores = model_outputs.get("open_set_scores") if hasattr(model_outputs, "get") else None
        if getattr(self.model.config, "open_set_threshold", None) is None or scores is None:
            return answer
        if isinstance(answer, dict):
            return open_set_answer(answer, self.model.config, scores)
        decided = open_set_answer(dict(answer[0]), self.model.config, scores)
        return [decided, *answer] if decided["is_out_of_scope"] else answer


class MetricEmbeddingPipeline(FeatureExtractionPipeline):
    """Text, an image or an audio clip -> the model's L2-normalized metric embedding (a list of floats, or a
    `(dim,)` tensor with `return_tensors=True`). Text takes the feature-extraction options (`truncation`,
    `tokenize_kwargs`); images may be PIL images, paths or encoded bytes; audio may be samples at the extractor's
    rate, `{"raw": samples, "sampling_rate": r}`, paths or encoded bytes. The processor is the one saved beside
    the model, chosen by the model's `modality`."""

    _load_tokenizer = False  # loaded in __init__ by modality: an image or audio model has no tokenizer
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, model: Any, *args: Any, **kwargs: Any) -> None:
        from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer

        self.modality = getattr(model.config, "modality", "text")
        key, auto = {
            "text": ("tokenizer", AutoTokenizer),
            "image": ("image_processor", AutoImageProcessor),
            "audio": ("feature_extractor", AutoFeatureExtractor),
        }[self.modality]
        if kwargs.get(key) is None:
            kwargs[key] = auto.from_pretrained(model.name_or_path)
        super().__init__(model, *args, **kwargs)

    def preprocess(self, inputs: Any, **tokenize_kwargs: Any) -> dict[str, torch.Tensor]:
        if self.modality == "text":
            return super().preprocess(inputs, **tokenize_kwargs)
        return self._media_features([inputs])

    def _media_features(self, items: Sequence[Any]) -> dict[str, torch.Tensor]:
        from ..data.media import as_clip, as_image

        if self.modality == "image":
            return self.image_processor(images=[as_image(x) for x in items], return_tensors="pt")
        rate = self.feature_extractor.sampling_rate
        clips = [as_clip(x, rate) for x in items]
        if len({len(c) for c in clips}) > 1:  # pad to the longest; AST pads to its own max_length anyway
            longest = max(len(c) for c in clips)
            clips = [np.pad(c, (0, longest - len(c))) for c in clips]
        return self.feature_extractor(clips, sampling_rate=rate, return_tensors="pt")

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"embeddings": self.model(**model_inputs).embeddings}

    def postprocess(self, model_outputs: dict[str, torch.Tensor], return_tensors: bool = False) -> Any:
        embedding = model_outputs["embeddings"][0]
        return embedding if return_tensors else embedding.tolist()

    @torch.inference_mode()
    def embed(self, items: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """Embeddings of many inputs at once, `(len(items), dim)` float32 on the CPU (padded text batches; the
        pooling ignores the padding)."""
        chunks = []
        for start in range(0, len(items), batch_size):
            batch = list(items[start : start + batch_size])
            if self.modality == "text":
                inputs = self.tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
            else:
                inputs = self._media_features(batch)
            chunks.append(self.model(**inputs.to(self.device)).embeddings.float().cpu())
        if not chunks:
            raise ValueError("nothing to embed")
        return torch.cat(chunks)


class KnnClassificationPipeline(MetricEmbeddingPipeline):
    """Text -> `{"label", "score"}` by a distance-weighted vote of the `k` nearest reference rows; the score is
    the winner's share of the vote weight.

    The reference is, in this order: `reference=` (a file, see `load_reference`), else
    `<model folder>/knn_reference.safetensors` if present, else the training rows stored in the model for kNN
    fusion (`model.knn_fusion_weight`); or set it later with `fit` / `load_reference`.
    `k` and `distance` ("cos" or "l2") are call options; their defaults come from the reference file.
    `knn_index` (default: the model config's `knn_index`, YAML `model.knn_index`) switches references of at
    least `min_size` rows to an approximate faiss index (`evaluation.ann`; the `ann` extra).

    The reference is a `Gallery` (`self.gallery`): `fit(..., groups=...)` enrols the rows' groups, and
    `knn(texts, groups=[...])` (or `group="addr-1"` for all texts) restricts each vote to the reference rows
    of that group (the candidate set) by the rule of `Gallery.search`: a group without reference rows answers
    `{"label": None, "score": 0.0, "status": "no_candidates"}`, a null group (NaN) votes among every row
    (status `no_group`).
    """

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.model(**model_inputs)
        if out.open_set_scores is None:
            return {"embeddings": out.embeddings}
        return {"embeddings": out.embeddings, "open_set_scores": out.open_set_scores}

    def __init__(
        self,
        *args: Any,
        reference: str | os.PathLike | None = None,
        knn_index: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.gallery: Gallery | None = None
        self.reference_labels: np.ndarray | None = None
        """The reference rows' labels as given (`fit` keeps their type: names or ids); `gallery.labels` as text."""
        self.k, self.distance = 10, "cos"
        self.search = IndexedSearch(knn_index or getattr(self.model.config, "knn_index", None))
        saved = os.path.join(str(getattr(self.model, "name_or_path", "")), KNN_REFERENCE_FILE)
        if reference is not None:
            self.load_reference(reference)
        elif os.path.isfile(saved):
            self.load_reference(saved)
        elif getattr(self.model.config, "knn_reference_size", 0) > 0:
            self.use_model_reference()

    @property
    def reference_embeddings(self) -> torch.Tensor | None:
        """The reference rows' L2-normalised embeddings, (rows, dim) float32 (a view of the gallery's)."""
        return None if self.gallery is None else torch.from_numpy(self.gallery.embeddings)

    def _set_reference(self, embeddings: Any, labels: Any, groups: Sequence[Any] | None = None) -> None:
        labels = np.asarray(labels)
        self.gallery = Gallery(embeddings, labels.tolist(), groups, fingerprint=self._fingerprint())
        self.reference_labels = labels

    def _fingerprint(self) -> str:
        """The model folder's weight fingerprint ("" for a model not loaded from a folder), hashed once."""
        from ..inference.gallery_build import model_fingerprint

        if getattr(self, "_model_fingerprint", None) is None:
            folder = str(getattr(self.model, "name_or_path", ""))
            try:
                self._model_fingerprint = model_fingerprint(folder) if os.path.isdir(folder) else ""
            except (OSError, ValueError):
                self._model_fingerprint = ""
        return self._model_fingerprint

    def __call__(self, inputs: Any, *args: Any, groups: Any = None, **kwargs: Any) -> Any:
        """As any pipeline; `groups` (one per input, or one for all) restricts each vote to that group's rows."""
        if groups is None:
            return super().__call__(inputs, *args, **kwargs)
        if isinstance(groups, str) or not isinstance(inputs, (list, tuple)):
            return super().__call__(inputs, *args, group=groups, **kwargs)
        if len(groups) != len(inputs):
            raise ValueError(f"{len(inputs)} inputs but {len(groups)} groups")
        answers = []
        for item, group in zip(inputs, groups, strict=True):
            answers.append(super().__call__(item, *args, group=group, **kwargs))
        return answers

    def _sanitize_parameters(
        self, k: int | None = None, distance: str | None = None, group: str | None = None, **kwargs: Any
    ):
        preprocess, forward, postprocess = super()._sanitize_parameters(**kwargs)
        if group is not None:
            postprocess["group"] = group
        if k is not None:
            postprocess["k"] = k
        if distance is not None:
            postprocess["distance"] = distance
        return preprocess, forward, postprocess

    def fit(
        self,
        texts: Sequence[Any],
        labels: Sequence[Any],
        batch_size: int = 32,
        groups: Sequence[Any] | None = None,
    ) -> KnnClassificationPipeline:
        """Use `texts` (or images, or clips; embedded now) with their `labels` (any JSON values: names, ids) and
        optional `groups` (candidate sets) as the reference."""
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self._set_reference(self.embed(texts, batch_size), labels, groups)
        return self

    def load_reference(self, path: str | os.PathLike) -> KnnClassificationPipeline:
        """Read a reference written by `save_reference`, a gallery folder (`hf-metric index`, `Gallery.save`;
        refused when another model built it), or a checkpoint's `embedding_bank.safetensors` (its label ids
        become the model's label names)."""
        from safetensors import safe_open

        path = str(path)
        if os.path.isfile(os.path.join(path, MANIFEST_FILE)):
            gallery = Gallery.load(path)
            fingerprint = self._fingerprint()
            if fingerprint:
                gallery.check_model(fingerprint, path)
            self.gallery, self.reference_labels = gallery, gallery.labels.astype(str)
            return self
        if os.path.isdir(path):
            path = os.path.join(path, KNN_REFERENCE_FILE)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            embeddings, label_ids = f.get_tensor("embeddings"), f.get_tensor("labels")
        fmt = meta.get("format")
        if fmt == KNN_REFERENCE_FORMAT:
            names = np.asarray(json.loads(meta["label_names"]))
            self.k, self.distance = int(meta.get("k", self.k)), meta.get("distance", self.distance)
        elif fmt == BANK_FORMAT:
            id2label = self.model.config.id2label
            names = np.asarray([id2label[i] for i in range(len(id2label))])
        else:
            raise ValueError(f"{path}: not a kNN reference or embedding bank (format {fmt!r})")
        self._set_reference(embeddings.float(), names[label_ids.numpy()])
        return self

    def use_model_reference(self) -> KnnClassificationPipeline:
        """Use the labelled training embeddings stored in the model (`MetricClassifierModel.set_knn_reference`)."""
        id2label = self.model.config.id2label
        names = np.asarray([id2label[i] for i in range(len(id2label))])
        embeddings = self.model.knn_reference_embeddings.detach().float().cpu()
        self._set_reference(embeddings, names[self.model.knn_reference_labels.cpu().numpy()])
        self.k = self.model.config.knn_fusion_k
        return self

    def save_reference(self, path: str | os.PathLike) -> str:
        """Write the reference (embeddings, labels, `k`, `distance`) as safetensors; a folder (e.g. the model's)
        gets `knn_reference.safetensors`. Returns the file written."""
        from safetensors.torch import save_file

        embeddings, labels = self._reference()
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, KNN_REFERENCE_FILE)
        names, label_ids = np.unique(labels, return_inverse=True)
        metadata = {
            "format": KNN_REFERENCE_FORMAT,
            "label_names": json.dumps(names.tolist()),
            "k": str(self.k),
            "distance": self.distance,
        }
        tensors = {"embeddings": embeddings.contiguous(), "labels": torch.as_tensor(label_ids, dtype=torch.int64)}
        save_file(tensors, path, metadata=metadata)
        return path

    def _reference(self) -> tuple[torch.Tensor, np.ndarray]:
        if self.gallery is None or self.reference_labels is None:
            raise ValueError("the kNN pipeline has no reference set: call fit(texts, labels) or load_reference(path)")
        return self.reference_embeddings, self.reference_labels

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        k: int | None = None,
        distance: str | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        embeddings, labels = self._reference()
        query = model_outputs["embeddings"].float().cpu()
        search = self.search
        status = None
        if group is not None:  # the candidate set: only this group's reference rows vote (the gallery's rule)
            rows, status = self.gallery.candidate_rows(group)
            if status == STATUS_NO_CANDIDATES:
                return {"label": None, "score": 0.0, "status": status}
            if rows is not None:
                embeddings, labels, search = embeddings[rows], labels[rows], topk_neighbors
        predicted, share = knn_predict(query, embeddings, labels, k or self.k, distance or self.distance, search=search)
        answer = {"label": predicted[0].item(), "score": float(share[0])}
        if status is not None:
            answer["status"] = status
        return open_set_answer(answer, self.model.config, model_outputs.get("open_set_scores"))


def register_pipelines() -> None:
    """Make the three tasks known to `transformers.pipeline` (called when this module is imported)."""
    tasks = (
        (EMBEDDING_TASK, MetricEmbeddingPipeline),
        (KNN_TASK, KnnClassificationPipeline),
        (OPEN_SET_TASK, OpenSetClassificationPipeline),
    )
    for task, cls in tasks:
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not cls:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=cls, pt_model=AutoModel, type="text")


register_pipelines()
