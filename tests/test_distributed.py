"""Two CPU processes (gloo, started by torchrun) must train and evaluate like one process on the same data."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_rows, write_parquet
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


def test_search_split_across_2_processes_equals_the_one_process_search(tmp_path):
    """Each process searches its half of the references; the merged top k is the one-process top k (ties by
    lower index, across the shard boundary too), for k beyond one shard's rows and beyond all rows."""
    from dist_worker import sharded_search_data

    from hf_metric.evaluation.sharded_search import shard_span
    from hf_metric.model.neighbors import topk_neighbors

    assert [shard_span(13, r, 2) for r in (0, 1)] == [(0, 7), (7, 13)]
    assert [shard_span(5, r, 3) for r in (0, 1, 2)] == [(0, 2), (2, 4), (4, 5)]
    out = tmp_path / "search.pt"
    _torchrun("sharded_search", str(out))
    got = torch.load(out)
    data = sharded_search_data()
    assert len(got) == 2 * 2 * 4 * 2
    for (kind, distance, k, how), (scores, indices) in got.items():
        query, ref = data[kind]
        want_s, want_i = topk_neighbors(query, ref, k, distance)
        assert indices.shape == (len(query), min(k, len(ref)))
        assert torch.equal(indices, want_i), (kind, distance, k, how)
        assert torch.allclose(scores, want_s, atol=1e-6), (kind, distance, k, how)


def _keys(rows) -> Counter:
    return Counter((tuple(tokens), label) for tokens, label in rows)


@pytest.mark.slow
def test_pk_batches_on_2_processes_with_accumulation_2_cover_every_row_and_survive_resume(tmp_path, make_config):
    """Per optimizer step the 2 processes x 2 micro-batches are exactly the sampler's next 4 P x K batches: every
    row at least once per epoch, each micro-batch P x K; a run resumed mid-epoch gets the same batches."""
    rows = synthetic_rows(20)  # 15 train rows per class: 8 groups of K=2 each -> 8 batches of 4 classes x 2
    config = make_config(
        write_parquet(tmp_path / "pk.parquet", rows),
        training={"num_epochs": 2, "batch_size": 8, "samples_per_class": 2, "logging_steps": 1},
        checkpointing={"save_every_n_batches": 1, "save_total_limit": 10},
        metric_validation={"plots": False},
    )
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    full.mkdir()
    resumed.mkdir()
    _torchrun("pk", str(full), str(config))
    ranks = [json.loads((full / f"pk_rank{r}.json").read_text()) for r in (0, 1)]
    info = ranks[0]
    n, size = info["num_batches"], info["batch_size"]
    assert n % 4 == 0 and size == 8  # 2 processes x 2 micro-batches per step: no padding batches
    steps_per_epoch = n // 4
    for epoch, order in enumerate(info["sampler_epochs"]):
        assert set(_keys(order)) == set(_keys(info["all_rows"]))  # every row, every epoch
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s + 1
            micro = [b["rows"] for r in ranks for b in r["seen"] if b["step"] == step]
            assert len(micro) == 4
            for batch in micro:  # P x K: 4 classes x 2 rows
                assert sorted(Counter(label for _, label in batch).values()) == [2, 2, 2, 2]
            expected = order[s * 4 * size : (s + 1) * 4 * size]
            assert sum((_keys(b) for b in micro), Counter()) == _keys(expected), step

    checkpoint = tmp_path / "ckpt" / "checkpoint-1"
    assert checkpoint.is_dir()
    _torchrun("pk", str(resumed), str(config), str(checkpoint))
    again = [json.loads((resumed / f"pk_rank{r}.json").read_text()) for r in (0, 1)]
    for rank, (a, b) in enumerate(zip(ranks, again, strict=True)):
        after = [x for x in a["seen"] if x["step"] > 1]
        assert after and after == b["seen"], rank
