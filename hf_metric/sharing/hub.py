"""Sharing a trained model: the model card written into `best/`, and the upload to the Hub (or a mirror).

The card is a `huggingface_hub.ModelCard` (README.md with YAML metadata) holding what a reader needs to trust
and use the model: the data summary, the training objective, the last training losses, the final validation
metrics, the resolved config and how to load it with and without hf_metric. The upload sends the folder's
files except pickles (`training_args.bin`): the Hub copy loads from safetensors and JSON only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from ..config import HubSection, TrainConfig
from ..errors import HfMetricUserError
from ..evaluation.tables import metrics_markdown_table

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
"""Files never uploaded: they are loaded with pickle, which can run code."""

CARD_TAGS = ("hf_metric", "metric-learning", "text-classification", "text-embeddings")
MODALITY_CARDS = {
    "text": ("text-classification", CARD_TAGS),
    "image": ("image-classification", ("hf_metric", "metric-learning", "image-classification", "image-embeddings")),
    "audio": ("audio-classification", ("hf_metric", "metric-learning", "audio-classification", "audio-embeddings")),
}
"""Input column -> the card's pipeline tag and tags: the card states the modality."""


def _from_scratch_note(cfg: TrainConfig) -> str:
    if cfg.model_config is None:
        return ""
    return (
        f"\n\nThe `{cfg.model_config['model_type']}` backbone was trained from scratch (random initialisation, "
        "`model_config`), not fine-tuned from pretrained weights."
    )


def _media_load_instructions(repo: str, task: str) -> str:
    what = "image" if task.startswith("image") else "audio clip (a file path or 1-D samples with their rate)"
    return f"""With hf_metric installed (`import hf_metric` registers the model classes); the processor is saved
beside the weights:

```python
import hf_metric
from transformers import pipeline

classifier = pipeline("{task}", model="{repo}")
classifier(x)  # x: an {what}; [{{"label": ..., "score": ...}}]
```

Without hf_metric, pass `trust_remote_code=True` (read the saved `modeling.py` first). The model returns
`logits` and the L2-normalized `embeddings` for kNN search."""


class HubError(HfMetricUserError):
    """The upload failed (no token, no access, no network); the model is still saved locally."""


def last_training_losses(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The last logged training losses (`loss` and its parts) with their step, from `trainer.state.log_history`."""
    for entry in reversed(log_history):
        if "loss" in entry:
            return {k: v for k, v in entry.items() if k == "step" or k.endswith("loss")}
    return {}


def _load_instructions(repo: str) -> str:
    return f"""With hf_metric installed (`import hf_metric` registers the model classes and pipelines):

```python
import hf_metric
from transformers import pipeline

classifier = pipeline("text-classification", model="{repo}")
classifier("I still have not received my new card")  # [{{"label": ..., "score": ...}}]
embedder = pipeline("metric-embedding", model="{repo}")  # the L2-normalized embedding, one vector per text
knn = pipeline("knn-classification", model="{repo}")
knn.fit(reference_texts, reference_labels)  # or knn.load_reference("knn_reference.safetensors")
knn("I still have not received my new card", k=10)
```

Without hf_metric, the code saved with the model (`modeling.py`, `heads.py`, `losses.py`) is loaded as remote
code; read it first, then:

```python
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

classifier = pipeline("text-classification", model="{repo}", trust_remote_code=True)
model = AutoModelForSequenceClassification.from_pretrained("{repo}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{repo}")
out = model(**tokenizer(["I still have not received my new card"], return_tensors="pt"))
out.logits, out.embeddings  # class scores and the L2-normalized embedding
```"""


def _objective(cfg: TrainConfig) -> str:
    cls, metric, head = cfg.loss.classification, cfg.loss.metric, cfg.head

    def settings(options: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in options.items())

    return (
        f"`loss = {cls.weight} * {cls.type} + {metric.weight} * {metric.type}`\n\n"
        f"- classification loss: `{cls.type}` ({settings(cls.options)}) on rows with `classifier_mask = 1`, "
        f"through a `{head.type}` head ({settings(head.head_kwargs())})\n"
        f"- metric loss: `{metric.type}` ({settings(metric.options)}) on the L2-normalized embeddings of rows with "
        f"`metric_mask = 1`\n"
        f"- encoder `{cfg.model_name}`, `{cfg.model.pooling}` pooling, projection "
        f"{cfg.model.projection_dim or 'none'}"
    )


def build_model_card(
    cfg: TrainConfig,
    metrics: Mapping[str, object],
    data_summary: Mapping[str, object],
    training_losses: Mapping[str, object],
    id2label: Mapping[int, str],
):
    """The model card of a finished run (a `huggingface_hub.ModelCard`)."""
    from huggingface_hub import ModelCard, ModelCardData

    repo = cfg.hub.model_id or "path/to/best"
    # a local folder or a from-scratch backbone (`model_config`) is no Hub id
    base_model = None if os.path.exists(cfg.model_name) or cfg.model_config is not None else cfg.model_name
    modality = data_summary.get("input_column", "text")
    task, tags = MODALITY_CARDS[modality]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=task,
        tags=[*tags, f"head-{cfg.head.type}", cfg.loss.metric.type],
        base_model=base_model,
    )
    labels = [id2label[i] for i in sorted(id2label)]
    shown = ", ".join(f"`{name}`" for name in labels[:50]) + (" ..." if len(labels) > 50 else "")
    body = f"""
# {repo.rsplit("/", 1)[-1]}

{"An" if modality[0] in "aeiou" else "A"} {modality} classifier and an embedding model trained with hf_metric \
(supervised metric learning on Transformers): one encoder gives class scores (`logits`) and an L2-normalized \
embedding (`embeddings`) for kNN search.{_from_scratch_note(cfg)}

## Labels

{len(labels)} classes: {shown}

## Training data

{metrics_markdown_table(dict(data_summary), columns=("data", "value"))}

## Training objective

{_objective(cfg)}

Last logged training losses:

{metrics_markdown_table(dict(training_losses), columns=("training", "value"))}

## Final validation metrics

{metrics_markdown_table(dict(metrics))}

## How to load it

{_load_instructions(repo) if modality == "text" else _media_load_instructions(repo, task)}

## Training configuration

```yaml
{yaml.safe_dump(cfg.to_dict(), sort_keys=False).strip()}
```
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def write_model_card(folder: str, card) -> str:
    """Save `card` as `<folder>/README.md`; returns the path."""
    path = os.path.join(folder, "README.md")
    card.save(path)
    return path


def shareable_files(folder: str) -> list[str]:
    """Files of `folder` to upload (relative, sorted): everything but hidden files and pickles."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if not name.startswith(".") and not name.endswith(PICKLE_SUFFIXES):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def push_to_hub(folder: str, hub: HubSection) -> str:
    """Create the repo (if needed) and upload `shareable_files(folder)` in one commit; returns the commit URL.

    The token is whatever huggingface_hub finds (`HF_TOKEN`, `hf auth login`); `HF_ENDPOINT` selects a mirror.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    api = HfApi()
    try:
        repo_id = api.create_repo(hub.model_id, private=hub.private, exist_ok=True).repo_id
        if hub.revision:
            api.create_branch(repo_id, branch=hub.revision, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=os.path.join(folder, name))
            for name in shareable_files(folder)
        ]
        info = api.create_commit(
            repo_id, operations=operations, commit_message=hub.commit_message, revision=hub.revision
        )
    except (HfHubHTTPError, LocalTokenNotFoundError, OSError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise HubError(
            f"hub: upload of {folder} to {hub.model_id} failed ({first_line}); the model is saved there, retry with "
            f"hf_metric.hub.push_to_hub"
        ) from None
    return info.commit_url
