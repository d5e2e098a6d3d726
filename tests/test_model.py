import pytest
import torch

import hf_metric  # noqa: F401 - registers the Auto classes
from hf_metric.model.modeling import MetricClassifierModel

ID2LABEL = {0: "a", 1: "b", 2: "c"}


@pytest.fixture
def model(tiny_model_dir):
    torch.manual_seed(0)
    return MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, classifier_dropout=0.0).eval()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(4, 25, (6, 7), generator=g),
        "attention_mask": torch.ones(6, 7, dtype=torch.long),
        "labels": torch.tensor([0, 0, 1, 1, 2, 2]),
        "metric_mask": torch.ones(6, dtype=torch.long),
        "classifier_mask": torch.ones(6, dtype=torch.long),
    }


def _grads(model, batch, part):
    model.zero_grad()
    getattr(model(**batch), part).backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def _same(a, b):
    return all(torch.allclose(x, y, atol=1e-7, rtol=0) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("mask", "part"), [("classifier_mask", "ce_loss"), ("metric_mask", "metric_loss")])
def test_a_masked_row_changes_no_gradient_of_its_loss(model, mask, part):
    batch = _batch()
    batch[mask] = torch.tensor([1, 1, 1, 0, 1, 1])
    before = _grads(model, batch, part)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][3] = torch.randint(4, 25, (7,), generator=torch.Generator().manual_seed(9))
    changed["labels"][3] = 2
    assert _same(before, _grads(model, changed, part))
    # the same change on an unmasked row does move the gradient, so this test can fail
    changed_unmasked = {k: v.clone() for k, v in batch.items()}
    changed_unmasked["input_ids"][2] = changed["input_ids"][3]
    assert not _same(before, _grads(model, changed_unmasked, part))


def test_output_fields_and_loss_is_the_weighted_sum(tiny_model_dir):
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(
        tiny_model_dir, ID2LABEL, classification_loss_weight=0.7, metric_loss_weight=0.3, projection_dim=8
    ).eval()
    out = model(**_batch())
    assert out.logits.shape == (6, 3) and out.embeddings.shape == (6, 8)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert out.loss.item() == pytest.approx(0.7 * out.ce_loss.item() + 0.3 * out.metric_loss.item(), rel=1e-6)
    no_labels = model(input_ids=_batch()["input_ids"])
    assert no_labels.loss is None and torch.allclose(no_labels.logits, out.logits, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_save_and_load_round_trip(tmp_path, tiny_model_dir, pooling):
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, pooling=pooling).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    batch = _batch()
    expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for loader in (MetricClassifierModel, AutoModel, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        got = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        assert torch.allclose(got.logits, expected.logits, atol=1e-6)
        assert torch.allclose(got.embeddings, expected.embeddings, atol=1e-6)
        assert loaded.config.id2label == ID2LABEL


def test_pretrained_backbone_weights_are_kept(tiny_model_dir):
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(tiny_model_dir)
    model = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL)
    ref_state = reference.state_dict()
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, ref_state[name]), name


HEAD_TYPES = ["linear", "cosine", "arcface", "subcenter_arcface", "cosface", "circle"]


@pytest.mark.parametrize("head_type", HEAD_TYPES)
def test_every_head_type_round_trips_with_identical_logits(tmp_path, tiny_model_dir, head_type):
    from transformers import AutoModel, AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, head_type=head_type, projection_dim=8)
    model.eval()
    model.save_pretrained(tmp_path)
    batch = _batch()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    expected = model(**inputs)
    assert torch.isfinite(expected.logits).all()
    for loader in (MetricClassifierModel, AutoModel, AutoModelForSequenceClassification):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is MetricClassifierModel  # the registered local class, not remote code
        got = loaded(**inputs)
        assert torch.allclose(got.logits, expected.logits, atol=1e-6)
        assert torch.allclose(got.embeddings, expected.embeddings, atol=1e-6)


def test_a_margin_head_missing_from_a_checkpoint_is_initialised(tmp_path, tiny_model_dir):
    MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL).save_pretrained(tmp_path)  # linear head
    loaded = MetricClassifierModel.from_pretrained(tmp_path, head_type="arcface")
    weight = loaded.head.weight
    assert torch.isfinite(weight).all() and 0 < weight.abs().max().item() < 10


def test_class_margins_make_the_target_logit_smaller_by_the_formula(tiny_model_dir):
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(
        tiny_model_dir,
        ID2LABEL,
        head_type="cosface",
        head_kwargs={"scale": 10.0},
        class_margins=[0.1, 0.4, 0.0],
        classifier_dropout=0.0,
    )
    model.train()
    batch = _batch()
    labels = batch["labels"]
    train_logits = model(**batch).logits
    model.eval()
    plain = model(**batch).logits
    target_drop = (plain - train_logits).gather(1, labels[:, None]).squeeze(1)
    expected = 10.0 * torch.tensor([0.1, 0.4, 0.0])[labels]  # CosFace: s * (cos - m) on the target only
    assert torch.allclose(target_drop, expected, atol=1e-5)
    others = torch.ones_like(plain, dtype=torch.bool).scatter(1, labels[:, None], False)
    assert torch.allclose(plain[others], train_logits[others], atol=1e-6)


@pytest.mark.parametrize("attention", [None, "eager"])
def test_a_new_model_masks_padding_like_a_loaded_one(tiny_model_dir, attention):
    """from_backbone keeps the backbone's attention implementation (a composite config used to reset it to
    None, and padded rows then differed from the same text unpadded and from the model loaded back)."""
    model = MetricClassifierModel.from_backbone(tiny_model_dir, ID2LABEL, attn_implementation=attention).eval()
    assert model.backbone.config._attn_implementation == (attention or "sdpa")
    ids = _batch()["input_ids"][:2]
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1] * 7])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[:1, :3]).logits
    assert torch.allclose(padded[:1], alone, atol=1e-6)
