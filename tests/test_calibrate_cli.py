"""`hf-metric calibrate`: a new rule from a new validation file; weights untouched, config written atomically."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import synthetic_rows, write_parquet
from test_inference_cli import save_tiny_model
from test_open_set_training import _oos_rows

from hf_metric.cli import app
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.open_set.recalibrate import RULE_KEYS


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _config(folder) -> dict:
    return json.loads(Path(folder, "config.json").read_text(encoding="utf-8"))


@pytest.fixture()
def model(tiny_model_dir, tmp_path):
    return save_tiny_model(tiny_model_dir, tmp_path / "best")


@pytest.fixture(scope="module")
def val_file(tmp_path_factory):
    rows = synthetic_rows(per_class=10, seed=31) + _oos_rows(8, seed=5)
    return write_parquet(tmp_path_factory.mktemp("val") / "val.parquet", rows)


def test_in_place_changes_only_the_rule_and_the_saved_model_reproduces_it(model, val_file, tmp_path, capsys):
    weights, before = _digest(os.path.join(model, "model.safetensors")), _config(model)
    assert app(["calibrate", "--model", model, "--data", str(val_file), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "criterion in_scope_recall (target 0.95)" in out and "8 out-of-scope validation rows" in out
    after = _config(model)
    assert _digest(os.path.join(model, "model.safetensors")) == weights
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed and changed <= set(RULE_KEYS)
    chosen = after["open_set_calibration"]
    assert (chosen["criterion"], chosen["oos_rows"], chosen["score"]) == ("in_scope_recall", 8, "fused")
    assert "only 8 out-of-scope rows" in chosen["reason"]
    # the saved model, evaluated on the same file, applies exactly the rule calibrated on it
    assert MetricClassifierModel.from_pretrained(model).config.open_set_threshold == after["open_set_threshold"]
    assert (
        app(["evaluate", "--model", model, "--data", str(val_file), "--out", str(tmp_path / "e"), "--no-progress"]) == 0
    )
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    assert metrics["in_scope_recall"] == pytest.approx(chosen["metrics"]["in_scope_recall"], abs=1e-9)
    assert metrics["in_scope_recall"] >= 0.95
    assert metrics["oos_recall"] == pytest.approx(chosen["metrics"]["oos_recall"], abs=1e-9)


def test_out_writes_a_copy_and_leaves_the_model_alone(model, val_file, tmp_path):
    before = _config(model)
    out = tmp_path / "recalibrated"
    args = ["calibrate", "--model", model, "--data", str(val_file), "--criterion", "fpr", "--target", "0.25"]
    assert app([*args, "--out", str(out), "--no-progress"]) == 0
    assert _config(model) == before
    assert _digest(out / "model.safetensors") == _digest(os.path.join(model, "model.safetensors"))
    assert sorted(os.listdir(out)) == sorted(os.listdir(model))
    rule = _config(out)["open_set_calibration"]
    assert rule["criterion"] == "fpr" and rule["target"] == 0.25 and rule["metrics"]["fpr"] <= 0.25


def test_a_killed_write_leaves_the_old_folder_readable(model, val_file, monkeypatch):
    import hf_metric.atomic

    before, raw = _config(model), Path(model, "config.json").read_bytes()

    replace = os.replace

    def killed(src, dst):  # the model's files die mid-write; the data cache of the input file is written as usual
        if os.path.dirname(os.path.abspath(dst)) == os.path.abspath(model):
            raise OSError("killed")
        return replace(src, dst)

    monkeypatch.setattr(hf_metric.atomic.os, "replace", killed)
    with pytest.raises(OSError, match="killed"):
        app(["calibrate", "--model", model, "--data", str(val_file), "--no-progress"])
    monkeypatch.undo()
    assert Path(model, "config.json").read_bytes() == raw and _config(model) == before
    assert not [f for f in os.listdir(model) if f.endswith(".tmp")]
    assert MetricClassifierModel.from_pretrained(model).config.open_set_threshold is None


def test_bad_requests_are_one_line_errors(model, tmp_path, capsys):
    only_in = write_parquet(tmp_path / "in.parquet", synthetic_rows(per_class=4, seed=3))
    assert app(["calibrate", "--model", model, "--data", str(only_in), "--criterion", "accuracy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "in.parquet" in err and "needs rows labelled 'oos'" in err
    assert app(["calibrate", "--model", model, "--data", str(only_in), "--score", "mahalanobis"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: --score mahalanobis") and "cannot compute" in last
