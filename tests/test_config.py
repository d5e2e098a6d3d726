import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from hf_metric.cli import main
from hf_metric.config import TrainConfig
from hf_metric.errors import ConfigError
from hf_metric.loading import config_from_dict, load_config
from hf_metric.training.arguments import build_training_arguments

EXAMPLE = Path(__file__).resolve().parents[1] / "configs" / "metric_classifier_training.example.yaml"
BASE = {"data": {"parquet_path": "x.parquet"}}


def _with(section: str, **values) -> dict:
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in BASE.items()}
    raw.setdefault(section, {}).update(values)
    return raw


def test_example_config_holds_every_key_with_a_comment():
    text = EXAMPLE.read_text()
    raw = yaml.safe_load(text)
    cfg = load_config(EXAMPLE)
    for section in dataclasses.fields(TrainConfig):
        value = getattr(cfg, section.name)
        if dataclasses.is_dataclass(value):
            missing = {f.name for f in dataclasses.fields(value) if f.name != "options"} - set(raw[section.name])
            assert not missing, f"{section.name} lacks {missing}"
            for key in raw[section.name]:
                line = next(line for line in text.splitlines() if re.match(rf"\s+{key}:", line))
                assert "#" in line, f"{section.name}.{key} has no comment"
        else:
            assert section.name in raw


@pytest.mark.parametrize(
    ("raw", "pattern"),
    [
        (_with("training", batch_sise=8), r"training\.batch_sise: unknown key \(did you mean training\.batch_size\?\)"),
        (_with("training", batch_size="eight"), r"training\.batch_size: expected an integer"),
        (_with("training", batch_size=True), r"training\.batch_size: expected an integer"),
        (_with("data", val_ratio=0.0), r"data\.val_ratio: must be in \(0, 1\)"),
        (_with("data", val_ratio=1.5), r"data\.val_ratio: must be in \(0, 1\)"),
        (_with("training", classification_loss_weight=-1), r"loss\.classification\.weight: must be >= 0"),
        (_with("training", metric_loss_weight=-0.5), r"loss\.metric\.weight: must be >= 0"),
        (_with("loss", metric={"weight": -0.5}), r"loss\.metric\.weight: must be >= 0"),
        (
            _with("training", metric_loss_weight=0, classification_loss_weight=0),
            r"loss\.metric\.weight: .*both 0",
        ),
        (
            _with("loss", metric={"temprature": 0.1}),
            r"loss\.metric\.temprature: unknown key \(did you mean loss\.metric\.temperature\?\)",
        ),
        (_with("loss", metric={"temperature": 0}), r"loss\.metric: temperature must be > 0"),
        (_with("loss", metric={"type": "npair"}), r"loss\.metric\.type: unknown metric loss 'npair'"),
        (
            _with("loss", classification={"gamma": "two", "type": "focal"}),
            r"loss\.classification\.gamma: expected a number",
        ),
        (
            _with("checkpointing", save_best_by="recall"),
            r"checkpointing\.save_best_by: must be loss, acc, f1 or a logged",
        ),
        (_with("checkpointing", save_best_by="recall@7"), r"checkpointing\.save_best_by: must be loss"),
        (_with("training", mixed_precision="fp8"), r"training\.mixed_precision: must be one of"),
        (_with("metric_validation", distance="manhattan"), r"metric_validation\.distance: must be one of"),
        (_with("metric_validation", recall_at_k=5), r"metric_validation\.recall_at_k: expected a list"),
        (_with("training", batch_size=30, samples_per_class=4), r"training\.batch_size: \(30\) must be a multiple"),
        (_with("scheduler", name="wobbly"), r"scheduler\.name: must be one of"),
        (_with("neptune", mode="async"), r"neptune\.project: is required"),
        (_with("neptune", api_token="secret"), r"neptune\.api_token: unknown key"),
        ({"data": {}}, r"data\.parquet_path: is required"),
        ({"data": {"parquet_path": "x"}, "extra": 1}, r"extra: unknown key"),
    ],
)
def test_bad_values_name_the_key(raw, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        config_from_dict(raw)
    assert "\n" not in str(info.value)


def test_numbers_written_as_yaml_strings_are_accepted():
    cfg = config_from_dict(_with("optimizer", learning_rate="1e-4"))
    assert cfg.optimizer.learning_rate == pytest.approx(1e-4)


def test_legacy_spelling_is_accepted_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="save_every_n_bathces is deprecated"):
        cfg = config_from_dict(_with("checkpointing", save_every_n_bathces=7))
    assert cfg.checkpointing.save_every_n_batches == 7
    with pytest.raises(ConfigError, match="legacy spelling"):
        config_from_dict(_with("checkpointing", save_every_n_bathces=7, save_every_n_batches=7))


def test_training_arguments_follow_the_config():
    cfg = config_from_dict(
        {
            "data": {"parquet_path": "x"},
            "training": {"batch_size": 16, "gradient_accumulation_steps": 2, "gradient_clip_val": None},
            "scheduler": {"name": "cosine", "warmup_steps": 0.1, "num_cycles": 0.5},
            "checkpointing": {"save_every_n_batches": 5, "save_best_by": "acc", "checkpoints_dir": "/tmp/x"},
        }
    )
    args = build_training_arguments(cfg)
    assert args.per_device_train_batch_size == 16 and args.gradient_accumulation_steps == 2
    assert args.max_grad_norm == 0.0
    assert args.warmup_steps == pytest.approx(0.1)
    assert args.save_steps == 5 and args.eval_steps == 5
    assert args.metric_for_best_model == "eval_accuracy" and args.greater_is_better
    assert args.lr_scheduler_kwargs == {"num_cycles": 0.5}


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  parquet_path: x\n  val_ratio: 2\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(path) in err and "data.val_ratio" in err
    assert "\n" not in err and "Traceback" not in err


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(
    ("head", "pattern"),
    [
        ({"type": "linear", "scale": 30}, r"head\.scale: has no meaning for head\.type 'linear'"),
        ({"type": "cosine", "margin": 0.2}, r"head\.margin: has no meaning"),
        ({"type": "cosface", "easy_margin": True}, r"head\.easy_margin: applies to arcface"),
        ({"type": "linear", "group_margin": {"same": 0.7}}, r"head\.group_margin: needs a margin head"),
        ({"type": "arcface", "group_margin": {"same": 0.7, "dflt": 1}}, r"head\.group_margin\.dflt: unknown key"),
        ({"type": "ringface"}, r"head\.type: unknown head type 'ringface'"),
        ({"type": "cosine", "scael": 30}, r"head\.scael: unknown key \(did you mean head\.scale\?\)"),
        ({"temperature": 0}, r"head\.temperature: must be > 0"),
    ],
)
def test_bad_head_settings_name_the_key(head, pattern):
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict({**BASE, "head": head})


def test_head_kwargs_map_yaml_names_onto_each_head():
    circle = config_from_dict({**BASE, "head": {"type": "circle", "scale": 80, "margin": 0.3}})
    assert circle.head.head_kwargs() == {"temperature": 1.0, "gamma": 80.0, "m": 0.3}
    arc = config_from_dict({**BASE, "head": {"type": "arcface", "margin": 0.2, "easy_margin": True}})
    assert arc.head.head_kwargs() == {"temperature": 1.0, "margin": 0.2, "easy_margin": True}
    focal = config_from_dict({**BASE, "training": {"classification_loss": "focal", "focal_alpha": [0.2, 0.8]}})
    assert focal.loss.classification.type == "focal"
    assert focal.loss.classification.options == {"gamma": 2.0, "alpha": [0.2, 0.8]}


@pytest.mark.parametrize(
    ("name", "metric", "greater"),
    [
        ("loss", "eval_loss", False),
        ("f1", "eval_f1", True),
        ("knn_f1", "eval_knn_f1", True),
        ("recall@5", "eval_recall@5", True),
        ("eval_ce_loss", "eval_ce_loss", False),
    ],
)
def test_save_best_by_accepts_any_logged_metric(name, metric, greater):
    cfg = config_from_dict(_with("checkpointing", save_best_by=name))
    assert cfg.metric_for_best_model == metric and cfg.greater_is_better is greater


def test_component_options_reach_the_bases_a_class_hands_kwargs_to(monkeypatch):
    """A registered class that declares only its own arguments and passes `**kwargs` on (as the margin heads do)
    is checked against its bases' arguments too; only its own defaults are filled in (the base keeps its own)."""
    from hf_metric.model.losses import METRIC_LOSSES, SupConLoss

    class WarmSupCon(SupConLoss):
        def __init__(self, warmup: int = 10, **kwargs) -> None:
            super().__init__(**kwargs)
            self.warmup = warmup

    monkeypatch.setitem(METRIC_LOSSES, "warm_supcon", WarmSupCon)
    cfg = config_from_dict({**BASE, "loss": {"metric": {"type": "warm_supcon", "temperature": "0.2"}}})
    assert cfg.loss.metric.options == {"temperature": 0.2, "warmup": 10}
    with pytest.raises(
        ConfigError, match=r"loss\.metric\.temperatur: unknown key \(did you mean loss\.metric\.temperature\?\)"
    ):
        config_from_dict({**BASE, "loss": {"metric": {"type": "warm_supcon", "temperatur": 0.2}}})
    with pytest.raises(ConfigError, match=r"loss\.metric\.temperature: expected a number"):
        config_from_dict({**BASE, "loss": {"metric": {"type": "warm_supcon", "temperature": "hot"}}})
    circle = config_from_dict({**BASE, "head": {"type": "circle", "gamma": 80}})
    assert circle.head.options == {"gamma": 80.0, "m": 0.25}
    assert circle.head.head_kwargs()["gamma"] == 80.0


def test_bf16_arguments_build_without_a_gpu():
    """`training.mixed_precision: bf16` is documented for CPUs too: TrainingArguments must not refuse it there."""
    import torch

    cfg = config_from_dict({"data": {"parquet_path": "x"}, "training": {"mixed_precision": "bf16"}})
    args = build_training_arguments(cfg)
    assert args.bf16
    if not torch.cuda.is_available():
        assert args.use_cpu
