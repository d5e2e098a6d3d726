"""Verification metrics against scikit-learn's roc_curve / roc_auc_score, and the pair sampler's guarantees.

Scores are rounded to 2 decimals so that genuine and impostor pairs tie often (ties are where ROC conventions
differ)."""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import roc_auc_score, roc_curve

from hf_metric.evaluation.verification import (
    pair_scores,
    roc_points,
    sample_pairs,
    threshold_at_far,
    verification_metrics,
)


def scored_pairs(seed: int, n: int = 3000, genuine_share: float = 0.2):
    rng = np.random.default_rng(seed)
    same = rng.random(n) < genuine_share
    scores = np.round(np.where(same, rng.normal(0.7, 0.15, n), rng.normal(0.3, 0.15, n)), 2)
    return scores, same


def sklearn_eer(scores, same) -> float:
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    return brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_sklearn_with_ties(seed):
    scores, same = scored_pairs(seed)
    got = verification_metrics(scores, same, fars=(1e-3, 1e-2, 0.1))
    assert got["verification_auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    assert got["eer"] == pytest.approx(sklearn_eer(scores, same), abs=1e-9)
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    for f in (1e-3, 1e-2, 0.1):
        best = np.flatnonzero(fpr <= f)[-1]  # the lowest threshold within the FAR budget: the highest TAR
        assert got[f"tar@far={f:g}"] == pytest.approx(tpr[best], abs=1e-12)
        want = thresholds[best] if np.isfinite(thresholds[best]) else np.nextafter(scores.max(), np.inf)
        assert got[f"threshold@far={f:g}"] == want
        assert threshold_at_far(scores, same, f) == want
    far, tar, _ = roc_points(scores, same)
    np.testing.assert_allclose(far, fpr, atol=1e-12)
    np.testing.assert_allclose(tar, tpr, atol=1e-12)
    # The EER threshold: the first ROC point (highest threshold) with FAR >= FRR.
    first = np.flatnonzero(fpr >= 1 - tpr)[0]
    assert got["eer_threshold"] == thresholds[first]
    assert got["genuine_pairs"] == same.sum() and got["impostor_pairs"] == (~same).sum()


def test_perfect_and_reversed_separation():
    same = np.array([True, True, False, False, False])
    perfect = verification_metrics([0.9, 0.8, 0.1, 0.2, 0.3], same)
    assert perfect["verification_auc"] == 1.0 and perfect["eer"] == 0.0 and perfect["tar@far=0.001"] == 1.0
    assert perfect["threshold@far=0.001"] == 0.8
    reversed_ = verification_metrics([0.1, 0.2, 0.9, 0.8, 0.7], same)
    assert reversed_["verification_auc"] == 0.0 and reversed_["eer"] == 1.0 and reversed_["tar@far=0.01"] == 0.0
    assert reversed_["threshold@far=0.01"] > 0.9  # reject everything


def test_errors():
    with pytest.raises(ValueError, match="genuine and impostor"):
        verification_metrics([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="genuine and impostor"):
        verification_metrics([], [])
    with pytest.raises(ValueError, match="finite"):
        verification_metrics([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="one length"):
        verification_metrics([0.1, 0.2], [True])


def all_pairs(labels, groups=None):
    out = {"genuine": set(), "impostor_random": set(), "impostor_same_group": set()}
    for i, j in combinations(range(len(labels)), 2):
        if labels[i] == labels[j]:
            out["genuine"].add((i, j))
        else:
            out["impostor_random"].add((i, j))
            if groups is not None and groups[i] is not None and groups[i] == groups[j]:
                out["impostor_same_group"].add((i, j))
    return out


def as_sets(pairs):
    out = {}
    for kind in ("genuine", "impostor_random", "impostor_same_group"):
        sel = pairs.kind == kind
        out[kind] = set(zip(pairs.i[sel].tolist(), pairs.j[sel].tolist(), strict=True))
        assert len(out[kind]) == sel.sum(), f"duplicate {kind} pairs"
    return out


def test_exhaustive_when_asking_for_more_than_exist_string_labels_and_ungrouped_rows():
    rng = np.random.default_rng(0)
    labels = rng.choice(["oak", "elm", "ash", "fir", "yew"], 30).tolist()
    groups = [None if i % 7 == 0 else ("a" if i % 2 else "b") for i in range(30)]
    got = as_sets(sample_pairs(labels, groups, genuine_per_label=None, impostors=10_000))
    assert got == all_pairs(labels, groups)
    pairs = sample_pairs(labels, groups, genuine_per_label=None, impostors=10_000)
    assert (pairs.same == np.array([labels[i] == labels[j] for i, j in zip(pairs.i, pairs.j, strict=True)])).all()
    assert (pairs.same == (pairs.kind == "genuine")).all()


@pytest.mark.parametrize("impostors", [5, 40, 150])  # sparse draws, the dense listing, and all of them
def test_limits_reproducibility_and_validity(impostors):
    rng = np.random.default_rng(1)
    labels, groups = rng.integers(0, 6, 40), rng.integers(0, 3, 40)
    a = sample_pairs(labels, groups, genuine_per_label=4, impostors=impostors, seed=3)
    b = sample_pairs(labels, groups, genuine_per_label=4, impostors=impostors, seed=3)
    assert all((x == y).all() for x, y in zip((a.i, a.j, a.kind), (b.i, b.j, b.kind), strict=True))
    sets, universe = as_sets(a), all_pairs(labels.tolist(), groups.tolist())
    for kind, chosen in sets.items():
        assert chosen <= universe[kind]
        if kind != "genuine":
            assert len(chosen) == min(impostors, len(universe[kind]))
    assert (a.i < a.j).all()
    per_label = Counter(labels[a.i[a.kind == "genuine"]].tolist())
    assert all(per_label[c] == min(4, m * (m - 1) // 2) for c, m in Counter(labels.tolist()).items() if m > 1)
    c = sample_pairs(labels, groups, genuine_per_label=4, impostors=impostors, seed=4)
    assert impostors == 150 or not np.array_equal(a.i, c.i) or not np.array_equal(a.j, c.j)
    assert len(a.select("genuine", "impostor_same_group")) == len(sets["genuine"]) + len(sets["impostor_same_group"])


def test_impostors_are_uniform_over_pairs():
    """Every impostor pair is equally likely, however unequal the classes (a biased sampler would favour pairs
    with rows of small classes)."""
    labels = np.array([0] * 8 + [1] * 2 + [2])
    counts = Counter()
    for seed in range(1500):
        p = sample_pairs(labels, genuine_per_label=0, impostors=3, seed=seed)
        counts.update(zip(p.i.tolist(), p.j.tolist(), strict=True))
    universe = all_pairs(labels.tolist())["impostor_random"]
    assert set(counts) == universe
    expected = 1500 * 3 / len(universe)
    assert all(abs(n - expected) < 0.25 * expected for n in counts.values())


def test_pair_scores_are_cosines():
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(20, 5))
    pairs = sample_pairs(rng.integers(0, 3, 20), impostors=30)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    want = [unit[i] @ unit[j] for i, j in zip(pairs.i, pairs.j, strict=True)]
    np.testing.assert_allclose(pair_scores(emb, pairs, chunk_size=7), want, atol=1e-6)
