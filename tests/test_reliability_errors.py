"""One-line errors before or at the start of training, each from a real fault: resuming from a folder that is no
checkpoint or belongs to another config, fp16 on CPU, an unwritable or full checkpoints_dir, pickled weights and
a pickle that would run code in a checkpoint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CLASS_WORDS, synthetic_rows, tiny_config, write_parquet

from hf_metric.cli import main
from hf_metric.loading import load_config
from hf_metric.run import train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A short finished run: its data, config and a checkpoint to resume from."""
    root = tmp_path_factory.mktemp("finished")
    parquet = write_parquet(root / "d.parquet", synthetic_rows(10))
    raw = tiny_config(
        tiny_model_dir,
        parquet,
        root / "ckpt",
        training={"num_epochs": 1},
        checkpointing={"save_every_n_batches": 2},
        metric_validation={"plots": False},
    )
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    train(load_config(path))
    return {"root": root, "raw": raw, "checkpoint": root / "ckpt" / "checkpoint-2"}


def _run(tmp_path: Path, raw: dict, capsys, **sections) -> tuple[int, str]:
    """The CLI on `raw` with `sections` merged in and checkpoints in tmp_path: exit code and its stderr line."""
    cfg = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    cfg["checkpointing"] = {**cfg["checkpointing"], "checkpoints_dir": str(tmp_path / "out")}
    for section, values in sections.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["--config", str(path)])
    # (a progress bar may end without a newline just before the error)
    errors = [line[line.index("error: ") :] for line in capsys.readouterr().err.splitlines() if "error: " in line]
    assert len(errors) == (code != 0)  # the error is one line
    return code, errors[0] if errors else ""


def _copy_checkpoint(finished, tmp_path: Path) -> Path:
    target = tmp_path / "copy" / "checkpoint-2"
    shutil.copytree(finished["checkpoint"], target)
    return target


def test_resume_from_a_folder_that_is_not_a_checkpoint(finished, tmp_path, capsys):
    code, line = _run(tmp_path, finished["raw"], capsys, training={"resume_from": str(tmp_path)})
    assert (
        code == 2
        and line == f"error: training.resume_from: {tmp_path} is not a checkpoint folder (no trainer_state.json)"
    )


def test_resume_latest_without_any_checkpoint(finished, tmp_path, capsys):
    code, line = _run(tmp_path, finished["raw"], capsys, training={"resume_from": "latest"})
    assert code == 2 and line.startswith("error: training.resume_from: no checkpoint found in")


def test_resume_from_a_checkpoint_of_other_labels(finished, tmp_path, capsys):
    three = write_parquet(tmp_path / "three.parquet", synthetic_rows(10, classes=list(CLASS_WORDS)[:3]))
    code, line = _run(
        tmp_path,
        finished["raw"],
        capsys,
        data={"parquet_path": str(three)},
        training={"resume_from": str(finished["checkpoint"])},
    )
    assert code == 2 and "was trained on other labels (4 classes" in line and "this data has 3" in line


def test_resume_from_a_checkpoint_of_another_head(finished, tmp_path, capsys):
    code, line = _run(
        tmp_path,
        finished["raw"],
        capsys,
        head={"type": "cosine"},
        training={"resume_from": str(finished["checkpoint"])},
    )
    assert code == 2 and "has head_type 'linear', this config 'cosine'" in line


def test_resume_from_a_checkpoint_of_another_backbone(finished, tmp_path, capsys):
    from transformers import AutoTokenizer, BertConfig, BertModel

    wider = tmp_path / "wider_bert"
    base = BertConfig.from_pretrained(finished["raw"]["model_name"])
    BertModel(BertConfig(**{**base.to_dict(), "hidden_size": 48, "intermediate_size": 96})).save_pretrained(wider)
    AutoTokenizer.from_pretrained(finished["raw"]["model_name"]).save_pretrained(wider)
    code, line = _run(
        tmp_path, finished["raw"], capsys, model_name=str(wider), training={"resume_from": str(finished["checkpoint"])}
    )
    assert code == 2 and "holds another model: 38 tensors differ" in line and "(29, 32) vs (29, 48) here" in line


def test_resume_refuses_pickled_weights(finished, tmp_path, capsys):
    checkpoint = _copy_checkpoint(finished, tmp_path)
    os.remove(checkpoint / "model.safetensors")
    torch.save({}, checkpoint / "pytorch_model.bin")
    code, line = _run(tmp_path, finished["raw"], capsys, training={"resume_from": str(checkpoint)})
    assert code == 2 and "has no model.safetensors (hf_metric resumes from safetensors weights only)" in line


class _RunsCode:
    """Unpickling this would create the file `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
def test_resume_refuses_a_pickle_that_would_run_code(finished, tmp_path, capsys, name):
    checkpoint = _copy_checkpoint(finished, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"state": _RunsCode(str(marker))}, checkpoint / name)
    code, line = _run(tmp_path, finished["raw"], capsys, training={"resume_from": str(checkpoint)})
    assert not marker.exists()
    assert code == 2 and "holds a pickle that is not plain tensors; refused (Weights only load failed" in line
    # the fault is real: a plain pickle load runs the code
    torch.load(checkpoint / name, weights_only=False)
    assert marker.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 works where CUDA is present")
def test_fp16_on_cpu(finished, tmp_path, capsys):
    code, line = _run(tmp_path, finished["raw"], capsys, training={"mixed_precision": "fp16"})
    assert (code, line) == (2, "error: training.mixed_precision: fp16 needs a GPU; use bf16 (or no) on CPU")
    assert not (tmp_path / "out").exists()


def test_checkpoints_dir_that_cannot_be_created(finished, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, line = _run(tmp_path, finished["raw"], capsys, checkpointing={"checkpoints_dir": str(blocker / "ckpt")})
    assert code == 2 and line.startswith(f"error: checkpointing.checkpoints_dir: cannot write to {blocker / 'ckpt'}")


def test_full_checkpoints_dir_is_caught_before_training(finished, tmp_path, capsys, monkeypatch):
    import hf_metric.training.checkpoints as checkpoints

    real = shutil.disk_usage
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda p: real(p)._replace(free=1024))
    code, line = _run(tmp_path, finished["raw"], capsys)
    assert code == 2 and "has 0 MiB free, a checkpoint needs about" in line
    assert not list((tmp_path / "out").glob("checkpoint-*"))
