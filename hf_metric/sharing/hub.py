"""Sharing a trained model: the model card written into `best/`, and the upload to the Hub (or a mirror).

The card is a `huggingface_hub.ModelCard` (README.md with YAML metadata) holding what a reader needs to trust
and use the model: the data summary, the training objective, the last training losses, the final validation
metrics, the resolved config and how to load it with and without hf_metric. The upload sends the folder's
files except pickles (`training_args.bin`): the Hub copy loads from safetensors and JSON only.
"""

from __future__ import annotations

import dataclasses
import json
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


def _load_instructions(repo: str, code_files: list[str]) -> str:
    code = ", ".join(f"`{name}`" for name in code_files) or "the model's `.py` files"
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

Without hf_metric, the code saved with the model ({code}) is loaded as remote code; read it first,
then:

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
        f"{cfg.model.projection_dim or 'none'}" + _oos_training(cfg)
    )


def _oos_training(cfg: TrainConfig) -> str:
    """The objective's line on known out-of-scope training rows (`open_set.train_with_oos`), or nothing."""
    if not cfg.open_set.train_with_oos:
        return ""
    weight = cfg.open_set.outlier_exposure_weight
    exposure = f"; outlier exposure: `+ {weight} * CE(uniform, softmax)` on them" if weight > 0 else ""
    return (
        f"\n- known out-of-scope rows (`{cfg.data.out_of_scope_label}`) trained as negatives of every class in the "
        f"metric loss (never a class){exposure}"
    )


def _role(name: str) -> str:
    """What a file of the model folder is for (shown in the card's file list)."""
    base = os.path.basename(name)
    if base.endswith(".py"):
        return "remote code (loaded with `trust_remote_code=True`)"
    if base == "head.safetensors":
        return "the classification head alone (`hf_metric.sharing.head_io.load_head`)"
    if base.startswith(("tokenizer", "special_tokens", "vocab", "merges", "sentencepiece", "spiece")):
        return "tokenizer"
    if base.startswith(("preprocessor", "feature_extractor", "processor")):
        return "input processor"
    if base.endswith(".safetensors") or base.endswith(".safetensors.index.json"):
        return "weights"
    if base == "config.json":
        return "model config: labels, head, pooling, kNN fusion settings"
    if base == "README.md":
        return "this model card"
    return ""


def _files_section(folder: str | None) -> tuple[str, list[str]]:
    """The folder's files as a Markdown list (computed, not hard-coded) and the remote-code files among them."""
    if folder is None:
        return "", []
    files = sorted({*shareable_files(folder), "README.md"})
    code = [name for name in files if name.endswith(".py")]
    lines = [f"- `{name}`" + (f": {_role(name)}" if _role(name) else "") for name in files]
    return "\n".join(lines), code


def _stored_reference(folder: str | None) -> tuple[int, dict[str, Any]]:
    """Rows of training embeddings stored in the saved model (0: none) and its config."""
    if folder is None or not os.path.isfile(os.path.join(folder, "config.json")):
        return 0, {}
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as fh:
        config = json.load(fh)
    return int(config.get("knn_reference_size") or 0), config


def _prediction_section(cfg: TrainConfig, rows: int, config: Mapping[str, Any]) -> str:
    head = f"a `{cfg.head.type}` head on the `{cfg.model.pooling}`-pooled encoder output"
    weight = float(config.get("knn_fusion_weight", cfg.model.knn_fusion_weight))
    if rows and weight > 0:
        k = config.get("knn_fusion_k", cfg.model.knn_fusion_k)
        temperature = config.get("knn_fusion_temperature", cfg.model.knn_fusion_temperature)
        return (
            f"`logits` are log-probabilities of a fusion: `(1 - {weight}) * softmax(head) + {weight} * p_knn`, where "
            f"the head is {head} and `p_knn` is a vote of the {k} nearest of the {rows} stored training embeddings "
            f"(cosine, softmax temperature {temperature}). The head's own scores are returned as "
            "`classifier_logits`. `embeddings` are the L2-normalised metric embeddings."
        )
    return f"`logits` come from {head} alone (no kNN fusion). `embeddings` are the L2-normalised metric embeddings."


def _open_set_line(cfg: TrainConfig, config: Mapping[str, Any], metrics: Mapping[str, object]) -> str:
    """The stored rejection rule in one line (empty without one): score, threshold, label, and what it scored on
    the validation split."""
    threshold = config.get("open_set_threshold")
    if threshold is None:
        return ""
    label, score = config.get("out_of_scope_label", "oos"), config.get("open_set_score")
    measured = [
        f"{name.replace('_', ' ')} {float(metrics[f'eval_open_set_{name}']):.4f}"
        for name in ("in_scope_accuracy", "oos_recall", "oos_precision")
        if f"eval_open_set_{name}" in metrics
    ]
    on_validation = f"; on the validation split: {', '.join(measured)}" if measured else ""
    chosen = config.get("open_set_calibration") or {}
    criterion = chosen.get("criterion", cfg.open_set.criterion)
    if chosen.get("target") is not None:
        criterion += f"` target `{chosen['target']:g}"
    rows = f", {chosen.get('in_scope_rows')} in-scope and {chosen.get('oos_rows')} out-of-scope rows"
    evidence = rows if "oos_rows" in chosen else ""
    why = f" Why: {chosen['reason']}." if chosen.get("reason") else ""
    return (
        f"\n\n**Out-of-scope rejection:** a row whose calibrated `{score}` score (higher = in-scope) is below "
        f"**{threshold:.6g}** is answered with `{label}` (pipelines, `predict`'s `is_out_of_scope`; threshold chosen "
        f"on the validation split, criterion `{criterion}`{evidence}{on_validation}).{why}"
    )


def _stored_data_section(rows: int) -> str:
    if not rows:
        return ""
    return f"""
## Training data stored in this model

The weights hold the embeddings and labels of **{rows} training rows** (`knn_reference_embeddings`,
`knn_reference_labels` in `model.safetensors`), used for the kNN fusion above. They are not the texts, but an
embedding can reveal much about its text: do not share this model where the training data may not go. Train
with `model.store_knn_reference: false` to store none (and predict with the head alone).
"""


def _local_paths_removed(value: Any) -> Any:
    """`value` with every absolute or existing local path replaced by its last component (cards leave the machine)."""
    if isinstance(value, dict):
        return {k: _local_paths_removed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_paths_removed(v) for v in value]
    if isinstance(value, str) and value and (os.path.isabs(value) or os.path.exists(value)):
        return os.path.basename(os.path.normpath(value))
    return value


def build_model_card(
    cfg: TrainConfig,
    metrics: Mapping[str, object],
    data_summary: Mapping[str, object],
    training_losses: Mapping[str, object],
    id2label: Mapping[int, str],
    folder: str | None = None,
):
    """The model card of a finished run (a `huggingface_hub.ModelCard`); `folder` (the saved model) gives the
    file list and the stored training rows."""
    from huggingface_hub import ModelCard, ModelCardData

    repo = cfg.hub.model_id or "path/to/best"
    base_model = cfg.hub.base_model
    local = os.path.exists(cfg.model_name) or os.path.isabs(cfg.model_name) or cfg.model_config is not None
    if base_model is None and not local:  # a local folder or a from-scratch backbone is no Hub id
        base_model = cfg.model_name
    modality = data_summary.get("input_column", "text")
    task, tags = MODALITY_CARDS[modality]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag=cfg.hub.pipeline_tag or task,
        tags=[*tags, f"head-{cfg.head.type}", cfg.loss.metric.type],
        base_model=base_model,
        license=cfg.hub.license,
        datasets=list(cfg.hub.datasets) or None,
        language=list(cfg.hub.language) or None,
    )
    labels = [id2label[i] for i in sorted(id2label)]
    shown = ", ".join(f"`{name}`" for name in labels[:50]) + (" ..." if len(labels) > 50 else "")
    files, code = _files_section(folder)
    rows, saved_config = _stored_reference(folder)
    files_block = f"\n## Files\n\nEverything this folder needs to load and predict:\n\n{files}\n" if files else ""
    body = f"""
# {repo.rsplit("/", 1)[-1]}

{"An" if modality[0] in "aeiou" else "A"} {modality} classifier and an embedding model trained with hf_metric \
(supervised metric learning on Transformers): one encoder gives class scores (`logits`) and an L2-normalized \
embedding (`embeddings`) for kNN search.{_from_scratch_note(cfg)}

## How predictions are made

{_prediction_section(cfg, rows, saved_config)}{_open_set_line(cfg, saved_config, metrics)}

## Labels

{len(labels)} classes: {shown}

## Training data

{metrics_markdown_table(_local_paths_removed(dict(data_summary)), columns=("data", "value"))}
{_stored_data_section(rows)}
## Training objective

{_objective(dataclasses.replace(cfg, model_name=_local_paths_removed(cfg.model_name)))}

Last logged training losses:

{metrics_markdown_table(dict(training_losses), columns=("training", "value"))}

## Final validation metrics

{metrics_markdown_table(dict(metrics))}
{files_block}
## How to load it

{_load_instructions(repo, code) if modality == "text" else _media_load_instructions(repo, task)}

## Training configuration

```yaml
{yaml.safe_dump(_local_paths_removed(cfg.to_dict()), sort_keys=False).strip()}
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
            f"`hf-metric push --model {folder} --model-id {hub.model_id}`"
        ) from None
    return info.commit_url
