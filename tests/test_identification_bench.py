"""`python -m bench.identification` end to end on a toy grouped split with the tiny model (a few steps), and its
class split / enrolment protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_rows, write_parquet

ROOT = Path(__file__).resolve().parents[1]


def toy_dataset(folder: Path) -> Path:
    """8 classes (the 4 keyword classes twice, in two groups), 14 train and 4 test rows each."""
    folder.mkdir(parents=True)
    for split, per_class, seed in (("train", 14, 0), ("test", 4, 1)):
        rows = []
        for copy, group in ((0, "home"), (1, "work")):
            for row in synthetic_rows(per_class, seed + copy):
                rows.append({"text": row["text"], "label": f"{group}_{row['label']}", "group": group})
        write_parquet(folder / f"{split}.parquet", rows)
    return folder


def test_protocol_splits_classes_and_nests_enrolment(tmp_path):
    from bench.identification import build_protocol

    data = toy_dataset(tmp_path / "toy")
    split = build_protocol(data, "test", [2, 5], seed=0, max_train_rows=None)
    assert len(split["held"]) == 2 and len(split["seen"]) == 6 and not set(split["held"]) & set(split["seen"])
    assert set(split["queries"]["label"]) == set(split["held"])
    assert set(split["train"]["label"]) == set(split["seen"])
    small, large = split["enrol"][2], split["enrol"][5]
    assert set(small["text"]) <= set(large["text"]) and len(large["label"]) == 10
    val = build_protocol(data, "val", [2, 5], seed=0, max_train_rows=12)
    assert set(val["held"]) <= set(split["seen"]) and set(val["queries"]["label"]) == set(val["held"])
    assert len(val["train"]["label"]) <= 12
    assert np.array_equal(build_protocol(data, "val", [2, 5], 0, 12)["train"]["text"], val["train"]["text"])


@pytest.mark.slow
def test_benchmark_runs_every_model(tmp_path, tiny_model_dir):
    data, results = toy_dataset(tmp_path / "toy"), tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "bench.identification", "--datasets", str(data), "--protocol", "test"]
    command += ["--shots", "2", "--epochs", "1", "--threads", "1", "--model-name", tiny_model_dir]
    command += ["--results", str(results), "--docs", str(tmp_path / "page")]
    command += ["--overrides", json.dumps({"training": {"batch_size": 8, "samples_per_class": 2}})]
    run = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["untuned", "recipe", "ce"]
    assert all(0.0 <= r["precision_at_1"] <= 1.0 and "within_group_map_at_r" in r and "eer" in r for r in rows)
    assert "| recipe | 2 |" in (tmp_path / "page.md").read_text()
    assert "Идентификация" in (tmp_path / "page.ru.md").read_text()
