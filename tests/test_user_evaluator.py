"""A user's evaluator, defined in a module outside the package and named in YAML, runs at every validation and
can choose the best checkpoint; the built-in evaluators compose the same way."""

import json

import numpy as np
import pytest
import yaml
from conftest import synthetic_run_config
from sklearn.metrics import f1_score

import hf_metric
from hf_metric.cli import main
from hf_metric.errors import ConfigError
from hf_metric.evaluation.base import EvalPredictions, Evaluator, SequentialEvaluator
from hf_metric.loading import config_from_dict

USER_MODULE = '''
import numpy as np

import hf_metric


@hf_metric.register_evaluator("worst_class_f1")
class WorstClassF1(hf_metric.Evaluator):
    """The F1 of the worst class: a long-tailed run can be chosen by its weakest class."""

    def __init__(self, calls_file: str = ""):
        self.calls_file = calls_file

    def metric_names(self):
        return ("worst_class_f1",)

    def __call__(self, predictions, reference=None):
        rows = predictions.classifier_rows
        y, pred = predictions.labels[rows], predictions.logits[rows].argmax(-1)
        f1 = []
        for c in np.unique(y):
            tp = np.sum((pred == c) & (y == c))
            f1.append(2 * tp / max(np.sum(pred == c) + np.sum(y == c), 1))
        if self.calls_file:
            with open(self.calls_file, "a") as f:
                f.write(f"{min(f1)}\\n")
        return {"worst_class_f1": float(min(f1))}
'''


@pytest.fixture
def user_module(install_user_module):
    yield install_user_module("my_evaluators", USER_MODULE)
    hf_metric.EVALUATORS.pop("worst_class_f1", None)


_raw = synthetic_run_config


def test_a_user_evaluator_runs_during_validation_and_chooses_the_best_checkpoint(tmp_path, tiny_model_dir, user_module):
    calls = tmp_path / "calls.txt"
    raw = _raw(
        tmp_path,
        tiny_model_dir,
        imports=[user_module],
        metric_validation={"plots": False, "evaluators": [{"type": "worst_class_f1", "calls_file": str(calls)}]},
        scheduler={"num_training_steps": 4, "warmup_steps": 0},
        checkpointing={"checkpoints_dir": str(tmp_path / "ckpt"), "save_best_by": "worst_class_f1"},
    )
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    metrics = json.loads((tmp_path / "ckpt" / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_worst_class_f1"] <= metrics["eval_f1"] + 1e-9
    assert len(calls.read_text().split()) >= 2  # each evaluation during training and the final one
    state = json.loads(next((tmp_path / "ckpt").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] is not None
    assert any("eval_worst_class_f1" in row for row in state["log_history"])


def test_an_unknown_evaluator_and_an_unknown_metric_name_are_one_line_errors(tmp_path, tiny_model_dir, user_module):
    with pytest.raises(ConfigError, match=r"metric_validation\.evaluators\[0\]: unknown evaluator 'nope'"):
        config_from_dict(_raw(tmp_path, tiny_model_dir, metric_validation={"evaluators": ["nope"]}))
    with pytest.raises(ConfigError, match=r"checkpointing\.save_best_by: .*got 'worst_class_f1'"):
        config_from_dict(_raw(tmp_path, tiny_model_dir, checkpointing={"save_best_by": "worst_class_f1"}))
    cfg = config_from_dict(
        _raw(
            tmp_path,
            tiny_model_dir,
            imports=[user_module],
            metric_validation={"evaluators": ["worst_class_f1"]},
            checkpointing={"save_best_by": "worst_class_f1"},
        )
    )
    assert cfg.metric_for_best_model == "eval_worst_class_f1" and cfg.greater_is_better


class _Constant(Evaluator):
    def __init__(self, **numbers):
        self.numbers = numbers

    def metric_names(self):
        return tuple(self.numbers)

    def __call__(self, predictions, reference=None):
        return dict(self.numbers)


def _predictions(n=40, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    every = np.ones(n, bool)
    return EvalPredictions(rng.normal(size=(n, classes)), rng.normal(size=(n, 8)), labels, every, every)


def test_a_sequential_evaluator_merges_in_order_and_refuses_a_name_twice():
    merged = SequentialEvaluator([_Constant(a=1.0), _Constant(b=2.0)])
    assert merged.metric_names() == ("a", "b")
    assert merged(_predictions()) == {"a": 1.0, "b": 2.0}
    with pytest.raises(ValueError, match=r"returns \['a'\]"):
        SequentialEvaluator([_Constant(a=1.0), _Constant(a=2.0)])(_predictions())


def test_the_built_in_classification_evaluator_matches_scikit_learn():
    from hf_metric.evaluation.builtin import ClassificationEvaluator

    p = _predictions(seed=3)
    out = ClassificationEvaluator()(p)
    pred = p.logits.argmax(-1)
    assert out["accuracy"] == pytest.approx(float(np.mean(pred == p.labels)))
    assert out["f1"] == pytest.approx(f1_score(p.labels, pred, average="macro"))
