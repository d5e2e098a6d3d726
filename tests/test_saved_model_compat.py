"""A model saved by hf_metric 0.1.0 (before the package's layout changed) still loads: with today's classes, and
as remote code with its own files; both give the outputs it gave when it was saved (kNN fusion and the open-set
rule included). The folder was written by `trainer.save_model` of that version (tests/fixtures/)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from hf_metric.model import MetricClassifierModel

SAVED = Path(__file__).parent / "fixtures" / "model_saved_by_0_1_0"


@pytest.fixture(scope="module")
def expected():
    return json.loads((SAVED / "expected_outputs.json").read_text())


def _outputs(model, texts):
    tokenizer = AutoTokenizer.from_pretrained(SAVED)
    with torch.no_grad():
        return model.eval()(**tokenizer(texts, return_tensors="pt", padding=True))


def _check(logits, embeddings, open_set_scores, expected):
    np.testing.assert_allclose(np.array(logits), np.array(expected["logits"]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(embeddings), np.array(expected["embeddings"]), rtol=1e-5, atol=1e-5)
    if expected["open_set_scores"] is not None:
        np.testing.assert_allclose(
            np.array(open_set_scores), np.array(expected["open_set_scores"]), rtol=1e-5, atol=1e-5
        )


def test_a_model_saved_by_0_1_0_loads_with_todays_classes(expected):
    model = MetricClassifierModel.from_pretrained(SAVED)
    assert model.config.knn_reference_size > 0 and model.config.open_set_threshold is not None
    out = _outputs(model, expected["texts"])
    scores = out.open_set_scores.tolist() if out.open_set_scores is not None else None
    _check(out.logits.tolist(), out.embeddings.tolist(), scores, expected)


REMOTE = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
assert "hf_metric" not in sys.modules and type(model).__module__.startswith("transformers_modules")
tok = AutoTokenizer.from_pretrained(sys.argv[1])
with torch.no_grad():
    o = model(**tok(json.loads(sys.argv[2]), return_tensors="pt", padding=True))
s = o.open_set_scores.tolist() if o.open_set_scores is not None else None
print("RESULT " + json.dumps([o.logits.tolist(), o.embeddings.tolist(), s]))
"""


def test_a_model_saved_by_0_1_0_loads_as_remote_code_without_hf_metric(expected, tmp_path):
    """In a fresh process that never imports hf_metric, transformers runs the folder's own code files."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    args = [sys.executable, "-c", REMOTE, str(SAVED), json.dumps(expected["texts"])]
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line.split("RESULT ", 1)[1] for line in out.stdout.splitlines() if "RESULT " in line]
    assert lines, out.stdout[-2000:] + out.stderr[-2000:]
    _check(*json.loads(lines[-1]), expected)


def test_the_cli_predicts_with_a_model_saved_by_0_1_0(tmp_path, expected):
    """`hf-metric predict`: the fused argmax as `top_labels[0]`, rejected where the saved rule says so."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_metric.commands import main

    pq.write_table(pa.table({"text": expected["texts"]}), tmp_path / "q.parquet")
    args = ["predict", "--model", str(SAVED), "--data", str(tmp_path / "q.parquet"), "--out", str(tmp_path / "p.pq")]
    assert main(args) == 0
    got = pq.read_table(tmp_path / "p.pq").to_pydict()
    config = json.loads((SAVED / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in np.array(expected["logits"]).argmax(1)]
    assert [top[0] for top in got["top_labels"]] == names
    rejected = np.array(expected["open_set_scores"]) < config["open_set_threshold"]
    assert got["is_out_of_scope"] == rejected.tolist() and rejected.any() and not rejected.all()
    want = [config["out_of_scope_label"] if r else n for r, n in zip(rejected, names, strict=True)]
    assert got["predicted_label"] == want
