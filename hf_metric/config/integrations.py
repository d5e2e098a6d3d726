"""The sections of the YAML config for services outside the run: Neptune tracking and the Hugging Face Hub.
Tokens never live in the config: they come from the environment (NEPTUNE_API_TOKEN, HF_TOKEN)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError
from .schema import check as _check


@dataclass
class NeptuneSection:
    """Neptune tracker settings. The API token is read only from NEPTUNE_API_TOKEN, never from this file."""

    mode: Literal["async", "sync", "offline", "debug", "disabled"] = "disabled"
    """`async`, `sync`, `offline` (stored in .neptune/ for a later `neptune sync`), `debug` (in memory) or
    `disabled`."""
    project: str | None = None
    """workspace/project; required for async and sync."""
    name: str | None = None
    """Run name."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""
    with_id: str | None = None
    """An existing run id to continue."""
    log_model_checkpoints: bool = False
    """Upload the best model (best/) to the run at the end."""

    def validate(self) -> None:
        if self.mode in ("async", "sync"):
            _check(bool(self.project), "neptune.project", f"is required when neptune.mode is {self.mode!r}")


@dataclass
class HubSection:
    """Upload of `<checkpoints_dir>/best` after training. The token comes from `HF_TOKEN` or `hf auth login`,
    never from this file; `HF_ENDPOINT` points at a private mirror."""

    push_to_hub: bool = False
    """Upload best/ (without pickles) when training ends, from the main process; CLI: --push-to-hub."""
    model_id: str | None = None
    """Repo id owner/name, required to push; CLI: --hub-model-id."""
    private: bool = True
    """Create the repo private (an existing repo keeps its visibility); CLI: --[no-]hub-private."""
    revision: str | None = None
    """Branch to push to (created if missing); null: main; CLI: --hub-revision."""
    commit_message: str = "Upload model trained with hf_metric"
    """Message of the upload commit."""
    license: str | None = None
    """Model card `license` (a Hub license id such as apache-2.0, or `other`); null: not stated in the card."""
    datasets: list[str] = field(default_factory=list)
    """Hub ids of the training data sets, listed in the card metadata (local files are never named)."""
    language: list[str] = field(default_factory=list)
    """ISO 639-1 codes of the texts (e.g. [en, ru]), for the card metadata."""
    pipeline_tag: str | None = None
    """Model card: the Hub task widget; null: by modality (text-, image- or audio-classification)."""
    base_model: str | None = None
    """Hub id of the backbone for the card; null: `model_name` when it is a Hub id (never a local folder)."""

    def validate(self) -> None:
        if self.push_to_hub:
            _check(bool(self.model_id), "hub.model_id", "is required when hub.push_to_hub is true")
        if self.model_id is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.model_id)
            except HFValidationError:
                raise ConfigError(f"hub.model_id: {self.model_id!r} is not a valid repo id (owner/name)") from None
        _check(bool(self.commit_message), "hub.commit_message", "must not be empty")
