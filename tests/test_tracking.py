"""Tracking: a tiny training logged to an offline Neptune run and to TensorBoard, read back from local storage;
the API token never written anywhere; the collapse watch on a collapsed and on a healthy model."""

import contextlib
import glob
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, tiny_config, write_parquet
from matplotlib.image import imread
from test_plots import assert_real_png

from hf_metric.config import ConfigError, NeptuneSection, TrainingSection
from hf_metric.evaluation.plots import PLOT_NAMES
from hf_metric.loading import config_from_dict, load_config
from hf_metric.run import build_trainer, train
from hf_metric.training.arguments import resolved_report_to
from hf_metric.training.tracking import NeptuneTracker, offline_run_dirs, read_offline_run

FAKE_TOKEN = "hfm-FAKE-neptune-token-7f3e9c2a51d84b06"
FAKE_HF_TOKEN = "hf_FAKEhubtoken9c1d7e44a0b2f3"


def _tiny_config(tiny_model_dir: str, root: Path, **sections) -> dict:
    parquet = write_parquet(root / "d.parquet", synthetic_rows(30))
    return tiny_config(tiny_model_dir, parquet, root / "ckpt", **{"optimizer": {"learning_rate": 1e-2}, **sections})


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under `root` whose bytes contain `needle`."""
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tiny_model_dir):
    """One tiny run with Neptune offline and TensorBoard, the fake token in the environment, and every log
    record, stdout and stderr captured."""
    root = tmp_path_factory.mktemp("tracked")
    cfg = _tiny_config(
        tiny_model_dir,
        root,
        training={"report_to": ["tensorboard"]},
        neptune={"mode": "offline", "name": "tiny-offline", "tags": ["test"]},
    )
    records: list[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: records.append(f"{record.name} {record.levelname} {record.getMessage()}")
    loggers = [logging.getLogger(), logging.getLogger("transformers"), logging.getLogger("neptune")]
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEPTUNE_API_TOKEN", FAKE_TOKEN)
        mp.setenv("HF_TOKEN", FAKE_HF_TOKEN)
        mp.setenv("HUGGING_FACE_HUB_TOKEN", FAKE_HF_TOKEN)
        mp.setenv("NEPTUNE_DATA_DIRECTORY", str(root / "neptune"))
        for lg in loggers:
            lg.addHandler(handler)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                metrics = train(config_from_dict(cfg))
        finally:
            for lg in loggers:
                lg.removeHandler(handler)
    (run_dir,) = offline_run_dirs(root / "neptune")
    ckpt = root / "ckpt"
    last = max(ckpt.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return {
        "root": root,
        "ckpt": ckpt,
        "metrics": metrics,
        "run": read_offline_run(run_dir),
        "history": history,
        "logs": "\n".join(records) + out.getvalue() + err.getvalue(),
    }


def test_offline_run_holds_loss_parts_eval_metrics_and_config(tracked_run):
    run, history = tracked_run["run"], tracked_run["history"]
    train_logs = [h for h in history if "ce_loss" in h]
    eval_logs = [h for h in history if "eval_f1" in h]
    assert len(train_logs) >= 3 and len(eval_logs) == 2  # logging_steps 5 over 22 steps; one eval per epoch
    for key in ("loss", "ce_loss", "supcon_loss", "learning_rate", "grad_norm"):
        assert run.series[f"train/{key}"] == [(h["step"], pytest.approx(h[key])) for h in train_logs], key
    watched = [h for h in history if "batch_distinct_predictions" in h]
    assert watched and run.series["train/batch_logit_std"] == [(h["step"], h["batch_logit_std"]) for h in watched]
    for key in ("f1", "accuracy", "recall@1", "knn_f1", "bank_mean_margin", "logit_std", "distinct_predictions"):
        assert run.series[f"eval/{key}"] == [(h["step"], pytest.approx(h[f"eval_{key}"])) for h in eval_logs], key
    for key, value in tracked_run["metrics"].items():
        assert run.atoms[f"final/{key}"] == pytest.approx(value), key
    assert run.atoms["config/training/batch_size"] == 8 and run.atoms["config/neptune/mode"] == "offline"
    assert run.atoms["sys/name"] == "tiny-offline"


def test_offline_run_holds_the_pictures(tracked_run):
    run = tracked_run["run"]
    eval_steps = [h["step"] for h in tracked_run["history"] if "eval_f1" in h]
    for name in PLOT_NAMES:
        assert [step for step, _ in run.images[f"plots/{name}"]] == eval_steps
        (final,) = run.images[f"final/plots/{name}"]
        assert final[1] == (tracked_run["ckpt"] / "plots" / f"{name}_final.png").read_bytes()
        pixels = imread(io.BytesIO(run.images[f"plots/{name}"][-1][1]), format="png")
        assert pixels.std() > 0.05
    for step in eval_steps:
        for name in PLOT_NAMES:
            assert_real_png(str(tracked_run["ckpt"] / "plots" / f"{name}_step{step}.png"))


def test_tensorboard_gets_the_pictures_next_to_the_scalars(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    eval_steps = {h["step"] for h in tracked_run["history"] if "eval_f1" in h}
    (log_dir,) = {os.path.dirname(p) for p in glob.glob(str(tracked_run["ckpt"] / "runs" / "*" / "events.*"))}
    events = EventAccumulator(log_dir, size_guidance={"images": 0}).Reload()
    assert {f"plots/{name}" for name in PLOT_NAMES} <= set(events.Tags()["images"])
    assert "train/ce_loss" in events.Tags()["scalars"]
    images = events.Images("plots/embedding_map")
    assert eval_steps <= {e.step for e in images}
    assert all(e.width > 600 and e.height > 400 for e in images)


def test_report_has_the_final_table_pictures_and_config(tracked_run):
    text = (tracked_run["ckpt"] / "report.md").read_text(encoding="utf-8")
    assert f"| eval_f1 | {tracked_run['metrics']['eval_f1']:.4f} |" in text
    for name in PLOT_NAMES:
        assert f"](plots/{name}_final.png)" in text
    assert "mode: offline" in text and "```yaml" in text


def test_the_api_token_is_never_written_or_logged(tracked_run):
    root = tracked_run["root"]
    written = [p for p in root.rglob("*") if p.is_file()]
    assert any("neptune" in p.parts for p in written) and any(p.name == "report.md" for p in written)
    for token in (FAKE_TOKEN, FAKE_HF_TOKEN):  # logs, resolved config, report, model card, checkpoints, Neptune
        assert files_containing(root, token) == []
        assert token not in tracked_run["logs"]
    assert "Report:" in tracked_run["logs"]  # the capture works: the run's own output is there
    assert (root / "ckpt" / "best" / "README.md").is_file() and (root / "ckpt" / "resolved_config.yaml").is_file()
    # the check itself can fail: a file holding the token is found
    planted = root / "planted" / "leak.txt"
    planted.parent.mkdir()
    planted.write_text(f"token={FAKE_TOKEN}")
    try:
        assert files_containing(root, FAKE_TOKEN) == [planted]
    finally:
        planted.unlink()


def test_a_healthy_run_raises_no_collapse_warning(tracked_run):
    assert tracked_run["metrics"]["eval_distinct_predictions"] == 4
    assert "prediction collapse" not in tracked_run["logs"]


def test_collapse_warning_fires_once_on_a_collapsed_model(tmp_path, tiny_model_dir, caplog):
    cfg = _tiny_config(
        tiny_model_dir, tmp_path, training={"collapse_check_steps": 2}, optimizer={"learning_rate": 1e-9}
    )
    trainer = build_trainer(
        config_from_dict(cfg), max_steps=8, eval_strategy="no", save_strategy="no", load_best_model_at_end=False
    )
    with torch.no_grad():  # a head that scores class 2 far above the rest, whatever the text
        trainer.model.head.linear.weight.zero_()
        trainer.model.head.linear.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    with caplog.at_level(logging.WARNING, logger="hf_metric"):
        trainer.train()
        metrics = trainer.evaluate()
    warnings = [r.getMessage() for r in caplog.records if "prediction collapse" in r.getMessage()]
    assert len(warnings) == 1  # the training batch at steps 2 and 4 already; not again at evaluation
    assert "training batch (step 4)" in warnings[0]
    for remedy in ("head.scale", "head.margin", "head.temperature"):
        assert remedy in warnings[0]
    watched = [h for h in trainer.state.log_history if "batch_distinct_predictions" in h]
    assert watched and all(h["batch_distinct_predictions"] == 1 for h in watched)
    assert all(h["batch_prediction_entropy"] == 0 for h in watched)
    assert metrics["eval_distinct_predictions"] == 1 and metrics["eval_prediction_entropy"] == 0


def test_collapse_statistics_against_numpy():
    from hf_metric.evaluation.metrics import collapse_statistics

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 6))
    labels = logits.argmax(1)
    stats, collapsed = collapse_statistics(torch.tensor(logits), labels)
    counts = np.bincount(labels, minlength=6) / 50
    entropy = -(counts[counts > 0] * np.log(counts[counts > 0])).sum()
    assert stats["logit_std"] == pytest.approx(np.std(logits))
    assert stats["prediction_entropy"] == pytest.approx(entropy)
    assert stats["distinct_predictions"] == len(np.unique(labels)) and not collapsed
    flat = np.zeros((50, 6))
    flat[:, 1] = 1.0
    stats, collapsed = collapse_statistics(flat, labels, max_distinct=1)
    assert collapsed and stats["distinct_predictions"] == 1


@pytest.fixture
def neptune_dir(tmp_path, monkeypatch):
    """Neptune's local storage in the test's folder (debug mode writes there too), not in the repository."""
    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(tmp_path / ".neptune"))
    return tmp_path / ".neptune"


def test_tracker_keeps_series_steps_increasing_and_sends_late_logs_to_final(neptune_dir):
    from transformers import TrainerControl, TrainerState

    tracker = NeptuneTracker(NeptuneSection(mode="debug"), {"training": {"batch_size": 8, "report_to": ["none"]}})
    state, control = TrainerState(), TrainerControl()
    tracker.on_train_begin(None, state, control)
    for step, loss in ((5, 1.0), (5, 0.9), (10, 0.5)):  # the second one repeats step 5
        state.global_step = step
        tracker.on_log(None, state, control, logs={"loss": loss, "epoch": step / 10})
    tracker.on_log(None, state, control, logs={"eval_f1": 0.75, "epoch": 0.99})
    tracker.on_train_end(None, state, control)
    tracker.on_log(None, state, control, logs={"eval_f1": 0.8, "epoch": 1.0})
    run = tracker.run
    assert run["train/loss"].fetch_values()["value"].tolist() == [1.0, 0.5]
    assert run["train/epoch"].fetch_values()["value"].tolist() == [0.5, 1.0]  # not the eval log's 0.99
    assert run["eval/f1"].fetch_values()["value"].tolist() == [0.75]
    assert run["final/eval_f1"].fetch() == 0.8
    assert run["config/training/batch_size"].fetch() == 8
    tracker.finish()
    assert tracker.run is None


def test_tracker_logs_nothing_on_other_processes(neptune_dir):
    from transformers import TrainerControl, TrainerState

    tracker = NeptuneTracker(NeptuneSection(mode="debug"))
    state = TrainerState(is_world_process_zero=False)
    tracker.on_train_begin(None, state, TrainerControl())
    tracker.on_log(None, state, TrainerControl(), logs={"loss": 1.0})
    assert tracker.run is None


def test_report_to_neptune_points_to_the_neptune_section(tmp_path, make_config):
    config = make_config(write_parquet(tmp_path / "d.parquet", synthetic_rows(5)), training={"report_to": "neptune"})
    with pytest.raises(ConfigError, match=r"training\.report_to: neptune is configured in the neptune: section"):
        load_config(config)


def test_report_to_all_leaves_neptune_to_hf_metric():
    from transformers.integrations import get_available_reporting_integrations

    assert "neptune" in get_available_reporting_integrations()  # installed: "all" would pick it up
    resolved = resolved_report_to(TrainingSection(report_to=["all"]).report_to)
    assert "neptune" not in resolved and "tensorboard" in resolved
    assert resolved_report_to(TrainingSection(report_to=["tensorboard", "mlflow"]).report_to) == [
        "tensorboard",
        "mlflow",
    ]
