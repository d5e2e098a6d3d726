"""The identification pictures: drawn from an `IdentificationEvaluator` call and saved; the CMC curve's numbers."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from hf_metric.evaluation.identification import IdentificationEvaluator
from hf_metric.evaluation.identification_plots import (
    IDENTIFICATION_PLOT_NAMES,
    cmc_curve,
    cmc_plot,
    identification_plots,
    roc_det_plot,
    score_histogram,
)


def test_cmc_curve_matches_naive_loop():
    qy = np.array([1, 2, 3, 9])
    ranked = np.array([[2, 1, 1], [2, 3, 1], [1, 2, None], [1, 2, 3]], dtype=object)
    relevant = np.array([2, 1, 1, 0])  # label 9 is absent: left out
    want = [np.mean([qy[i] in ranked[i, :k].tolist() for i in range(3)]) for k in (1, 2, 3)]
    np.testing.assert_allclose(cmc_curve(qy, ranked, relevant), want)
    assert len(cmc_curve([9], [[1]], [0])) == 0


def test_figures_with_perfect_separation_and_ties():
    same = np.array([True] * 5 + [False] * 20)
    scores = np.r_[np.full(5, 0.9), np.full(20, 0.1)]
    for fig in (roc_det_plot(scores, same), score_histogram(scores, same, threshold=0.5), cmc_plot({"a": [1.0]})):
        assert isinstance(fig, Figure)


def test_evaluator_details_are_drawn_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8))
    gallery_labels = np.repeat(np.arange(6), 5)
    gallery = centres[gallery_labels] + 0.3 * rng.normal(size=(30, 8))
    query_labels = np.r_[np.repeat(np.arange(6), 3), [7, 7]]
    query = np.r_[centres[query_labels[:18]], rng.normal(size=(2, 8))] + 0.3 * rng.normal(size=(20, 8))
    groups = query_labels % 2
    evaluator = IdentificationEvaluator(impostors=50)
    evaluator.evaluate(
        query, query_labels, gallery, gallery_labels, query_groups=groups, gallery_groups=gallery_labels % 2
    )
    paths = identification_plots(str(tmp_path), "step5", evaluator.details, query_labels)
    assert sorted(paths) == sorted(IDENTIFICATION_PLOT_NAMES)
    assert all((tmp_path / f"{name}_step5.png").stat().st_size > 1000 for name in paths)
