"""Docs tables of `bench/quality.py` results: the latest test comparison, the seeds tables, the validation
ablations and the `bench/quality_sweep.py` runs, rendered from the result rows alone (`--render-only`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bench.docs_section import read_results, write_section

MARKS = ("<!-- quality:start -->", "<!-- quality:end -->")
FUSION_PROBE = (0.3, 0.05)
"""(weight, temperature) of the offline kNN-fusion column of the ablation table (the example config's values)."""


def _fused_accuracy(npz: Path) -> str:
    """Accuracy / macro-F1 of the head's logits fused with the kNN vote at `FUSION_PROBE`, from saved arrays."""
    from bench.fusion_grid import fused_scores
    from bench.quality import KNN_K

    weight, temperature = FUSION_PROBE
    return fused_scores(np.load(npz), [weight], temperature, KNN_K)[0]


def _dataset(row: dict[str, Any]) -> str:
    return row.get("dataset", "banking77")  # rows written before --data was recorded ran on Banking77


def mean_std(values: list[float], digits: int = 4, scale: float = 1.0) -> str:
    """'mean +- std' (sample std, ddof 1) of `values` times `scale`; just the value when there is one."""
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.{digits}f} +- {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v[0]:.{digits}f}"


def spec(row: dict[str, Any]) -> str:
    """`variant`, or `variant@epochs` for a row trained with --epochs (the notation of `bench/quality_sweep.py`)."""
    return row["variant"] + (f"@{row['epochs']:g}" if row.get("epochs") is not None else "")


def _seeds_body(run: list[dict[str, Any]], split: str = "test") -> list[str]:
    """Mean +- std over the seeds of every recipe of one run (scored on `split`), and whether each beat the
    baseline every time."""
    lines = [
        f"| recipe | seeds | {split} accuracy | {split} macro-F1 | kNN accuracy | train s |",
        "|---|---|---|---|---|---|",
    ]
    by_spec = {
        v: sorted((r for r in run if spec(r) == v), key=lambda r: r["seed"]) for v in dict.fromkeys(map(spec, run))
    }
    for name, rs in by_spec.items():
        acc = [r["accuracy"] for r in rs]
        lines.append(
            f"| {name} | {', '.join(str(r['seed']) for r in rs)} | {mean_std(acc)} "
            f"({min(acc):.4f}-{max(acc):.4f}) | {mean_std([r['macro_f1'] for r in rs])} | "
            f"{mean_std([r['knn_accuracy'] for r in rs])} | {mean_std([r['seconds'] for r in rs], 0)} |"
        )
    base = [r["accuracy"] for r in by_spec.get("baseline", [])]
    for name, rs in by_spec.items():
        if base and name != "baseline":
            above = min(r["accuracy"] for r in rs) > max(base)
            lines.append(f"\n{name}: every seed above every baseline seed: {'yes' if above else 'no'}.")
    return lines


def _load_range(run: list[dict[str, Any]]) -> str:
    return f"{min(r['load_avg'] for r in run)}-{max(r['load_avg'] for r in run)}"


def seeds_tables(rows: list[dict[str, Any]]) -> list[str]:
    """One table per multi-seed test run (one process may have run only some of the seeds: `--only-seed`)."""
    lines: list[str] = []
    for dataset, run_id in dict.fromkeys((_dataset(r), r["run_id"]) for r in rows):
        run = [r for r in rows if (_dataset(r), r["run_id"]) == (dataset, run_id)]
        commands = " and, at the same time, ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in run))
        nested = run[0]["protocol"] == "nested"
        cap = run[0].get("max_train_per_class")
        scored = (
            "Scored on the validation rows (the stratified 10 % of the train file, seed 42; the test file is not "
            "read); hf_metric trains on the other rows"
            + (f", at most {cap} per class (seeded draw)," if cap else "")
            + " and holds out its own `val_ratio` of them for checkpoint selection. "
            if nested
            else ""
        )
        lines += [
            f"### {dataset}: {len({r['seed'] for r in run})} seeds per recipe (run {run_id}"
            f"{', validation' if nested else ''})",
            "",
            f"Command: {commands}; {run[0]['machine']}, {run[0]['threads']} torch thread(s) per process, load "
            f"average {_load_range(run)}. {scored}Mean +- sample std over "
            "seeds (training seed: split, batches, head init, dropout); min-max of the accuracy in brackets.",
            "",
            *_seeds_body(run, "validation" if nested else "test"),
            "",
        ]
    return lines


def sweep_tables(rows: list[dict[str, Any]]) -> list[str]:
    """Per `bench/quality_sweep.py` run: the validation table that chose, then the test seeds of the choice."""
    lines: list[str] = []
    for sweep in dict.fromkeys(r["run_id"].rsplit("-", 1)[0] for r in rows):
        val = [r for r in rows if r["run_id"] == f"{sweep}-val"]
        test = [r for r in rows if r["run_id"] == f"{sweep}-test"]
        test.sort(key=lambda r: (spec(r) != "baseline", spec(r), r["seed"]))  # processes finish in any order
        first = (val or test)[0]
        lines += [
            f"### {_dataset(first)}: {'lever sweep' if val else 'run'} {sweep} on {first['machine']}",
            "",
            f"Command: `{first['launched_by']}`; {first['threads']} torch thread(s) per process, the processes of "
            "a phase at once on the one device."
            + (
                " Validation (seed 42, 90 % of train / stratified 10 %; the test file is not read): each lever alone "
                "on top of the example config; 'fused' is the model's prediction. The pick is the best fused "
                "validation accuracy, kept only if it beats the control (the first spec) by the sweep's --min-gain; "
                f"load average {_load_range(val)}."
                if val
                else ""
            ),
            "",
        ]
        if val:
            lines += [
                "| spec | overrides | head acc / F1 | fused acc / F1 | kNN acc | train s |",
                "|---|---|---|---|---|---|",
            ]
            for r in sorted(val, key=lambda r: -r["accuracy"]):
                lines.append(
                    f"| {spec(r)} | `{_overrides_cell(r)}` | {r['head_accuracy']:.4f} / {r['head_macro_f1']:.4f} | "
                    f"{r['accuracy']:.4f} / {r['macro_f1']:.4f} | {r['knn_accuracy']:.4f} | {r['seconds']:.0f} |"
                )
            lines.append("")
        if test:
            lines += [
                f"Test file, once per (recipe, seed){', the specs the rule sent on' if val else ''}: load average "
                f"{_load_range(test)}.",
                "",
                *_seeds_body(test),
                "",
            ]
    return lines


def _overrides_cell(row: dict[str, Any]) -> str:
    """A row's config overrides as one table cell ('|' would split the cell)."""
    return json.dumps(row["overrides"]).replace("|", "/") if row["overrides"] else "-"


def _epochs_label(epochs: float | None) -> str:
    """Rows run without --epochs trained for the config's own num_epochs, which the row does not record."""
    return f"{epochs:g} epochs" if epochs is not None else "the config's epochs"


def ablation_tables(vals: list[dict[str, Any]], arrays: Path | None) -> list[str]:
    """One table per (dataset, epochs, protocol) of validation rows: ablations are only comparable within one."""
    lines: list[str] = []
    w, t = FUSION_PROBE
    for dataset, epochs, protocol in dict.fromkeys((_dataset(r), r["epochs"], r["protocol"]) for r in vals):
        nested = protocol == "nested"
        lines += [
            f"### Ablations on {dataset}, {_epochs_label(epochs)}{', nested test protocol' if nested else ''} "
            "(validation split of train only; the test file is not read)",
            "",
            "Each lever alone on top of the example config of the time, trained on 90 % of train "
            + (
                "(hf_metric holding out its own 10 % of those rows for checkpoint selection, as on the test "
                "protocol, unless the lever changes that) "
                if nested
                else ""
            )
            + "and scored on the stratified 10 % (seed 42). 'accuracy': the head alone; 'fused': the head's "
            "logits fused with the kNN vote, the model's prediction where the config fuses (rows that record the "
            "head apart), else computed afterwards from the saved logits and embeddings (weight "
            f"{w}, temperature {t}; `bench/fusion_grid.py` tunes these values on the same validation arrays). The "
            "load avg column says whether a run shared the "
            "2 cores with other work.",
            "",
            "| variant | overrides | accuracy | macro-F1 | fused acc / F1 | kNN acc | kNN F1 | load avg |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in vals:
            if (_dataset(r), r["epochs"], r["protocol"]) != (dataset, epochs, protocol):
                continue
            if "head_accuracy" in r:  # the run's own prediction is the fused one; the head is recorded apart
                head_acc, head_f1 = r["head_accuracy"], r["head_macro_f1"]
                fused = f"{r['accuracy']:.4f} / {r['macro_f1']:.4f}"
            else:
                head_acc, head_f1 = r["accuracy"], r["macro_f1"]
                npz = arrays / "val" / f"{r['variant']}.npz" if arrays else None
                fused = _fused_accuracy(npz) if npz and npz.is_file() else r.get("fused", "-")
            lines.append(
                f"| {r['variant']} | `{_overrides_cell(r)}` | {head_acc:.4f} | {head_f1:.4f} | {fused} | "
                f"{r['knn_accuracy']:.4f} | {r['knn_f1']:.4f} | {r['load_avg']} |"
            )
        lines.append("")
    return lines


def write_docs(results: Path, docs: Path, arrays: Path | None) -> None:
    """Rewrite the quality section of `docs`: the latest test comparison and every validation ablation."""
    rows = read_results(results)
    sweeps = [r for r in rows if r.get("launched_by")]
    rows = [r for r in rows if not r.get("launched_by")]
    tests = [r for r in rows if r["protocol"] == "test" and r.get("seeds", 1) == 1 and _dataset(r) == "banking77"]
    latest = tests[-1]["run_id"] if tests else None
    lines = [MARKS[0], "## CE + metric learning vs plain cross-entropy on Banking77 (`bench/quality.py`)", ""]
    if latest:
        run = [r for r in tests if r["run_id"] == latest]
        commands = list(dict.fromkeys(r.get("command", "python -m bench.quality") for r in run))
        together = " and, at the same time, ".join(f"`{c}`" for c in commands)
        side_by_side = (
            " (one process per recipe, side by side, so both saw the same machine load)" if len(commands) > 1 else ""
        )
        lines += [
            f"Command: {together}{side_by_side}. Run {latest}; {run[0]['machine']}, "
            f"{run[0]['threads']} torch thread(s) per process. Full Banking77 train (10,003 rows; hf_metric holds "
            "out its `val_ratio` for checkpoint selection), official test (3,080 rows), packaged all-MiniLM-L6-v2, "
            "batch 32, lr 1e-4, linear warm-up 10 % / decay, max_len 64. kNN: weighted 10-NN of test rows against the "
            "embeddings of all training rows. Train s: wall time of the training call (evaluations, checkpoints "
            "and the kNN reference included).",
            "",
            "| recipe | test accuracy | test macro-F1 | head alone acc / F1 | kNN accuracy | kNN macro-F1 | train s "
            "| x baseline time |",
            "|---|---|---|---|---|---|---|---|",
        ]
        base = next((r for r in run if r["variant"] == "baseline"), None)
        for r in run:
            ratio = f"{r['seconds'] / base['seconds']:.2f}" if base else "-"
            head = f"{r.get('head_accuracy', r['accuracy']):.4f} / {r.get('head_macro_f1', r['macro_f1']):.4f}"
            lines.append(
                f"| {r['variant']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {head} | {r['knn_accuracy']:.4f} | "
                f"{r['knn_f1']:.4f} | {r['seconds']:.0f} | {ratio} |"
            )
        lines.append("")
    lines += seeds_tables([r for r in rows if r["protocol"] in ("test", "nested") and r.get("seeds", 1) > 1])
    lines += ablation_tables([r for r in rows if r["protocol"] in ("val", "nested") and r.get("seeds", 1) == 1], arrays)
    lines += sweep_tables(sweeps)
    lines.append(MARKS[1])
    section = "\n".join(lines)
    write_section(docs, section, MARKS)
