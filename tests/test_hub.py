"""The model card and the Hub upload at the end of a run, with `HfApi` mocked at its boundary (no network)."""

import json
from pathlib import Path
from unittest import mock

import pytest
from conftest import synthetic_rows, write_parquet
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError

from hf_metric.cli import main
from hf_metric.config import HubSection
from hf_metric.evaluation.tables import metrics_markdown_table
from hf_metric.sharing.hub import HubError, push_to_hub

UPLOADED = {
    "README.md",
    "config.json",
    "model.safetensors",
    "head.safetensors",
    "modeling.py",
    "configuration.py",
    "pooling.py",
    "heads.py",
    "base_heads.py",
    "margin_heads.py",
    "precision.py",
    "losses.py",
    "classification_losses.py",
    "metric_losses.py",
    "masking.py",
    "objective.py",
    "registry.py",
    "knn_fusion.py",
    "neighbors.py",
    "topk_merge.py",
    "open_set_scores.py",
    "tokenizer.json",
    "tokenizer_config.json",
}
"""What best/ of a tiny run must upload: weights, config, code, tokenizer, card. Never training_args.bin."""


class FakeHub:
    """Records the calls `push_to_hub` makes on `HfApi`."""

    def __init__(self):
        self.calls = []

    def create_repo(self, api, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return mock.Mock(repo_id=repo_id)

    def create_branch(self, api, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def create_commit(self, api, repo_id, **kwargs):
        self.calls.append(("create_commit", repo_id, kwargs))
        return mock.Mock(commit_url=f"https://hub.example/{repo_id}/commit/1")

    def install(self, monkeypatch):
        for name in ("create_repo", "create_branch", "create_commit"):
            method = getattr(self, name)
            monkeypatch.setattr(HfApi, name, lambda api, *a, _m=method, **k: _m(api, *a, **k))


def test_a_run_writes_the_card_and_pushes_the_shareable_files(tmp_path, make_config, monkeypatch, capsys):
    hub = FakeHub()
    hub.install(monkeypatch)
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(12, seed=3))
    config = make_config(data, training={"num_epochs": 1}, hub={"commit_message": "first model"})
    args = ["--config", str(config), "--push-to-hub", "--hub-model-id", "me/tiny-metric", "--hub-revision", "exp"]
    assert main(args) == 0
    best = tmp_path / "ckpt" / "best"

    assert [c[0] for c in hub.calls] == ["create_repo", "create_branch", "create_commit"]
    assert hub.calls[0][1:] == ("me/tiny-metric", {"private": True, "exist_ok": True})
    assert hub.calls[1][2] == {"branch": "exp", "exist_ok": True}
    commit = hub.calls[2][2]
    assert commit["revision"] == "exp" and commit["commit_message"] == "first model"
    paths = {op.path_in_repo for op in commit["operations"]}
    assert paths == UPLOADED
    assert all(Path(op.path_or_fileobj) == best / op.path_in_repo for op in commit["operations"])
    assert (best / "training_args.bin").exists()  # in the folder, but a pickle: not uploaded
    assert "Pushed" in capsys.readouterr().out

    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    card = ModelCard.load(best / "README.md")
    assert card.data.pipeline_tag == "text-classification" and card.data.library_name == "transformers"
    assert {"hf_metric", "metric-learning", "head-linear", "supcon"} <= set(card.data.tags)
    assert card.data.base_model is None  # the backbone is a local folder, not a Hub id
    assert metrics_markdown_table(metrics) in card.text
    assert "| train_rows | 36 |" in card.text and "| val_rows | 12 |" in card.text  # 4 classes x (9 + 3)
    assert "loss = 1.0 * ce + 1.0 * supcon" in card.text and "supcon_loss" in card.text
    assert 'pipeline("text-classification", model="me/tiny-metric")' in card.text
    assert "trust_remote_code=True" in card.text
    assert "push_to_hub: true" in card.text  # the resolved config, with the command-line overrides


def test_a_failed_upload_is_a_one_line_error(tmp_path, monkeypatch):
    def refuse(api, repo_id, **kwargs):
        raise HfHubHTTPError("401 Client Error: Unauthorized\nmore detail", response=mock.Mock())

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(HubError, match=r"upload of .* to me/x failed \(401 Client Error: Unauthorized\)") as err:
        push_to_hub(str(tmp_path), HubSection(push_to_hub=True, model_id="me/x"))
    assert err.value.exit_code == 2 and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("hub", "flags", "message"),
    [
        ({}, ["--push-to-hub"], "hub.model_id: is required when hub.push_to_hub is true"),
        ({"model_id": "not a/valid/id"}, [], "hub.model_id: 'not a/valid/id' is not a valid repo id"),
        ({"commit_message": ""}, [], "hub.commit_message: must not be empty"),
    ],
)
def test_bad_hub_settings_stop_before_training(tmp_path, make_config, capsys, hub, flags, message):
    config = make_config(tmp_path / "never_read.parquet", hub=hub)
    assert main(["--config", str(config), *flags]) == 2
    assert message in capsys.readouterr().err
