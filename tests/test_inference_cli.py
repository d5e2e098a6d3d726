"""`hf-metric evaluate | predict | embed` on a saved tiny model, checked against scikit-learn and the model's own
forward (not against the code under test)."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CLASS_WORDS, synthetic_rows, write_parquet
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score

from hf_metric.cli import app
from hf_metric.data.parquet import read_labeled_parquet

NAMES = sorted(CLASS_WORDS)


def save_tiny_model(backbone: str, path, head_type: str = "linear", fusion: float = 0.3, reference: bool = True):
    """A model on the tiny BERT, its kNN reference = its own embeddings of synthetic training rows."""
    from transformers import AutoTokenizer

    from hf_metric.model.modeling import MetricClassifierModel

    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(
        backbone, dict(enumerate(NAMES)), head_type=head_type, knn_fusion_weight=fusion, knn_fusion_k=5
    ).eval()
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    if reference:
        rows = synthetic_rows(per_class=6, seed=1)
        with torch.no_grad():
            emb = model(**tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")).embeddings
        model.set_knn_reference(emb, torch.tensor([NAMES.index(r["label"]) for r in rows]))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    return save_tiny_model(tiny_model_dir, tmp_path_factory.mktemp("model") / "best")


def reference_outputs(model_dir: str, texts: list[str]):
    """The model's own forward (blocked kNN fusion inside the model), one text at a time: fused logits, the head's
    logits (= the logits without fusion) and the embeddings."""
    from transformers import AutoTokenizer

    from hf_metric.model.modeling import MetricClassifierModel

    model = MetricClassifierModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    with torch.no_grad():
        outs = [model(**tokenizer([t], return_tensors="pt")) for t in texts]

    def cat(name: str) -> np.ndarray:
        return (
            torch.cat([getattr(o, name) if getattr(o, name) is not None else o.logits for o in outs]).double().numpy()
        )

    return model, cat("logits"), cat("classifier_logits"), cat("embeddings")


def test_evaluate_equals_scikit_learn_on_a_shuffled_subset_of_classes(model_dir, tmp_path, capsys):
    rows = synthetic_rows(per_class=8, seed=7, classes=["delivery", "card", "billing"])  # no "account"
    data = write_parquet(tmp_path / "test.parquet", rows)
    out = tmp_path / "eval"
    assert app(["evaluate", "--model", model_dir, "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    metrics = summary["metrics"]
    assert (out / "report.md").is_file() and (out / "plots").is_dir()

    model, fused, head, emb = reference_outputs(model_dir, [r["text"] for r in rows])
    y = np.array([model.config.label2id[r["label"]] for r in rows])
    every = list(range(len(NAMES)))
    for prefix, logits in (("head_", head), ("fused_", fused)):
        pred = logits.argmax(1)
        assert metrics[f"{prefix}accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert metrics[f"{prefix}f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        for k in (1, 3):
            expected = top_k_accuracy_score(y, logits, k=k, labels=every)
            assert metrics[f"{prefix}top{k}_accuracy"] == pytest.approx(expected)
    per_class = f1_score(y, head.argmax(1), average=None, labels=sorted(set(y)))
    for c, f1 in zip(sorted(set(y)), per_class, strict=True):
        assert summary["per_class"][NAMES[c]]["head_f1"] == pytest.approx(f1)
    assert "account" not in summary["per_class"]
    # Recall@K against the stored training rows, naive float64
    ref = model.knn_reference_embeddings.double().numpy()
    ref_labels = model.knn_reference_labels.numpy()
    order = np.argsort(-(emb @ ref.T), axis=1, kind="stable")
    for k in (1, 5):
        expected = np.mean([(ref_labels[order[i, :k]] == y[i]).any() for i in range(len(y))])
        assert metrics[f"recall@{k}"] == pytest.approx(expected)
    assert "head_accuracy" in capsys.readouterr().out


def test_a_fixed_label_mapping_keeps_the_models_ids(tmp_path):
    names = ["delivery", "card"]
    rows = [{"text": f"row {i}", "label": random.Random(i).choice(names)} for i in range(20)]
    path = write_parquet(tmp_path / "subset.parquet", rows)
    label2id = {n: i for i, n in enumerate(NAMES)}
    table = read_labeled_parquet(path, label2id)
    assert table.labels.tolist() == [label2id[r["label"]] for r in rows]
    assert table.id2label == dict(enumerate(NAMES))
    write_parquet(tmp_path / "bad.parquet", [*rows, {"text": "x", "label": "refunds"}, {"text": "y", "label": "pin"}])
    with pytest.raises(Exception, match=r"2 label\(s\) unknown to the model: 'pin', 'refunds'"):
        read_labeled_parquet(tmp_path / "bad.parquet", label2id)


def test_unknown_test_labels_are_a_one_line_error(model_dir, tmp_path, capsys):
    data = write_parquet(tmp_path / "t.parquet", [{"text": "visa pin", "label": "cards"}])
    assert app(["evaluate", "--model", model_dir, "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown to the model: 'cards'" in err


def test_predict_keeps_row_order_and_every_column(model_dir, tmp_path):
    rows = synthetic_rows(per_class=9, seed=3)
    table = pa.table(
        {
            "id": list(range(len(rows)))[::-1],
            "text": [r["text"] for r in rows],
            "label": [r["label"] for r in rows],
            "meta": [{"n": i} for i in range(len(rows))],
        }
    )
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=10)
    out = tmp_path / "out.parquet"
    args = ["predict", "--model", model_dir, "--data", str(tmp_path / "in.parquet"), "--out", str(out)]
    assert app([*args, "--read-batch-rows", "7", "--top-k", "3", "--set", "training.batch_size=4"]) == 0
    result = pq.read_table(out)
    assert result.column_names[:4] == table.column_names
    assert result.select(table.column_names).equals(table)
    _, fused, head, _ = reference_outputs(model_dir, table.column("text").to_pylist())
    assert result.column("predicted_label").to_pylist() == [NAMES[i] for i in fused.argmax(1)]
    assert result.column("head_label").to_pylist() == [NAMES[i] for i in head.argmax(1)]
    probs = np.exp(fused)  # fused logits are log-probabilities
    np.testing.assert_allclose(result.column("score").to_numpy(), probs.max(1), atol=1e-5)
    top = result.column("top_labels").to_pylist()
    assert all(
        len(t) == 3 and t[0] == p for t, p in zip(top, result.column("predicted_label").to_pylist(), strict=True)
    )
    assert None not in result.column("knn_label").to_pylist()
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_embed_writes_the_normalised_embeddings(model_dir, tmp_path, suffix):
    rows = synthetic_rows(per_class=3, seed=5)
    data = write_parquet(tmp_path / "in.parquet", rows)
    out = tmp_path / f"emb{suffix}"
    assert app(["embed", "--model", model_dir, "--data", str(data), "--out", str(out), "--read-batch-rows", "5"]) == 0
    if suffix == ".npy":
        emb = np.load(out)
    else:
        result = pq.read_table(out)
        assert result.column("text").to_pylist() == [r["text"] for r in rows]
        assert result.schema.field("embedding").type == pa.list_(pa.float32())
        emb = np.array(result.column("embedding").to_pylist())
    _, _, _, expected = reference_outputs(model_dir, [r["text"] for r in rows])
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_bad_input_rows_name_file_column_and_row(model_dir, tmp_path, capsys):
    data = write_parquet(tmp_path / "in.parquet", {"text": ["ok", "fine", "", "x"]})
    out = tmp_path / "out.parquet"
    args = ["predict", "--model", model_dir, "--data", str(data), "--out", str(out), "--read-batch-rows", "2"]
    assert app(args) == 2
    assert "column 'text', row 2: text is null or empty" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["evaluate", "--data", "{data}", "--set", "metric_validation.recal_at_k=[1]"], "did you mean"),
        (["predict", "--data", "{data}", "--out", "o.parquet", "--set", "training.batchsize=4"], "did you mean"),
        (["embed", "--data", "{data}", "--out", "o.npy", "--set", "training.batch_size=big"], "expected an integer"),
        (["export", "--out", "x", "--set", "nope"], "expected dotted.key=value"),
        (["push", "--set", "hub.model_idd=a/b"], "did you mean hub.model_id"),
    ],
)
def test_set_is_validated_like_the_yaml(model_dir, tmp_path, capsys, argv, message):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(per_class=1))
    argv = [a.replace("{data}", str(data)) for a in argv]
    assert app([argv[0], "--model", model_dir, *argv[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --set ") and message in err and "\n" not in err


def test_train_set_and_resume(tmp_path, make_config, capsys):
    config = make_config(write_parquet(tmp_path / "train.parquet", synthetic_rows(per_class=4)))
    assert app(["train", "--config", str(config), "--set", "trainig.seed=1"]) == 2
    assert "did you mean training?" in capsys.readouterr().err
    assert app(["train", "--config", str(config), "--resume"]) == 2
    assert "training.resume_from: no checkpoint found" in capsys.readouterr().err


def test_usage_errors_are_one_line_with_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        app(["evaluate", "--model", "m"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_the_console_scripts_are_declared():
    import configparser
    from pathlib import Path

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    scripts = setup["options.entry_points"]["console_scripts"]
    assert "hf-metric = hf_metric.cli:app" in scripts and "hf-metric-train = hf_metric.cli:main" in scripts


def test_predict_rejects_out_of_scope_rows_when_the_model_has_a_threshold(tiny_model_dir, tmp_path):
    """With a calibrated rule (here msp >= threshold), rejected rows get the model's out-of-scope label and
    `is_out_of_scope`; the decision equals `score < threshold` on the independently computed top probability."""
    from hf_metric.model.modeling import MetricClassifierModel

    folder = save_tiny_model(tiny_model_dir, tmp_path / "plain")
    model = MetricClassifierModel.from_pretrained(folder)
    texts = [r["text"] for r in synthetic_rows(per_class=5, seed=3)]
    source = write_parquet(tmp_path / "in.parquet", {"text": texts})
    plain_out = tmp_path / "plain.parquet"
    assert app(["predict", "--model", folder, "--data", str(source), "--out", str(plain_out)]) == 0
    plain = pq.read_table(plain_out).to_pydict()
    assert "is_out_of_scope" not in plain  # no threshold: exactly the columns of before
    threshold = float(np.median(plain["score"]))
    model.set_open_set("msp", threshold)
    model.save_pretrained(folder)
    out = tmp_path / "out.parquet"
    assert app(["predict", "--model", folder, "--data", str(source), "--out", str(out)]) == 0
    got = pq.read_table(out).to_pydict()
    rejected = np.asarray(plain["score"]) < threshold
    assert 0 < rejected.sum() < len(texts)
    assert got["is_out_of_scope"] == rejected.tolist()
    np.testing.assert_allclose(got["open_set_score"], plain["score"], atol=1e-5)
    want = np.where(rejected, model.config.out_of_scope_label, np.asarray(plain["predicted_label"], dtype=object))
    assert got["predicted_label"] == want.tolist()
