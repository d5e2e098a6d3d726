"""Two CPU processes (gloo, started by torchrun) must train and evaluate like one process on the same data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_parquet
from dist_worker import B, supcon_inputs
from test_training import _masked_rows, _sequential_trainer

from hf_metric.model.losses import SupConLoss

WORKER = Path(__file__).with_name("dist_worker.py")


def _torchrun(*args: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([*cmd, str(WORKER), *args], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def _single_process_supcon():
    emb, labels, mask = supcon_inputs(world=2)
    emb.requires_grad_()
    loss = SupConLoss(0.1)(emb, labels, mask)
    loss.backward()
    return loss.item(), emb.grad


def test_supcon_on_2_processes_equals_one_process_with_the_global_batch(tmp_path):
    out = tmp_path / "supcon.json"
    _torchrun("supcon", str(out), "global")
    got = json.loads(out.read_text())
    loss, grad = _single_process_supcon()
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    assert torch.allclose(torch.tensor(got["grad"]), grad, atol=1e-5)


def test_local_anchors_keeps_the_loss_but_not_the_remote_gradient(tmp_path):
    out = tmp_path / "supcon.json"
    _torchrun("supcon", str(out), "local_anchors")
    got = json.loads(out.read_text())
    loss, grad = _single_process_supcon()
    assert got["loss"] == pytest.approx(loss, abs=1e-5)
    assert not torch.allclose(torch.tensor(got["grad"]), grad, atol=1e-5)
    assert len(got["grad"]) == 2 * B


def test_training_step_and_evaluation_match_a_single_process(tmp_path, make_config):
    rows = _masked_rows(per_class=13)  # 52 rows: 39 train, 13 val, an uneven last eval batch on 2 processes
    config = make_config(
        write_parquet(tmp_path / "m.parquet", rows),
        training={"sampler": "random", "gradient_clip_val": None, "batch_size": 8},
        loss={"metric": {"weight": 0.5}},
    )
    out = tmp_path / "dist"
    out.mkdir()
    _torchrun("train", str(out), str(config))
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["wrapped"] == "DistributedDataParallel"
    timing = ("runtime", "per_second")
    same = [k for k in ranks[0]["metrics"] if not k.endswith(timing)]
    assert [ranks[0]["metrics"][k] for k in same] == [ranks[1]["metrics"][k] for k in same]

    single = _sequential_trainer(config, per_device_train_batch_size=16)
    before = {k: v.detach().clone() for k, v in single.model.named_parameters()}
    single.train()
    expected = {k: before[k] - v.detach() for k, v in single.model.named_parameters()}
    delta = torch.load(out / "delta.pt")
    for key, value in expected.items():
        assert torch.allclose(delta[key], value, atol=2e-6, rtol=1e-4), key

    # the logged loss parts of the 2-process step are those of the one-process step on the same rows
    expected_log = next(h for h in single.state.log_history if "ce_loss" in h)
    for key in ("loss", "ce_loss", "supcon_loss"):
        assert ranks[0]["train_log"][key] == pytest.approx(expected_log[key], rel=1e-4), key
    metrics = single.evaluate()
    assert ranks[0]["bank_size"] == ranks[1]["bank_size"] == len(single.bank) > B
    for key, value in metrics.items():
        if key.endswith(timing):
            continue
        assert np.isclose(ranks[0]["metrics"][key], value, rtol=1e-4, atol=1e-5), (key, ranks[0]["metrics"][key], value)
