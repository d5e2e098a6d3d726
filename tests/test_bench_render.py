"""The benchmark tables in docs/benchmarks.md are rendered from result rows: a later run must replace only the
cells it measured, never hide another k's numbers."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def few_shot_row(run_id: str, k: int, seed: int, accuracy: float, method: str = "few_shot") -> dict:
    return {
        "run_id": run_id, "dataset": "toy", "k": k, "seed": seed, "method": method, "protocol": "test",
        "accuracy": accuracy, "macro_f1": accuracy, "seconds": 10.0, "command": f"python bench/few_shot.py {run_id}",
        "load_avg": 1.0, "date": "2026-12-03", "machine": "2 CPU", "threads": 1, "classes": 3, "eval_rows": 9,
    }  # fmt: skip


def test_few_shot_docs_show_the_latest_run_of_every_k(tmp_path, monkeypatch):
    from bench import few_shot

    rows = [
        few_shot_row("k10-old", 10, 0, 0.10),
        few_shot_row("k10", 10, 0, 0.80),
        few_shot_row("k10", 10, 1, 0.90),
        few_shot_row("k5", 5, 0, 0.70),
    ]
    results, docs = tmp_path / "results.jsonl", tmp_path / "benchmarks.md"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    few_shot.write_docs(results, docs)
    text = docs.read_text()
    assert "run k10 " in text and "run k5 " in text and "k10-old" not in text
    assert "| few_shot | 10 | 0, 1 | 85.00 +- 7.07 |" in text  # mean +- sample std of 80 and 90
    assert "| few_shot | 5 | 0 | 70.00 |" in text


def test_few_shot_comparison_pairs_preset_and_setfit_by_seed(tmp_path, monkeypatch):
    """The headline table is rendered from the rows: per-seed differences only where both arms ran that seed."""
    from bench import few_shot

    rows = [
        few_shot_row("k10", 10, 0, 0.80),
        few_shot_row("k10", 10, 1, 0.90),
        few_shot_row("k10", 10, 2, 0.50),  # SetFit did not run seed 2: not in the paired difference
        {**few_shot_row("k10", 10, 0, 0.75, "setfit"), "seconds": 40.0},
        {**few_shot_row("k10", 10, 1, 0.80, "setfit"), "seconds": 40.0},
        few_shot_row("k10", 10, 0, 0.60, "ce"),
        few_shot_row("k5", 5, 0, 0.70),  # no SetFit at k = 5: no comparison row
    ]
    results, docs = tmp_path / "results.jsonl", tmp_path / "benchmarks.md"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    few_shot.write_docs(results, docs)
    table = [line for line in docs.read_text().splitlines() if line.startswith("| toy, k = ")]
    mean_difference = ((80 - 75) + (90 - 80)) / 2
    assert table == [
        "| toy, k = 10 | 0, 1, 2 | 73.33 +- 20.82 (80.00 / 90.00 / 50.00) | 77.50 +- 3.54 (75.00 / 80.00) | "
        f"+{mean_difference:.2f} (+5.00 / +10.00) | 0.25x (10 vs 40 s) | 60.00 | - |"
    ]


def test_ablation_table_separates_the_head_from_the_fused_prediction(monkeypatch):
    """Newer rows record the model's (fused) prediction as accuracy and the head apart; older rows only the head.
    One table must put each number in its own column, whichever kind of row it holds."""
    from bench import quality_render

    base = {"dataset": "toy", "protocol": "val", "overrides": {}, "knn_accuracy": 0.5, "knn_f1": 0.5, "load_avg": 2.0}
    rows = [
        {**base, "variant": "old", "epochs": None, "accuracy": 0.80, "macro_f1": 0.79},
        {**base, "variant": "new", "epochs": None, "accuracy": 0.90, "macro_f1": 0.89, "head_accuracy": 0.85,
         "head_macro_f1": 0.84},
        {**base, "variant": "short", "epochs": 2.0, "accuracy": 0.70, "macro_f1": 0.69},
        {**base, "variant": "refit", "epochs": None, "accuracy": 0.60, "macro_f1": 0.59, "protocol": "nested"},
    ]  # fmt: skip
    text = "\n".join(quality_render.ablation_tables(rows, arrays=None))
    plain, nested = text.split("toy, the config's epochs, nested test protocol (")
    assert "| refit |" in nested and "| refit |" not in plain and "| new |" not in nested
    assert "| old | `-` | 0.8000 | 0.7900 | - |" in text
    assert "| new | `-` | 0.8500 | 0.8400 | 0.9000 / 0.8900 |" in text
    assert "toy, the config's epochs (" in text and "toy, 2 epochs (" in text and "None" not in text


def quality_row(run_id: str, variant: str, seed: int, accuracy: float, **extra) -> dict:
    return {
        "run_id": run_id, "dataset": "toy", "variant": variant, "seed": seed, "seeds": 3, "epochs": None,
        "protocol": "val" if run_id.endswith("val") else "test", "accuracy": accuracy, "macro_f1": accuracy,
        "head_accuracy": accuracy, "head_macro_f1": accuracy, "knn_accuracy": 0.5, "knn_f1": 0.5, "seconds": 10.0,
        "overrides": {}, "threads": 1, "load_avg": 9.0, "machine": "16 CPU, GPU X", "command": "python q.py",
        **extra,
    }  # fmt: skip


def test_sweep_rows_get_their_own_tables_and_leave_the_seeds_tables_alone(tmp_path, monkeypatch):
    """A GPU sweep's test rows must not replace the latest CPU seeds table of the same dataset; its test table
    lists every spec's seeds in order, with the mean +- sample std of a float64 reference."""
    import numpy as np

    from bench import quality_render

    sweep = {"launched_by": "python bench/quality_sweep.py --val hf_metric lever"}
    rows = [
        *(quality_row("cpu-s3", v, s, a) for v, a in [("baseline", 0.90), ("hf_metric", 0.93)] for s in (42, 43)),
        quality_row("gpu-val", "hf_metric", 42, 0.91, **sweep),
        quality_row("gpu-val", "lever", 42, 0.95, epochs=10.0, **sweep),
        *(quality_row("gpu-test", "lever", s, a, epochs=10.0, **sweep) for s, a in [(44, 0.96), (42, 0.94)]),
        *(quality_row("gpu-test", "baseline", s, a, **sweep) for s, a in [(43, 0.92), (42, 0.90)]),
    ]
    results, docs = tmp_path / "results.jsonl", tmp_path / "benchmarks.md"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    quality_render.write_docs(results, docs, arrays=None)
    text = docs.read_text()
    assert "### toy: 2 seeds per recipe (run cpu-s3)" in text  # the seeds that ran, not the --seeds asked for
    assert "### toy: lever sweep gpu on 16 CPU, GPU X" in text
    table = text.split("lever sweep gpu")[1]
    assert table.index("| lever@10 | `-` |") < table.index("| hf_metric | `-` |")  # best validation first
    expected = f"{np.mean([0.94, 0.96]):.4f} +- {np.std([0.94, 0.96], ddof=1):.4f} (0.9400-0.9600)"
    assert f"| lever@10 | 42, 44 | {expected} |" in table
    assert table.index("| baseline | 42, 43 |") < table.index("| lever@10 | 42, 44 |")
    assert "lever@10: every seed above every baseline seed: yes." in table
    assert "gpu-" not in text.split("lever sweep gpu")[0]  # no sweep row leaks into the other tables


def test_the_sweep_keeps_the_control_unless_a_lever_clears_the_minimum_gain(monkeypatch):
    from bench import quality_sweep

    rows = [{"spec": "control", "accuracy": 0.930}, {"spec": "a", "accuracy": 0.932}, {"spec": "b", "accuracy": 0.929}]
    assert quality_sweep.pick(rows, "control", min_gain=0.003) == "control"
    assert quality_sweep.pick(rows, "control", min_gain=0.002) == "a"
    tie = [{"spec": "control", "accuracy": 0.93}, {"spec": "a", "accuracy": 0.93}]
    assert quality_sweep.pick(tie, "control", min_gain=0.0) == "control"
    assert quality_sweep.spec_args("hf_metric@10") == ["--variants", "hf_metric", "--epochs", "10"]
    assert quality_sweep.spec_args("baseline") == ["--variants", "baseline"]
