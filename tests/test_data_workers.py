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
