"""The pipelines on a saved tiny model give the numbers of the model's own forward pass."""

import numpy as np
import pytest
import torch
from conftest import synthetic_rows
from transformers import AutoTokenizer, pipeline

import hf_metric  # noqa: F401 - registers the model classes and the pipelines
from hf_metric.evaluation.metrics import knn_classify, knn_predict
from hf_metric.model.modeling import MetricClassifierModel
from hf_metric.sharing.pipelines import KNN_REFERENCE_FILE, MetricEmbeddingPipeline
from hf_metric.training.bank import EmbeddingBank

ID2LABEL = {0: "account", 1: "billing", 2: "card", 3: "delivery"}
QUERIES = [r["text"] for r in synthetic_rows(2, seed=5)]
REFERENCE = synthetic_rows(3, seed=6)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_model_dir):
    """A saved model (cosine head, projection) with its tokenizer, and the model itself for the reference."""
    path = tmp_path_factory.mktemp("saved_model")
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(
        tiny_model_dir, ID2LABEL, head_type="cosine", projection_dim=8, classifier_dropout=0.0
    ).eval()
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return str(path), model, AutoTokenizer.from_pretrained(path)


def _forward(saved, texts):
    _, model, tokenizer = saved
    with torch.no_grad():  # one text at a time: no padding, as the pipelines run by default
        outs = [model(**tokenizer([t], return_tensors="pt")) for t in texts]
    return torch.cat([o.logits for o in outs]), torch.cat([o.embeddings for o in outs])


def test_text_classification_pipeline_gives_label_names_and_the_forward_softmax(saved):
    logits, _ = _forward(saved, QUERIES)
    probs = logits.softmax(-1)
    results = pipeline("text-classification", model=saved[0])(QUERIES, top_k=None)
    for row, result in zip(probs, results, strict=True):
        assert {r["label"] for r in result} == set(ID2LABEL.values())
        for r in result:
            label_id = {v: k for k, v in ID2LABEL.items()}[r["label"]]
            assert r["score"] == pytest.approx(row[label_id].item(), abs=1e-6)
    top = pipeline("text-classification", model=saved[0])(QUERIES)
    assert [r["label"] for r in top] == [ID2LABEL[int(i)] for i in probs.argmax(-1)]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_embedding_pipeline_returns_the_forward_embedding(saved, batch_size):
    _, expected = _forward(saved, QUERIES)
    got = torch.tensor(pipeline("metric-embedding", model=saved[0])(QUERIES, batch_size=batch_size))
    assert got.shape == expected.shape == (len(QUERIES), 8)  # one projected vector per text
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(QUERIES)), atol=1e-5)
    # the same pipeline under the stock task name, which by itself would return the logits
    named = pipeline("feature-extraction", model=saved[0], pipeline_class=MetricEmbeddingPipeline)
    assert torch.allclose(named(QUERIES[0], return_tensors=True), expected[0], atol=1e-5)


def test_knn_pipeline_agrees_with_knn_classify(saved):
    texts, labels = [r["text"] for r in REFERENCE], [r["label"] for r in REFERENCE]
    knn = pipeline("knn-classification", model=saved[0]).fit(texts, labels, batch_size=5)
    _, ref_expected = _forward(saved, texts)
    assert torch.allclose(knn.reference_embeddings, ref_expected, atol=1e-5)
    _, query = _forward(saved, QUERIES)
    for k in (1, 5):
        results = knn(QUERIES, k=k)
        expected = knn_classify(query, knn.reference_embeddings, labels, k=k)
        assert [r["label"] for r in results] == expected.tolist()
        _, share = knn_predict(query, knn.reference_embeddings, labels, k=k)
        assert [r["score"] for r in results] == pytest.approx(share.tolist(), abs=1e-6)
    assert len(set(knn_classify(query, knn.reference_embeddings, labels, k=1).tolist())) > 1  # not a constant


def test_a_reference_saved_with_the_model_is_loaded_by_the_pipeline(saved, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(saved[0], model_dir)
    knn = pipeline("knn-classification", model=str(model_dir))
    with pytest.raises(ValueError, match="no reference set"):
        knn(QUERIES[0])
    knn.fit([r["text"] for r in REFERENCE], [r["label"] for r in REFERENCE])
    knn.k = 3
    assert knn.save_reference(model_dir) == str(model_dir / KNN_REFERENCE_FILE)
    expected = knn(QUERIES)
    reloaded = pipeline("knn-classification", model=str(model_dir))
    assert reloaded.k == 3 and reloaded(QUERIES) == expected
    assert torch.equal(reloaded.reference_embeddings, knn.reference_embeddings)


def test_knn_pipeline_uses_a_training_embedding_bank_with_label_names(saved, tmp_path):
    g = torch.Generator().manual_seed(0)
    bank = EmbeddingBank(capacity_steps=4, dim=8, max_rows_per_step=6)
    for step in range(3):
        bank.add(step, torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1), torch.arange(6) % 4)
    bank.save(tmp_path / "embedding_bank.safetensors")
    knn = pipeline("knn-classification", model=saved[0], reference=str(tmp_path / "embedding_bank.safetensors"))
    names = np.array([ID2LABEL[i] for i in bank.labels().tolist()])
    _, query = _forward(saved, QUERIES)
    expected = knn_classify(query, bank.embeddings(), names, k=4)
    assert [r["label"] for r in knn(QUERIES, k=4)] == expected.tolist()


def test_a_model_with_a_fusion_reference_serves_both_pipelines(saved, tmp_path):
    """The training rows stored for kNN fusion travel in the safetensors: the text-classification pipeline
    returns the fused probabilities and the kNN pipeline uses those rows by default."""
    tokenizer = saved[2]
    fused = MetricClassifierModel.from_pretrained(saved[0], knn_fusion_weight=0.4, knn_fusion_k=3).eval()
    texts, names = [r["text"] for r in REFERENCE], [r["label"] for r in REFERENCE]
    label2id = {v: k for k, v in ID2LABEL.items()}
    _, ref_emb = _forward(saved, texts)
    fused.set_knn_reference(ref_emb, torch.tensor([label2id[n] for n in names]))
    fused.save_pretrained(tmp_path / "fused")
    tokenizer.save_pretrained(tmp_path / "fused")
    logits, query = _forward(saved, QUERIES)
    from hf_metric.model.knn_fusion import knn_class_probabilities

    p_knn = knn_class_probabilities(query, ref_emb, [label2id[n] for n in names], len(ID2LABEL), 3, 0.05)
    expected = 0.6 * logits.softmax(-1) + 0.4 * p_knn
    results = pipeline("text-classification", model=str(tmp_path / "fused"))(QUERIES, top_k=None)
    for row, result in zip(expected, results, strict=True):
        for r in result:
            assert r["score"] == pytest.approx(row[label2id[r["label"]]].item(), abs=1e-5)
    knn = pipeline("knn-classification", model=str(tmp_path / "fused"))
    assert knn.k == 3 and [r["label"] for r in knn(QUERIES)] == knn_classify(query, ref_emb, names, k=3).tolist()
