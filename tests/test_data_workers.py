"""Image decoding in DataLoader workers (`data.num_workers`) gives the batches of decoding in the training
process, on sharded data too."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from media_fixtures import media_rows
from test_media import media_config

pytest.importorskip("PIL")


def _first_batches(tmp_path, shards, num_workers: int, n: int = 3):
    from hf_metric.loading import config_from_dict
    from hf_metric.run import build_run

    raw = media_config(tmp_path, "convnext", str(shards), data={"num_workers": num_workers})
    raw["training"]["sampler"] = "random"
    trainer, _ = build_run(config_from_dict(raw), report_to=[])
    return list(itertools.islice(iter(trainer.get_train_dataloader()), n))


def test_two_workers_give_the_batches_of_none(tmp_path):
    rows = media_rows("image", per_class=10)
    (tmp_path / "shards").mkdir()
    for i in range(2):  # two shards: bytes in the first, files next to the second (relative paths)
        part = rows[i::2]
        if i == 1:
            (tmp_path / "shards" / "img").mkdir()
            for j, row in enumerate(part):
                (tmp_path / "shards" / "img" / f"{j}.png").write_bytes(row["image"])
                row["image"] = f"img/{j}.png"
        table = pa.table({"image": [r["image"] for r in part], "label": [r["label"] for r in part]})
        pq.write_table(table, tmp_path / "shards" / f"part-{i}.parquet")
    inline = _first_batches(tmp_path, tmp_path / "shards", 0)
    workers = _first_batches(tmp_path, tmp_path / "shards", 2)
    assert len(inline) == len(workers) == 3
    for a, b in zip(inline, workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train_seeing_batches(tmp_path, parquet, resume: str | None = None) -> list[tuple[int, list, float]]:
    """Train 6 steps of P x K image batches decoded (and augmented) in 2 workers, saving every 2 steps; returns
    `(step, labels, pixel sum)` of every batch the model trained on."""
    from hf_metric.loading import config_from_dict
    from hf_metric.run import build_run

    raw = media_config(tmp_path, "convnext", str(parquet), data={"num_workers": 2})
    raw["scheduler"]["num_training_steps"] = 6
    raw["checkpointing"].update(save_every_n_batches=2, save_total_limit=10)
    trainer, _ = build_run(config_from_dict(raw), report_to=[])
    seen, original = [], trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        pixels = float(inputs["pixel_values"].double().sum())
        seen.append((trainer.state.global_step + 1, inputs["labels"].tolist(), pixels))
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    trainer.train(resume_from_checkpoint=resume)
    return seen


def test_a_run_resumed_with_workers_trains_on_the_batches_of_the_uninterrupted_run(tmp_path):
    from media_fixtures import write_media_parquet

    parquet = write_media_parquet(tmp_path / "data.parquet", media_rows("image", per_class=8))
    seen = _train_seeing_batches(tmp_path, parquet)
    assert [s for s, _, _ in seen] == list(range(1, 7))
    again = _train_seeing_batches(tmp_path, parquet, str(tmp_path / "ckpt" / "checkpoint-2"))
    assert again == [s for s in seen if s[0] > 2]  # same rows, same decoded and augmented pixels


@pytest.mark.slow
def test_two_processes_on_a_sharded_folder_cover_every_row_once_per_epoch(tmp_path, make_config):
    """`torchrun` with 2 processes on 3 shards: each epoch's sampler order holds every training row, and the
    two processes' micro-batches of an optimizer step are its next 4 batches (the distributed test's `pk` mode)."""
    import json
    from collections import Counter

    from conftest import synthetic_rows, write_parquet
    from test_distributed import _keys, _torchrun

    rows = synthetic_rows(20)
    (tmp_path / "shards").mkdir()
    for i in range(3):
        write_parquet(tmp_path / "shards" / f"part-{i}.parquet", rows[i::3])
    config = make_config(
        tmp_path / "shards",
        training={"num_epochs": 2, "batch_size": 8, "samples_per_class": 2, "logging_steps": 1},
        metric_validation={"plots": False},
    )
    out = tmp_path / "out"
    out.mkdir()
    _torchrun("pk", str(out), str(config))
    ranks = [json.loads((out / f"pk_rank{r}.json").read_text()) for r in (0, 1)]
    info, size = ranks[0], ranks[0]["batch_size"]
    assert len(info["all_rows"]) == len(ranks[1]["all_rows"]) == 60  # 80 rows in the shards, val_ratio 0.25
    steps_per_epoch = info["num_batches"] // 4
    for epoch, order in enumerate(info["sampler_epochs"]):
        assert set(_keys(order)) == set(_keys(info["all_rows"]))  # every row, every epoch
        for s in range(steps_per_epoch):
            step = epoch * steps_per_epoch + s + 1
            micro = [b["rows"] for r in ranks for b in r["seen"] if b["step"] == step]
            expected = order[s * 4 * size : (s + 1) * 4 * size]
            assert sum((_keys(b) for b in micro), Counter()) == _keys(expected), step
