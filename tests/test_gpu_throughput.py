"""bench/gpu_throughput.py: its arithmetic against hand-computed figures, and every case run for 2 steps on the
CPU with tiny settings, so that the script a GPU session runs unattended is known to work before it gets there."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import synthetic_rows, write_parquet

from bench import gpu_throughput as gt


def test_bf16_peak_is_looked_up_from_the_device_name():
    assert gt.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert gt.bf16_peak("NVIDIA H200") == 989e12
    assert gt.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert gt.bf16_peak("Tesla T4") is None


def test_the_trainer_gets_the_length_grouping_spelling_it_has():
    import inspect

    from transformers import TrainingArguments

    on, off = gt.grouping_arguments(True), gt.grouping_arguments(False)
    if "train_sampling_strategy" in inspect.signature(TrainingArguments).parameters:
        assert on == {"train_sampling_strategy": "group_by_length"} and off["train_sampling_strategy"] != on
    else:
        assert on == {"group_by_length": True} and off == {"group_by_length": False}


def test_summary_of_hand_made_stamps():
    """3 steps of 1 s each with 0.25 s waiting for data, 1 warm-up: s/step, samples/s, loader share."""
    stamps = SimpleNamespace(begins=[0.0, 1.25, 2.25], ends=[1.0, 2.0, 3.0])
    model = SimpleNamespace(parameters=lambda: [SimpleNamespace(numel=lambda: 10)])
    args = SimpleNamespace(warmup=1, steps=3, num_workers=2)
    row = gt.summarize("image", "plain", False, args, stamps, [(0, 0)] * 3, model, 8, None)
    assert row["s_per_step"] == 1.0 and row["samples_per_s"] == 8.0
    assert row["loader_wait_share"] == 0.25 and "gpu_utilisation" not in row and "tflops" not in row


@pytest.mark.slow
def test_text_cases_run_both_arms_with_and_without_grouping(tmp_path, tiny_model_dir):
    data = write_parquet(tmp_path / "train.parquet", synthetic_rows(per_class=12))
    out = tmp_path / "rows.jsonl"
    argv = ["--cases", "text-minilm", "--steps", "2", "--warmup", "1", "--num-workers", "0", "--batch-size", "8"]
    argv += ["--tiny-model", tiny_model_dir, "--data", f"text-minilm={data}", "--out", str(out)]
    rows = gt.main(argv)
    assert [(r["arm"], r["length_grouping"]) for r in rows] == [
        ("recipe", False),
        ("recipe", True),
        ("plain", False),
        ("plain", True),
    ]
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert gt.main(["--render", str(out)]) == rows
    for r in rows:
        assert r["s_per_step"] > 0 and r["samples_per_s"] == pytest.approx(8 / r["s_per_step"], rel=1e-2)
        assert r["tokens_per_s"] > 0 and r["tflops"] >= 0 and "bf16_peak_share" not in r  # no GPU here
    assert len({r["params"] for r in rows if r["arm"] == "recipe"}) == 1


@pytest.mark.slow
def test_image_and_audio_cases_run(tmp_path):
    rows = gt.main(["--cases", "image", "audio", "--steps", "2", "--warmup", "0", "--num-workers", "0"])
    assert [(r["case"], r["arm"]) for r in rows] == [
        ("image", "recipe"),
        ("image", "plain"),
        ("audio", "recipe"),
        ("audio", "plain"),
    ]
    assert all(r["s_per_step"] > 0 and "tokens_per_s" not in r for r in rows)
