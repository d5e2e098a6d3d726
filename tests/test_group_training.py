"""`training.sampler: group_pk` with the hard-group curriculum, end to end on the tiny model: the error analysis in
metrics.json / report.md, the curriculum in the checkpoints, and a resumed run identical to the uninterrupted one."""

import json
import os
import shutil

import numpy as np
import pytest
import yaml
from conftest import synthetic_rows, write_parquet

from hf_metric.errors import ConfigError
from hf_metric.loading import load_config
from hf_metric.run import train
from hf_metric.training.curriculum import CURRICULUM_FILE

GROUPS = {"billing": "money", "card": "money", "delivery": "service", "account": "service"}


def _grouped_rows(per_class=10):
    rows = synthetic_rows(per_class)
    for row in rows:
        row["group"] = GROUPS[row["label"]]
    return rows


def _losses(path):
    state = json.loads(path.read_text())
    return {h["step"]: (h["loss"], h["ce_loss"], h["supcon_loss"]) for h in state["log_history"] if "loss" in h}


@pytest.fixture
def grouped_config(tmp_path, make_config):
    data = write_parquet(tmp_path / "g.parquet", _grouped_rows())
    return make_config(
        data,
        training={
            "sampler": "group_pk",
            "groups_per_batch": 1,
            "group_mix": 0.5,
            "hard_group_mining": {"start_epoch": 1, "max_oversample": 2.0},
            "logging_steps": 1,
            "num_epochs": 3,
        },
        checkpointing={"save_every_n_batches": 4, "save_total_limit": 10},
    )


def test_group_run_reports_the_analysis_and_resumes_identically(tmp_path, grouped_config):
    full = load_config(grouped_config)
    train(full)
    out = tmp_path / "ckpt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_within_group_accuracy"] <= 1.0 and "eval_hard_groups_active" in metrics
    assert "## Errors by group" in (out / "report.md").read_text()
    assert set(json.loads((out / "group_analysis.json").read_text())["per_group"]) == {"money", "service"}
    steps = sorted(int(d.split("-")[1]) for d in os.listdir(out) if d.startswith("checkpoint-"))
    saved = json.loads((out / f"checkpoint-{steps[0]}" / CURRICULUM_FILE).read_text())
    assert set(saved["errors"]) == {"money", "service"}

    resumed = tmp_path / "resumed"
    shutil.copytree(out / f"checkpoint-{steps[0]}", resumed / f"checkpoint-{steps[0]}")
    raw = yaml.safe_load(grouped_config.read_text())
    raw["checkpointing"]["checkpoints_dir"] = str(resumed)
    raw["training"]["resume_from"] = "latest"
    grouped_config.write_text(yaml.safe_dump(raw))
    train(load_config(grouped_config))
    last = f"checkpoint-{steps[-1]}"
    expected, got = _losses(out / last / "trainer_state.json"), _losses(resumed / last / "trainer_state.json")
    after = [s for s in expected if s > steps[0]]
    assert after and all(np.allclose(got[s], expected[s], rtol=1e-4, atol=1e-5) for s in after)
    a = json.loads((out / last / CURRICULUM_FILE).read_text())
    b = json.loads((resumed / last / CURRICULUM_FILE).read_text())
    assert a == b


def test_group_pk_without_a_group_column_is_a_config_error(tmp_path, make_config):
    data = write_parquet(tmp_path / "d.parquet", synthetic_rows(10))
    with pytest.raises(ConfigError, match="group"):
        train(load_config(make_config(data, training={"sampler": "group_pk"})))


def test_hard_group_mining_needs_the_group_sampler(tmp_path, make_config):
    data = write_parquet(tmp_path / "d.parquet", _grouped_rows())
    with pytest.raises(ConfigError, match="group_pk"):
        load_config(make_config(data, training={"hard_group_mining": {"start_epoch": 1}}))


def test_same_group_pair_margin_reaches_the_model(tmp_path, make_config):
    from hf_metric.run import build_trainer

    data = write_parquet(tmp_path / "g.parquet", _grouped_rows())
    head = {"type": "cosface", "group_margin": {"same": 0.4, "default": 0.3, "same_group_pair": 0.1}}
    trainer = build_trainer(load_config(make_config(data, head=head)))
    config = trainer.model.config
    names = [config.id2label[i] for i in range(4)]  # account, billing, card, delivery
    ids = config.class_group_ids
    assert config.same_group_pair_margin == 0.1
    assert [ids[names.index(a)] == ids[names.index(b)] for a, b in (("billing", "card"), ("account", "card"))] == [
        True,
        False,
    ]
    with pytest.raises(ConfigError, match="same_group_pair"):
        load_config(make_config(data, head={**head, "type": "circle"}))


def test_group_pk_with_gradient_accumulation_steps_over_every_batch(tmp_path, make_config):
    from hf_metric.run import build_trainer

    data = write_parquet(tmp_path / "g.parquet", _grouped_rows(per_class=20))
    training = {"sampler": "group_pk", "gradient_accumulation_steps": 2, "num_epochs": 1, "group_mix": 0.5}
    trainer = build_trainer(load_config(make_config(data, training=training)), report_to=[])
    batches = len(trainer.get_train_dataloader())
    assert batches == trainer._get_train_sampler().num_batches >= 3
    trainer.train()
    assert trainer.state.global_step == -(-batches // 2)  # every micro-batch used, the last window may be short
