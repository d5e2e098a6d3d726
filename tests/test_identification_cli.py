"""`hf-metric index | predict --gallery | verify | evaluate --gallery` end to end on tiny text, image and audio
models, checked against float64 brute force on the embeddings `hf-metric embed` writes (the model's own
forward), and on the metric functions of `evaluation.retrieval` / `evaluation.verification` fed by hand."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import CLASS_WORDS, FILLER, write_parquet
from test_inference_cli import save_tiny_model

from hf_metric.commands import main as hf_metric

ADDRESS = {word: f"addr-{label}" for label, words in CLASS_WORDS.items() for word in words}
"""Each keyword is one tree; the trees of a class stand at one address (its group)."""


def tree_rows(per_tree: int, seed: int, trees=None, group=True) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for word in trees or sorted(ADDRESS):
        for _ in range(per_tree):
            text = " ".join(rng.sample([word, *rng.sample(FILLER, 4)], 5))
            rows.append({"text": text, "label": f"tree-{word}", **({"group": ADDRESS[word]} if group else {})})
    rng.shuffle(rows)
    return rows


def unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def model(tiny_model_dir, tmp_path_factory):
    return save_tiny_model(tiny_model_dir, tmp_path_factory.mktemp("model") / "best", fusion=0.0, reference=False)


def embed(model: str, path, tmp_path, name: str) -> np.ndarray:
    out = tmp_path / f"{name}.npy"
    assert hf_metric(["embed", "--model", model, "--data", str(path), "--out", str(out), "--no-progress"]) == 0
    return unit(np.load(out))


def index(*args: str) -> int:
    return hf_metric(["index", *args, "--no-progress"])


def test_index_then_predict_within_group_equals_brute_force(model, tmp_path):
    enrol = write_parquet(tmp_path / "enrol.parquet", tree_rows(3, seed=1))
    queries = tree_rows(1, seed=2)
    queries.append({"text": "visa pin help", "label": "tree-visa", "group": "addr-nowhere"})
    query = write_parquet(tmp_path / "query.parquet", queries)
    gallery = tmp_path / "gallery"
    assert index("--model", model, "--data", str(enrol), "--out", str(gallery)) == 0
    out = tmp_path / "pred.parquet"
    run = ["predict", "--model", model, "--data", str(query), "--out", str(out), "--gallery", str(gallery)]
    assert hf_metric([*run, "--within-group", "--top-k", "3", "--no-progress"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["text"] == [r["text"] for r in queries] and "predicted_label" in table  # the head's too
    g_emb, q_emb = embed(model, enrol, tmp_path, "g"), embed(model, query, tmp_path, "q")
    g_rows = pq.read_table(enrol).to_pydict()
    for row, q in enumerate(queries):
        members = [i for i, g in enumerate(g_rows["group"]) if g == q["group"]]
        if not members:
            assert table["gallery_status"][row] == "no_candidates" and table["gallery_label"][row] is None
            assert table["gallery_top_labels"][row] == []
            continue
        sims = g_emb[members] @ q_emb[row]
        order = np.argsort(-sims, kind="stable")[:3]
        assert table["gallery_status"][row] == "ok"
        assert table["gallery_top_labels"][row] == [g_rows["label"][members[i]] for i in order]
        assert table["gallery_label"][row] == g_rows["label"][members[order[0]]]
        np.testing.assert_allclose(table["gallery_top_scores"][row], sims[order], atol=1e-5)
        assert {ADDRESS[label[5:]] for label in table["gallery_top_labels"][row]} == {q["group"]}
    assert "is_unknown" not in table  # no calibrated threshold yet


def test_append_equals_building_at_once_and_remove_deletes(model, tmp_path):
    from hf_metric.inference.gallery import Gallery

    rows = tree_rows(2, seed=3)
    first, second = write_parquet(tmp_path / "a.parquet", rows[:10]), write_parquet(tmp_path / "b.parquet", rows[10:])
    both = write_parquet(tmp_path / "ab.parquet", rows)
    assert index("--model", model, "--data", str(first), "--out", str(tmp_path / "g")) == 0
    assert index("--model", model, "--data", str(second), "--out", str(tmp_path / "g"), "--append") == 0
    assert index("--model", model, "--data", str(both), "--out", str(tmp_path / "whole")) == 0
    appended, whole = Gallery.load(tmp_path / "g"), Gallery.load(tmp_path / "whole")
    np.testing.assert_allclose(appended.embeddings, whole.embeddings, atol=1e-6)
    assert appended.labels.tolist() == whole.labels.tolist() and appended.groups.tolist() == whole.groups.tolist()
    assert appended.row_ids.tolist()[:10] == [f"a.parquet#{i}" for i in range(10)]
    assert index("--model", model, "--data", str(second), "--out", str(tmp_path / "g"), "--append") == 2  # twice
    victim = rows[0]["label"]
    assert index("--model", model, "--out", str(tmp_path / "g"), "--remove", victim) == 0
    left = Gallery.load(tmp_path / "g")
    assert victim not in left.identities and len(left) == len(whole) - sum(r["label"] == victim for r in rows)


def test_another_models_gallery_is_refused_with_one_line(model, tmp_path, capsys):
    from hf_metric.model.modeling import MetricClassifierModel

    other = tmp_path / "other"
    shutil.copytree(model, other)  # the tokenizer too
    retrained = MetricClassifierModel.from_pretrained(model)
    with torch.no_grad():
        retrained.backbone.embeddings.word_embeddings.weight[5] += 0.01  # as another training run would
    retrained.save_pretrained(other)
    data = write_parquet(tmp_path / "enrol.parquet", tree_rows(1, seed=4))
    assert index("--model", model, "--data", str(data), "--out", str(tmp_path / "g")) == 0
    capsys.readouterr()
    run = ["predict", "--model", str(other), "--data", str(data), "--out", str(tmp_path / "p.parquet")]
    assert hf_metric([*run, "--gallery", str(tmp_path / "g"), "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: gallery ")
    assert "was built by another model (fingerprint" in err[0] and "this model is" in err[0]
    assert not (tmp_path / "p.parquet").exists()
    assert index("--model", str(other), "--data", str(data), "--out", str(tmp_path / "g"), "--append") == 2


def test_calibrated_gallery_marks_unknown_identities(model, tmp_path):
    from hf_metric.inference.gallery import Gallery
    from hf_metric.inference.gallery_calibration import calibrate_gallery

    enrolled = sorted(ADDRESS)[:8]
    enrol = write_parquet(tmp_path / "enrol.parquet", tree_rows(3, seed=5, trees=enrolled))
    calib = write_parquet(tmp_path / "calib.parquet", tree_rows(2, seed=6))  # 8 enrolled trees + 4 strangers
    gallery = tmp_path / "g"
    assert index("--model", model, "--data", str(enrol), "--out", str(gallery), "--calibrate", str(calib)) == 0
    stored = json.loads((gallery / "gallery.json").read_text())["calibration"]
    # the same calibration on the embeddings written by `embed`
    reference = Gallery(embed(model, enrol, tmp_path, "e"), pq.read_table(enrol).column("label").to_pylist())
    labels = pq.read_table(calib).column("label").to_pylist()
    want = calibrate_gallery(reference, embed(model, calib, tmp_path, "c"), labels)
    assert stored["threshold"] == pytest.approx(want["threshold"], abs=1e-5)
    assert stored["unknown_queries"] == 8 and stored["criterion"] == "accuracy"
    out = tmp_path / "pred.parquet"
    run = ["predict", "--model", model, "--data", str(calib), "--out", str(out), "--gallery", str(gallery)]
    assert hf_metric([*run, "--no-progress"]) == 0
    table = pq.read_table(out).to_pydict()
    assert table["is_unknown"] == [s < stored["threshold"] for s in table["gallery_score"]]
    run = ["evaluate", "--model", model, "--data", str(calib), "--gallery", str(gallery), "--out", str(tmp_path / "e")]
    assert hf_metric([*run, "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())["metrics"]
    known = np.isin(table["label"], [f"tree-{t}" for t in enrolled])
    unknown, right = np.array(table["is_unknown"]), np.array(table["gallery_label"]) == np.array(table["label"])
    assert metrics["unknown_rejection_rate"] == pytest.approx(unknown[~known].mean())
    assert metrics["known_identification_rate"] == pytest.approx((right & ~unknown)[known].mean())
    assert metrics["open_set_identification_accuracy"] == pytest.approx(stored["metrics"]["open_set_accuracy"])


def test_verify_chooses_the_threshold_for_the_far_and_scores_pairs(model, tmp_path, capsys):
    from hf_metric.evaluation.verification import threshold_at_far, verification_metrics

    rows = tree_rows(2, seed=7)
    rng = np.random.default_rng(0)
    pairs = {"text_a": [], "text_b": [], "same": []}
    for _ in range(40):
        a, b = rng.choice(len(rows), 2, replace=False)
        pairs["text_a"].append(rows[a]["text"])
        pairs["text_b"].append(rows[b]["text"])
        pairs["same"].append(rows[a]["label"] == rows[b]["label"] or bool(rng.random() < 0.3))
    path = write_parquet(tmp_path / "pairs.parquet", pairs)
    out = tmp_path / "verified.parquet"
    run = ["verify", "--model", model, "--pairs", str(path), "--out", str(out), "--no-progress"]
    assert hf_metric([*run, "--far", "0.1"]) == 0
    printed = capsys.readouterr().out
    a = embed(model, write_parquet(tmp_path / "a.parquet", {"text": pairs["text_a"]}), tmp_path, "a")
    b = embed(model, write_parquet(tmp_path / "b.parquet", {"text": pairs["text_b"]}), tmp_path, "b")
    sims = (a * b).sum(axis=1)
    table = pq.read_table(out).to_pydict()
    np.testing.assert_allclose(table["similarity"], sims, atol=1e-5)
    threshold = threshold_at_far(np.float32(table["similarity"]), np.array(pairs["same"]), 0.1)
    assert table["is_same"] == [s >= threshold for s in table["similarity"]]
    want = verification_metrics(np.float32(table["similarity"]), np.array(pairs["same"]))
    assert f"{want['eer']:.4f}" in printed and "verification_auc" in printed
    no_same = write_parquet(tmp_path / "unlabelled.parquet", {"text_a": pairs["text_a"], "text_b": pairs["text_b"]})
    run = ["verify", "--model", model, "--pairs", str(no_same), "--out", str(tmp_path / "v.parquet"), "--no-progress"]
    assert hf_metric(run) == 2  # nothing to choose a threshold on
    assert hf_metric([*run, "--threshold", "0.5"]) == 0
    assert pq.read_table(tmp_path / "v.parquet").column("is_same").to_pylist() == [s >= 0.5 for s in sims.tolist()]


def test_evaluate_gallery_reports_identification_verification_and_groups(model, tmp_path):
    from hf_metric.evaluation.retrieval import identification_metrics

    enrolled = sorted(ADDRESS)[:9]
    enrol = write_parquet(tmp_path / "enrol.parquet", tree_rows(2, seed=8, trees=enrolled))
    test = write_parquet(tmp_path / "test.parquet", tree_rows(2, seed=9))  # 3 trees unknown to the gallery
    gallery = tmp_path / "g"
    assert index("--model", model, "--data", str(enrol), "--out", str(gallery)) == 0
    out = tmp_path / "eval"
    run = ["evaluate", "--model", model, "--data", str(test), "--gallery", str(gallery), "--out", str(out)]
    assert hf_metric([*run, "--no-progress"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    metrics = summary["metrics"]
    for name in ("precision_at_1", "map_at_r", "r_precision", "mrr", "cmc@1", "cmc@5", "cmc@10"):
        assert name in metrics
    for name in ("verification_auc", "eer", "tar@far=0.001", "tar@far=0.01", "dir@fpir=0.01", "dir@fpir=0.1"):
        assert name in metrics
    assert metrics["queries_absent_from_gallery"] == 6 and set(summary["per_group"]) == set(ADDRESS.values())
    # brute force: rank the gallery rows by cosine, R = enrolled rows of the label
    g_emb, q_emb = embed(model, enrol, tmp_path, "g"), embed(model, test, tmp_path, "t")
    g_labels = np.asarray(pq.read_table(enrol).column("label").to_pylist(), dtype=object)
    q_labels = pq.read_table(test).column("label").to_pylist()
    ranked = g_labels[np.argsort(-(q_emb @ g_emb.T), axis=1, kind="stable")][:, :10]
    relevant = [int((g_labels == y).sum()) for y in q_labels]
    known = np.array(relevant) > 0
    assert metrics["precision_at_1"] == pytest.approx(float((ranked[known, 0] == np.array(q_labels)[known]).mean()))
    want = identification_metrics(q_labels, ranked, relevant)
    for name in ("map_at_r", "mrr", "cmc@5"):
        assert metrics[name] == pytest.approx(want[name], abs=1e-6)
    assert hf_metric([*run, "--within-group", "--no-progress"]) == 0
    grouped = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "precision_at_1_candidates_3-5" in grouped and "eer_same_group" in grouped
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "cmc_curve_test.png",
        "roc_det_test.png",
        "score_histogram_test.png",
    ]


def test_an_onnx_export_answers_with_the_gallery_of_its_model(model, tmp_path):
    """The export records its model's fingerprint: the gallery the PyTorch model built serves onnxruntime too,
    with the same matches."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    enrol = write_parquet(tmp_path / "enrol.parquet", tree_rows(2, seed=10))
    gallery = tmp_path / "g"
    assert index("--model", model, "--data", str(enrol), "--out", str(gallery)) == 0
    export = tmp_path / "onnx"
    assert hf_metric(["export", "--model", model, "--out", str(export)]) == 0
    tables = {}
    for backend, folder in (("torch", model), ("onnx", str(export))):
        out = tmp_path / f"{backend}.parquet"
        run = ["predict", "--model", folder, "--backend", backend, "--data", str(enrol), "--out", str(out)]
        assert hf_metric([*run, "--gallery", str(gallery), "--within-group", "--no-progress"]) == 0
        tables[backend] = pq.read_table(out).to_pydict()
    assert tables["onnx"]["gallery_label"] == tables["torch"]["gallery_label"]
    np.testing.assert_allclose(tables["onnx"]["gallery_score"], tables["torch"]["gallery_score"], atol=1e-4)


@pytest.fixture(scope="module", params=["convnext", "ast"])
def media_model(request, tmp_path_factory):
    """A tiny from-scratch image (ConvNeXt, GeM) or audio (AST) model saved with its processor."""
    pytest.importorskip("PIL")
    pytest.importorskip("soundfile")
    from media_fixtures import MODALITY, TINY_BACKBONES, TINY_PROCESSORS

    from hf_metric.data.featurize_media import build_processor
    from hf_metric.model.modeling import MetricClassifierModel

    backbone = request.param
    modality = MODALITY[backbone]
    folder = tmp_path_factory.mktemp(backbone) / "best"
    torch.manual_seed(0)
    pooling = "gem" if backbone == "convnext" else "mean"
    model = MetricClassifierModel.from_scratch(TINY_BACKBONES[backbone], {0: "a", 1: "b"}, pooling=pooling)
    model.save_pretrained(folder)
    build_processor(modality, None, TINY_BACKBONES[backbone]["model_type"], TINY_PROCESSORS[backbone]).save_pretrained(
        folder
    )
    return modality, str(folder)


def test_image_and_audio_galleries_index_and_identify_within_group(media_model, tmp_path):
    """Photos / clips of identities the model never saw, two per group: predict --gallery --within-group gives
    the brute-force nearest enrolled row of the query's group (embeddings from `hf-metric embed`)."""
    from media_fixtures import media_rows

    modality, model = media_model
    rows = media_rows(modality, per_class=4, seed=1)
    for i, row in enumerate(rows):
        row["label"] = f"{row['label']}-{i // 2 % 2}"  # 6 identities the head never saw
        row["group"] = f"site-{i // 2 % 2}"
    enrol = write_parquet(tmp_path / "enrol.parquet", rows[::2])
    query = write_parquet(tmp_path / "query.parquet", rows[1::2])
    gallery = tmp_path / "g"
    assert index("--model", model, "--data", str(enrol), "--out", str(gallery)) == 0
    out = tmp_path / "pred.parquet"
    run = ["predict", "--model", model, "--data", str(query), "--out", str(out), "--gallery", str(gallery)]
    assert hf_metric([*run, "--within-group", "--no-progress"]) == 0
    table = pq.read_table(out).to_pydict()
    g_emb, q_emb = embed(model, enrol, tmp_path, "g"), embed(model, query, tmp_path, "q")
    g_groups, g_labels = [r["group"] for r in rows[::2]], [r["label"] for r in rows[::2]]
    for row, q in enumerate(rows[1::2]):
        members = [i for i, g in enumerate(g_groups) if g == q["group"]]
        sims = g_emb[members] @ q_emb[row]
        assert table["gallery_label"][row] == g_labels[members[int(np.argmax(sims))]]
        assert table["gallery_score"][row] == pytest.approx(float(sims.max()), abs=1e-5)
        assert table["gallery_status"][row] == "ok"


def test_plain_evaluate_reports_the_group_error_analysis(model, tmp_path):
    """A grouped test file: `hf-metric evaluate` (no gallery) reports what validation reports in training."""
    from conftest import synthetic_rows

    from hf_metric.evaluation.groups import group_analysis

    rows = synthetic_rows(per_class=6, seed=12)
    site = {"billing": "a", "card": "a", "delivery": "b", "account": "b"}
    for row in rows:
        row["group"] = site[row["label"]]
    data = write_parquet(tmp_path / "test.parquet", rows)
    out = tmp_path / "eval"
    assert hf_metric(["evaluate", "--model", model, "--data", str(data), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert "Errors by group" in (out / "report.md").read_text()
    pred = tmp_path / "pred.parquet"
    assert hf_metric(["predict", "--model", model, "--data", str(data), "--out", str(pred), "--no-progress"]) == 0
    from hf_metric.model.modeling import MetricClassifierModel

    config = MetricClassifierModel.from_pretrained(model).config
    names = [config.id2label[i] for i in range(len(config.id2label))]
    logits = np.asarray(pq.read_table(pred).column("top_scores").to_pylist())  # probabilities, argmax-equivalent
    order = pq.read_table(pred).column("top_labels").to_pylist()
    probs = np.zeros((len(rows), len(names)))
    for i, (labels, scores) in enumerate(zip(order, logits, strict=True)):
        probs[i, [names.index(x) for x in labels]] = scores
    want = group_analysis(probs, np.array([names.index(r["label"]) for r in rows]), np.array([site[n] for n in names]))
    assert metrics["within_group_accuracy"] == pytest.approx(want.metrics["within_group_accuracy"])
    assert metrics["group_accuracy_min"] == pytest.approx(want.metrics["group_accuracy_min"])


def test_python_from_parquet_equals_the_index_command(model, tmp_path):
    from hf_metric import Gallery

    enrol = write_parquet(tmp_path / "enrol.parquet", tree_rows(2, seed=13))
    assert index("--model", model, "--data", str(enrol), "--out", str(tmp_path / "g"), "--match", "identity") == 0
    built = Gallery.from_parquet(model, str(enrol), match="identity")
    stored = Gallery.load(tmp_path / "g")
    np.testing.assert_allclose(built.embeddings, stored.embeddings, atol=1e-6)
    assert built.fingerprint == stored.fingerprint and stored.match == "identity"
    assert built.row_ids.tolist() == stored.row_ids.tolist()


def test_verify_takes_pairs_of_images_or_clips(media_model, tmp_path):
    """`image_a`/`image_b` (or `audio_a`/`audio_b`) pairs: similarity = cosine of the embeddings `embed` writes."""
    from media_fixtures import media_rows

    modality, model = media_model
    rows = media_rows(modality, per_class=2, seed=3)
    a, b = rows[::2], rows[1::2][::-1]
    pairs = {
        f"{modality}_a": [r[modality] for r in a],
        f"{modality}_b": [r[modality] for r in b],
        "same": [x["label"] == y["label"] for x, y in zip(a, b, strict=True)],
    }
    path = write_parquet(tmp_path / "pairs.parquet", pairs)
    out = tmp_path / "verified.parquet"
    run = ["verify", "--model", model, "--pairs", str(path), "--out", str(out), "--threshold", "0.9", "--no-progress"]
    assert hf_metric(run) == 0
    emb_a = embed(model, write_parquet(tmp_path / "a.parquet", {modality: pairs[f"{modality}_a"]}), tmp_path, "a")
    emb_b = embed(model, write_parquet(tmp_path / "b.parquet", {modality: pairs[f"{modality}_b"]}), tmp_path, "b")
    table = pq.read_table(out).to_pydict()
    np.testing.assert_allclose(table["similarity"], (emb_a * emb_b).sum(axis=1), atol=1e-5)
    assert table["is_same"] == [s >= 0.9 for s in table["similarity"]]
