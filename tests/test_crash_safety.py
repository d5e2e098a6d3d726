"""Crash safety and determinism on CPU.

A run killed with SIGKILL (at a random moment after a checkpoint, or in the middle of a checkpoint save) and
resumed with `resume_from: latest` gives the loss curve, metrics and weights of the uninterrupted run; a
half-written checkpoint is never picked as latest; two runs with one seed are identical.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import synthetic_rows, tiny_config, write_parquet
from safetensors.torch import load_file

from hf_metric.loading import load_config
from hf_metric.run import _resume_checkpoint, train

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("crash_worker.py")
TIMING = ("runtime", "per_second")


def _write_config(root: Path, parquet: Path, model_dir: str, name: str, resume: bool = False) -> Path:
    raw = tiny_config(
        model_dir,
        parquet,
        root / name,
        training={"logging_steps": 1, "num_epochs": 3, **({"resume_from": "latest"} if resume else {})},
        checkpointing={"save_every_n_batches": 2, "save_total_limit": 20, "save_best_by": "f1"},
        metric_validation={"plots": False},
    )
    path = root / f"{name}{'-resume' if resume else ''}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _outcome(out_dir: Path) -> dict:
    """Loss curve (every logged training value by step), final metrics and best weights of a finished run."""
    last = max(out_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    curve = {
        (h["step"], k): v
        for h in history
        for k, v in h.items()
        if k != "step" and not k.endswith(TIMING) and k != "epoch"
    }
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {
        "curve": curve,
        "metrics": {k: v for k, v in metrics.items() if not k.endswith(TIMING)},
        "weights": load_file(out_dir / "best" / "model.safetensors"),
        "last": last.name,
    }


def _assert_same(got: dict, want: dict, atol: float) -> None:
    assert got["last"] == want["last"]
    assert got["curve"].keys() == want["curve"].keys()
    for key, value in want["curve"].items():
        assert np.isclose(got["curve"][key], value, rtol=0, atol=atol), (key, got["curve"][key], value)
    assert got["metrics"].keys() == want["metrics"].keys()
    for key, value in want["metrics"].items():
        assert np.isclose(got["metrics"][key], value, rtol=0, atol=atol), (key, got["metrics"][key], value)
    assert got["weights"].keys() == want["weights"].keys()
    for key, value in want["weights"].items():
        assert torch.allclose(got["weights"][key].float(), value.float(), rtol=0, atol=atol), key


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("crash")
    parquet = write_parquet(root / "d.parquet", synthetic_rows(10))
    reference = _write_config(root, parquet, tiny_model_dir, "reference")
    train(load_config(reference))
    return {"root": root, "parquet": parquet, "model": tiny_model_dir, "reference": _outcome(root / "reference")}


def _start(config: Path, root: Path, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **env}
    log = open(root / f"{config.stem}.log", "w")  # noqa: SIM115  (the child writes to it)
    return subprocess.Popen([sys.executable, str(WORKER), str(config)], env=full_env, stdout=log, stderr=log)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the run ended (code {proc.returncode}) before the kill"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _resume(setup, name: str) -> dict:
    config = _write_config(setup["root"], setup["parquet"], setup["model"], name, resume=True)
    train(load_config(config))
    return _outcome(setup["root"] / name)


def test_sigkill_at_a_random_moment_after_a_checkpoint_then_resume_matches(setup):
    root = setup["root"]
    config = _write_config(root, setup["parquet"], setup["model"], "killed")
    out = root / "killed"
    proc = _start(config, root, HFM_STEP_SLEEP="0.3")
    _wait_for(lambda: (out / "checkpoint-2").is_dir(), proc)
    delay = random.Random().uniform(0.0, 2.0)
    print(f"killing {delay:.2f} s after checkpoint-2")
    time.sleep(delay)
    _kill(proc)
    assert not (out / "metrics.json").exists()  # killed mid-run, not after it
    _assert_same(_resume(setup, "killed"), setup["reference"], atol=1e-5)


def test_sigkill_during_a_save_never_leaves_a_checkpoint_that_is_picked_as_latest(setup):
    root = setup["root"]
    config = _write_config(root, setup["parquet"], setup["model"], "killed_in_save")
    out, marker = root / "killed_in_save", root / "hanging"
    proc = _start(config, root, HFM_HANG_AT_SAVE="2", HFM_HANG_MARKER=str(marker))
    _wait_for(marker.exists, proc)
    _kill(proc)
    staged = Path(marker.read_text())
    assert staged.parent.name == ".staging" and (staged / "model.safetensors").is_file()  # half-way through
    assert not (out / staged.name).exists()
    assert _resume_checkpoint(
        load_config(_write_config(root, setup["parquet"], setup["model"], out.name, True))
    ) == str(out / "checkpoint-2")
    _assert_same(_resume(setup, out.name), setup["reference"], atol=1e-5)


def test_two_runs_with_one_seed_are_identical(setup):
    again = _write_config(setup["root"], setup["parquet"], setup["model"], "again")
    train(load_config(again))
    _assert_same(_outcome(setup["root"] / "again"), setup["reference"], atol=0.0)
