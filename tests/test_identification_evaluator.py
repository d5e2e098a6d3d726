"""`IdentificationEvaluator` and its gallery search against naive float64 loops: within-group search, R, the
open-set and verification parts, and the names it registers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_metric.evaluation.base import EvalPredictions
from hf_metric.evaluation.identification import IdentificationEvaluator, search_gallery
from hf_metric.evaluation.names import identification_metric_names


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    gallery_labels = rng.choice(["oak", "elm", "ash", "fir", "yew", "box"], 60)
    gallery_groups = np.array(["north" if y in ("oak", "elm", "ash") else "south" for y in gallery_labels], object)
    gallery_groups[gallery_labels == "box"] = "east"
    gallery = rng.normal(size=(60, 6))
    query_labels = np.r_[gallery_labels[:25], ["pine", "pine"]]
    query_groups = np.r_[gallery_groups[:25], ["north", "west"]]  # west: no gallery row at all
    query = np.r_[gallery[:25], rng.normal(size=(2, 6))] + 0.5 * rng.normal(size=(27, 6))
    return query, query_labels, query_groups, gallery, gallery_labels, gallery_groups


def naive_search(query, gallery, rows, k):
    q = query / np.linalg.norm(query)
    g = gallery[rows] / np.linalg.norm(gallery[rows], axis=1, keepdims=True)
    s = g.astype(np.float64) @ q
    order = np.lexsort((np.arange(len(rows)), -s))[:k]
    return rows[order], s[order]


@pytest.mark.parametrize("within", [False, True])
def test_search_matches_naive_and_never_leaves_the_group(within):
    query, qy, qg, gallery, gy, gg = data()
    found = search_gallery(query, gallery, gy, qy, (1, 5), qg if within else None, gg if within else None)
    for i in range(len(qy)):
        rows = np.flatnonzero(gg == qg[i]) if within else np.arange(len(gy))
        assert found.relevant[i] == (gy[rows] == qy[i]).sum()
        assert found.candidates[i] == len(set(gy[rows]))
        want_rows, want_scores = naive_search(query[i], gallery, rows, found.labels.shape[1])
        width = len(want_rows)
        np.testing.assert_array_equal(found.indices[i, :width], want_rows)
        np.testing.assert_allclose(found.scores[i, :width], want_scores, atol=1e-5)
        assert all(v is None for v in found.labels[i, width:])
        if within:
            assert set(gg[found.indices[i, :width]]) <= {qg[i]}
    assert found.labels.shape[1] >= max(found.relevant.max(), 5)


def test_metrics_names_open_set_and_verification():
    query, qy, qg, gallery, gy, gg = data(1)
    evaluator = IdentificationEvaluator(within_group=True, impostors=200)
    got = evaluator.evaluate(query, qy, gallery, gy, query_groups=qg, gallery_groups=gg)
    assert got["queries_absent_from_gallery"] == 2 and got["identification_queries"] == 25
    assert "dir@fpir=0.01" in got and "dir@fpir=0.1" in got  # pine is the unknown identity
    assert set(identification_metric_names(groups=True)) <= set(got)
    assert set(evaluator.metric_names(groups=True)) == set(identification_metric_names(groups=True))
    by_candidates = evaluator.details["by_candidates"]  # north: 3 trees, south: 2, east: 1 (no decision)
    assert sorted(by_candidates) == [1, 2, 3]
    assert got["precision_at_1_candidates_3-5"] == by_candidates[3][0]
    assert got["precision_at_1_candidates_2"] == by_candidates[2][0]
    plain = IdentificationEvaluator(verification=False).evaluate(query, qy, gallery, gy)
    assert "eer" not in plain and "group_precision_at_1_min" not in plain and "precision_at_1" in plain


def test_errors():
    query, qy, _, gallery, gy, _ = data()
    with pytest.raises(ValueError, match="within_group"):
        IdentificationEvaluator(within_group=True).evaluate(query, qy, gallery, gy)
    with pytest.raises(ValueError, match="queries and a gallery"):
        IdentificationEvaluator().evaluate(query[:0], qy[:0], gallery, gy)


def test_as_a_validation_evaluator_the_bank_is_the_gallery():
    query, qy, qg, gallery, gy, _ = data(2)
    codes = {name: i for i, name in enumerate(sorted(set(gy) | {"pine"}))}
    labels = np.array([codes[y] for y in qy])
    labels[3] = -1  # an out-of-scope row: not a query
    metric_rows = np.ones(len(labels), bool)
    metric_rows[4] = False
    predictions = EvalPredictions(
        logits=np.zeros((len(labels), 2)),
        embeddings=query,
        labels=labels,
        classifier_rows=np.ones(len(labels), bool),
        metric_rows=metric_rows,
        groups=qg,
    )
    bank = (torch.from_numpy(gallery).float(), np.array([codes[y] for y in gy]))
    evaluator = IdentificationEvaluator(within_group=True, impostors=100)
    got = evaluator(predictions, bank)
    keep = (labels >= 0) & metric_rows
    group_of = dict(zip(labels[keep].tolist(), qg[keep].tolist(), strict=True))
    gallery_groups = [group_of.get(y) for y in bank[1].tolist()]
    want = IdentificationEvaluator(within_group=True, impostors=100).evaluate(
        query[keep], labels[keep], gallery, bank[1], query_groups=qg[keep], gallery_groups=gallery_groups
    )
    assert got == pytest.approx(want, nan_ok=True)
    assert evaluator(predictions, None) == {}


def test_registered_names_are_valid_save_best_by(tmp_path, tiny_model_dir):
    from conftest import tiny_config

    from hf_metric.errors import ConfigError
    from hf_metric.loading import config_from_dict

    def config(best: str, **options):
        raw = tiny_config(tiny_model_dir, tmp_path / "d.parquet", tmp_path / "ckpt")
        raw["metric_validation"] = {"evaluators": [{"type": "identification", **options}]}
        raw["checkpointing"]["save_best_by"] = best
        return config_from_dict(raw)

    for name in ("map_at_r", "precision_at_1", "cmc@5", "eer", "tar@far=0.001", "dir@fpir=0.1", "mrr"):
        config(name)
    config("cmc@20", ks=[1, 20])
    config("eer_same_group", within_group=True)
    with pytest.raises(ConfigError, match="save_best_by"):
        config("cmc@20")


@pytest.mark.slow
def test_validation_during_training_reports_and_chooses_by_map_at_r(tmp_path, tiny_model_dir):
    import json

    from conftest import synthetic_rows, tiny_config, write_parquet

    from hf_metric.loading import config_from_dict
    from hf_metric.run import train

    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    raw = tiny_config(tiny_model_dir, data, tmp_path / "ckpt")
    raw["metric_validation"] = {"plots": False, "evaluators": [{"type": "identification", "impostors": 500}]}
    raw["scheduler"] = {"num_training_steps": 4, "warmup_steps": 0}
    raw["checkpointing"]["save_best_by"] = "map_at_r"
    train(config_from_dict(raw))
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_map_at_r"] <= 1.0 and 0.0 <= metrics["eval_eer"] <= 1.0


def grouped_search_data():
    """Unit axis vectors (exact ties: duplicates score exactly 1, the rest exactly 0) and random rows; gallery
    groups with a null (None and NaN), group "c" with one row; queries with null groups and a group, "west",
    that has no gallery row."""
    rng = np.random.default_rng(7)
    dim = 6
    gallery = np.r_[np.eye(dim)[np.arange(12) % dim], rng.normal(size=(20, dim))]
    gallery_labels = np.array([f"id{i}" for i in rng.integers(0, 5, len(gallery))], dtype=object)
    gallery_groups = np.array(["a", "b"] * 16, dtype=object)
    gallery_groups[[3, 17]] = None
    gallery_groups[[8, 25]] = float("nan")
    gallery_groups[30] = "c"
    query = np.r_[np.eye(dim), rng.normal(size=(12, dim))]
    query_labels = np.array([f"id{i}" for i in rng.integers(0, 6, len(query))], dtype=object)  # id5: unknown
    query_groups = np.array(["a", "b", None, float("nan"), "c", "west"] * 3, dtype=object)
    return query, query_labels, query_groups, gallery, gallery_labels, gallery_groups


def naive_candidates(query_group, gallery_groups) -> tuple[np.ndarray, str]:
    """The documented rule: a null query group sees every gallery row, a group only its own (null rows never)."""
    null = query_group is None or query_group != query_group
    if null:
        return np.arange(len(gallery_groups)), "no_group"
    rows = np.array([i for i, g in enumerate(gallery_groups) if isinstance(g, str) and g == query_group], int)
    return rows, "ok" if len(rows) else "no_candidates"


def test_evaluation_and_inference_search_the_same_candidates_with_nulls_empty_groups_and_ties():
    from hf_metric.inference.gallery import Gallery
    from hf_metric.inference.gallery_calibration import enrolled

    query, qy, qg, gallery, gy, gg = grouped_search_data()
    k = 4  # more than group "c" has rows
    served = Gallery(gallery, gy.tolist(), gg.tolist()).search(query, k, qg.tolist())
    found = search_gallery(query, gallery, gy, qy, (1, k), qg, gg)
    width = found.labels.shape[1]
    assert width >= k
    for i in range(len(qy)):
        rows, status = naive_candidates(qg[i], gg)
        assert served.status[i] == found.status[i] == status
        assert found.relevant[i] == (gy[rows] == qy[i]).sum()
        assert found.candidates[i] == len(set(gy[rows]))
        want_rows, want_scores = naive_search(query[i], gallery, rows, width) if len(rows) else ([], [])
        for result, kept in ((found, width), (served, k)):
            n = min(kept, len(want_rows))
            np.testing.assert_array_equal(result.indices[i], np.r_[want_rows[:n], [-1] * (kept - n)])
            np.testing.assert_allclose(result.scores[i], np.r_[want_scores[:n], [np.nan] * (kept - n)], atol=1e-6)
            assert result.labels[i].tolist() == gy[want_rows[:n]].tolist() + [None] * (kept - n)
    np.testing.assert_array_equal(enrolled(Gallery(gallery, gy.tolist(), gg.tolist()), qy, qg), found.relevant > 0)
    got = IdentificationEvaluator(ks=(1, k), within_group=True, verification=False).evaluate(
        query, qy, gallery, gy, query_groups=qg, gallery_groups=gg
    )
    known = found.relevant > 0
    assert got["precision_at_1"] == pytest.approx((served.top_label == qy)[known].mean())
    assert got["queries_absent_from_gallery"] == (~known).sum() > 0
