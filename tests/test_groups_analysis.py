"""The error analysis by group (`hf_metric.evaluation.groups`) against naive float64 loops on random data."""

import math

import numpy as np
import pytest

from hf_metric.data.groups import class_group_names
from hf_metric.evaluation.evaluator import EvalPredictions, MetricEvaluator
from hf_metric.evaluation.groups import analysis_markdown, group_analysis

SIZES = {"a": 2, "b": 4, "c": 8, "d": 12}  # one group per candidate bucket, plus 2 classes without a group


def _random_case(seed):
    rng = np.random.default_rng(seed)
    group_of = [g for g, n in SIZES.items() for _ in range(n)] + [None, None]
    num_classes = len(group_of)
    labels = rng.integers(0, num_classes, size=400)
    logits = rng.normal(size=(400, num_classes))
    logits[np.arange(400), labels] += rng.normal(1.5, 1.0, size=400)  # mostly right, often not
    logits[labels == 3, 3] = -10.0  # class 3 always fails
    logits[:5, :] = np.round(logits[:5, :])  # a few ties
    return logits, labels, np.array(group_of, dtype=object)


def _naive(logits, labels, group_of, min_rows=5, threshold=0.005, worst=10):
    n, c = len(logits), len(logits[0])
    pred = [max(range(c), key=lambda j: (logits[i][j], -j)) for i in range(n)]
    members = {g: [j for j in range(c) if group_of[j] == g] for g in set(group_of) if g is not None}
    out = {}
    buckets = {"2": (2, 2), "3-5": (3, 5), "6-10": (6, 10), "11+": (11, math.inf), "all": (2, math.inf)}
    for name, (low, high) in buckets.items():
        right = total = 0
        for i in range(n):
            g = group_of[labels[i]]
            if g is None or not low <= len(members[g]) <= high:
                continue
            best = max(members[g], key=lambda j: (logits[i][j], -j))
            total += 1
            right += best == labels[i]
        if total:
            out["within_group_accuracy" if name == "all" else f"within_group_accuracy_{name}"] = right / total
    acc, errs = {}, {}
    for g in members:
        rows = [i for i in range(n) if group_of[labels[i]] == g]
        acc[g] = sum(pred[i] == labels[i] for i in rows) / len(rows)
        errs[g] = sum(pred[i] != labels[i] for i in rows)
    out["group_accuracy_min"] = min(acc.values())
    out["group_accuracy_macro"] = sum(acc.values()) / len(acc)
    wrong = [i for i in range(n) if pred[i] != labels[i]]
    out[f"worst{worst}_groups_error_share"] = sum(sorted(errs.values(), reverse=True)[:worst]) / len(wrong)
    same = [i for i in wrong if group_of[labels[i]] is not None and group_of[labels[i]] == group_of[pred[i]]]
    out["within_group_error_share"] = len(same) / len(wrong)
    rows_of = {k: [i for i in range(n) if labels[i] == k] for k in range(c)}
    failing = [k for k in range(c) if len(rows_of[k]) >= min_rows and all(pred[i] != k for i in rows_of[k])]
    out["always_failing_classes"] = len(failing)
    ranks = [1 + sum(logits[i][j] > logits[i][labels[i]] for j in range(c)) for i in wrong]
    out["error_rank2_share"] = sum(r == 2 for r in ranks) / len(wrong)
    small = 0
    for i in wrong:
        e = [math.exp(x) for x in logits[i]]
        p = sorted(v / sum(e) for v in e)
        small += p[-1] - p[-2] < threshold
    out[f"error_margin_below_{threshold:g}_share"] = small / len(wrong)
    pairs = {}
    for i in wrong:
        key = (min(labels[i], pred[i]), max(labels[i], pred[i]))
        pairs[key] = pairs.get(key, 0) + 1
    return out, failing, pairs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_number_matches_a_naive_implementation(seed):
    logits, labels, group_of = _random_case(seed)
    got = group_analysis(logits, labels, group_of, min_rows=5, margin_threshold=0.005)
    expected, failing, pairs = _naive(logits.tolist(), labels.tolist(), list(group_of))
    assert got.metrics.keys() == expected.keys()
    for key, value in expected.items():
        assert got.metrics[key] == pytest.approx(value, abs=1e-12), key
    assert got.failing_classes == failing and 3 in failing
    top = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    assert [(a, b, n) for a, b, n, _ in got.pairs] == [(a, b, n) for (a, b), n in top]
    assert all(same == (group_of[a] is not None and group_of[a] == group_of[b]) for a, b, _, same in got.pairs)
    assert got.group_errors == pytest.approx({g: 1 - a for g, (a, _, _) in got.per_group.items()})


def test_a_perfect_model_has_no_error_shares():
    labels = np.arange(10).repeat(3)
    logits = np.eye(10)[labels] * 5
    got = group_analysis(logits, labels, np.array(["x"] * 5 + ["y"] * 5, dtype=object))
    assert got.metrics["within_group_accuracy"] == 1.0 and got.metrics["within_group_error_share"] == 0.0
    assert got.metrics["error_rank2_share"] == 0.0 and got.failing_classes == []


def test_class_groups_from_sets_take_the_first_name():
    names = class_group_names({0: {"b", "a"}, 1: set(), 2: {"c"}}, 4)
    assert names.tolist() == ["a", None, "c", None]


def test_the_evaluator_adds_the_analysis_and_its_picture(tmp_path):
    from hf_metric.evaluation.evaluator import PlotSettings

    logits, labels, group_of = _random_case(0)
    class_groups = {c: {g} for c, g in enumerate(group_of) if g is not None}
    evaluator = MetricEvaluator(plots=PlotSettings(str(tmp_path)), class_groups=class_groups)
    ce = np.ones(len(labels), bool)
    ce[:50] = False  # rows outside the classifier mask are not analysed
    result = evaluator(EvalPredictions(logits, None, labels, ce, ce), plot_tag="t")
    expected = group_analysis(logits[50:], labels[50:], group_of)
    assert {k: result.metrics[k] for k in expected.metrics} == expected.metrics
    assert set(evaluator.metric_names()) >= {"within_group_accuracy", "group_accuracy_min"}
    assert (tmp_path / "top2_margin_histogram_t.png").stat().st_size > 0
    text = analysis_markdown(result.group_analysis, {i: f"class{i}" for i in range(len(group_of))})
    assert "class3" in text and "## Errors by group" in text
