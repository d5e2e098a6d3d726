"""The bank and the collapse watch see each training micro-batch after its backward pass: the bank still holds
exactly the embeddings of the training forward passes, the watch still reports the batch statistics, and the
losses are those of the objective on those very outputs."""

import numpy as np
import torch
from conftest import synthetic_rows, write_parquet

from hf_metric.config import load_config
from hf_metric.run import build_trainer


def test_bank_and_collapse_watch_get_every_micro_batch_of_the_training_forward(tmp_path, make_config):
    config = make_config(
        write_parquet(tmp_path / "d.parquet", synthetic_rows(12)),
        training={"gradient_accumulation_steps": 2, "collapse_check_steps": 1, "logging_steps": 1},
        metric_validation={"keep_last_n_emb_steps": 3, "plots": False},
    )
    trainer = build_trainer(load_config(config), max_steps=4, report_to=[])
    model = trainer.model
    forward, seen, logged = model.forward, [], []

    def recording_forward(*args, **kwargs):
        out = forward(*args, **kwargs)
        if model.training:  # (step, embeddings, labels, metric mask) of every training micro-batch
            seen.append(
                (trainer.state.global_step, out.embeddings.detach().clone(), kwargs["labels"], kwargs["metric_mask"])
            )
        return out

    model.forward = recording_forward
    log = trainer.log
    trainer.log = lambda logs, *a: (log(logs, *a), logged.append(dict(logs)))[0]  # as completed by our log
    trainer.train()

    steps = sorted({step for step, *_ in seen})
    assert steps == [0, 1, 2, 3] and len(seen) > 4  # micro-batches of 4 optimizer steps
    kept = [(e[m.bool()], y[m.bool()]) for step, e, y, m in seen if step in steps[-3:]]  # the bank's last 3 steps
    expected_embeddings = torch.cat([e for e, _ in kept])
    expected_labels = torch.cat([y for _, y in kept])
    assert torch.equal(trainer.bank.labels(), expected_labels)
    assert torch.allclose(trainer.bank.embeddings(), expected_embeddings.float(), atol=1e-6)
    batch_logs = [entry for entry in logged if "loss" in entry]
    assert len(batch_logs) == 4 and all("batch_distinct_predictions" in entry for entry in batch_logs[1:])
    assert all(np.isfinite(entry["loss"]) for entry in batch_logs)
