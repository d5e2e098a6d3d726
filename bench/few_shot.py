"""Few-shot text classification: plain CE vs hf_metric (recipe and few-shot preset) vs SetFit, k rows per class.

    python -m bench.few_shot --datasets banking77 --ks 10 --seeds 0 1 2          # test protocol (the table)
    python -m bench.few_shot --protocol val --methods few_shot --overrides '{"training": {"num_epochs": 10}}'
    python -m bench.few_shot --render-only                                        # rewrite the docs section

For each dataset, k and seed, `sample_k_shot` draws k training rows per class (seeded per class; the samples of
one seed are nested: the 5-shot rows are the first 5 of the 10-shot rows). Every method trains on exactly those
rows and is scored on the full official test file (protocol `test`) or, to choose settings (protocol `val`), on
`--dev-per-class` other rows per class of the train file, drawn from the end of the same per-class permutation so
that they are never in any k-shot sample; the test file is then not read.

Methods (same packaged all-MiniLM-L6-v2 backbone, max_len 64):

- ``ce``: plain `transformers.Trainer`, linear head, CE, random batches (`bench/quality.py`'s baseline), with
  the few-shot preset's epochs and learning rate, so that it trains as long as the preset.
- ``hf_metric``: the recommended full-data recipe, `configs/metric_classifier_training.example.yaml` as is
  (it holds out `val_ratio` of the k rows, at least one per class, for checkpoint selection).
- ``few_shot``: the preset `configs/few_shot.yaml` (all k rows train), plus `--overrides`.
- ``setfit``: SetFit 1.2.0 defaults (contrastive pairs by oversampling, then a logistic-regression head), run
  in its own virtualenv (`bench/.venv-setfit`, created on first use) by `bench/setfit_runner.py`. Its default
  trains on every pair (~36,600 steps at k = 10 on Banking77, ~19 h on one CPU thread): on CPU pass
  `--setfit-iterations 20` (the SetFit paper's 20 pairs per row and side, 1,925 steps there).

Scored by the same code as `bench/quality.py` (accuracy, macro-F1; kNN accuracy against the k-shot rows where
the method has an embedding). Train s: wall time of the training call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from bench import quality, quality_render
from bench.docs_section import append_result, read_results, table_row, write_section

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PRESET = ROOT / "configs" / "few_shot.yaml"
RESULTS = ROOT / "docs" / "few_shot_results.jsonl"
SETFIT_VENV = ROOT / "bench" / ".venv-setfit"
SETFIT_REQUIREMENTS = ["setfit==1.2.0", "torch==2.13.0"]
"""Pinned: torch 2.13.0 is what the main environment has (its CPU build), so pip must keep it."""
METHODS = ("ce", "hf_metric", "few_shot", "setfit")
MARKS = ("<!-- few-shot:start -->", "<!-- few-shot:end -->")


# ----------------------------------------------------------------------------------------------------- data
def class_permutations(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Each class's row indices in a seeded random order (one generator, classes in sorted order)."""
    rng = np.random.default_rng(seed)
    return {c: rng.permutation(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}


def sample_k_shot(labels: np.ndarray, k: int, seed: int, dev_per_class: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(k-shot rows, dev rows): the first k and the last `dev_per_class` rows of each class's permutation.

    Nested over k for one seed, and the dev rows are outside every k-shot sample as long as a class has at
    least max(k) + dev_per_class rows (checked)."""
    shots, dev = [], []
    for cls, rows in class_permutations(labels, seed).items():
        if len(rows) < k + dev_per_class:
            raise SystemExit(f"class {cls!r} has {len(rows)} rows: fewer than k={k} + {dev_per_class} dev rows")
        shots.append(rows[:k])
        dev.append(rows[len(rows) - dev_per_class :])
    return np.sort(np.concatenate(shots)), np.sort(np.concatenate(dev))


def read_texts_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pq.read_table(path, columns=["text", "label"])
    texts = np.array(table.column("text").to_pylist(), dtype=object)
    return texts, np.array([str(v).strip() for v in table.column("label").to_pylist()], dtype=object)


def build_split(args: argparse.Namespace, dataset: str, k: int, seed: int, workdir: Path) -> dict[str, Any]:
    """The `bench/quality.py` split dict for one cell: k-shot training rows, evaluation rows, Parquet files."""
    texts, labels = read_texts_labels(Path(args.data_root) / dataset / "train.parquet")
    classes = sorted(set(labels.tolist()))[: args.classes] if args.classes else None
    if classes:
        keep = np.isin(labels, classes)
        texts, labels = texts[keep], labels[keep]
    shots, dev = sample_k_shot(labels, k, seed, args.dev_per_class if args.protocol == "val" else 0)
    if args.protocol == "val":
        eval_texts, eval_labels = texts[dev], labels[dev]
    else:
        eval_texts, eval_labels = read_texts_labels(Path(args.data_root) / dataset / "test.parquet")
        if classes:
            keep = np.isin(eval_labels, classes)
            eval_texts, eval_labels = eval_texts[keep], eval_labels[keep]
    if args.eval_rows and len(eval_texts) > args.eval_rows:  # smoke runs: a seeded subset of the evaluation rows
        pick = np.sort(np.random.default_rng(0).choice(len(eval_texts), args.eval_rows, replace=False))
        eval_texts, eval_labels = eval_texts[pick], eval_labels[pick]
    workdir.mkdir(parents=True, exist_ok=True)
    parquet, eval_parquet = workdir / "train.parquet", workdir / "eval.parquet"
    pq.write_table(pa.table({"text": texts[shots].tolist(), "label": labels[shots].tolist()}), parquet)
    pq.write_table(pa.table({"text": eval_texts.tolist(), "label": eval_labels.tolist()}), eval_parquet)
    return {
        "train_texts": texts[shots],
        "train_labels": labels[shots],
        "eval_texts": eval_texts,
        "eval_labels": eval_labels,
        "parquet": parquet,
        "eval_parquet": eval_parquet,
        "protocol": "test",  # quality.py's hf_metric runs keep their config's own val_ratio
    }


# --------------------------------------------------------------------------------------------------- methods
def preset_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = json.loads(args.overrides) if args.overrides else {}
    if args.max_steps > 0:
        overrides = quality.deep_update(overrides, {"scheduler": {"num_training_steps": args.max_steps}})
    return overrides


def run_method(method: str, split: dict[str, Any], args: argparse.Namespace, seed: int, workdir: Path):
    """(metrics, train seconds, extra row fields) of one method on one split."""
    preset = quality.deep_update(yaml.safe_load(PRESET.read_text()), preset_overrides(args))
    steps = {"scheduler": {"num_training_steps": args.max_steps}} if args.max_steps > 0 else {}
    if method == "ce":
        epochs, lr = preset["training"]["num_epochs"], preset["optimizer"]["learning_rate"]
        metrics, seconds = quality.run_baseline(split, epochs, workdir, seed, float(lr), args.max_steps)
        return metrics, seconds, {"epochs": epochs, "learning_rate": float(lr)}
    if method == "hf_metric":
        metrics, seconds = quality.run_hf_metric(split, steps, None, workdir, method, seed=seed)
        return metrics, seconds, {}
    if method == "few_shot":
        overrides = preset_overrides(args)
        metrics, seconds = quality.run_hf_metric(split, overrides, None, workdir, method, seed=seed, config=PRESET)
        return metrics, seconds, {"overrides": json.loads(args.overrides) if args.overrides else {}}
    return run_setfit(split, args, seed, workdir)


def ensure_setfit_venv(venv: Path) -> Path:
    """The python of a virtualenv holding setfit 1.2.0 (created once). It sees the main environment's packages
    (torch, transformers, sentence-transformers), so pip only adds setfit; the dry run proves it keeps torch."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", *SETFIT_REQUIREMENTS]
    plan = subprocess.run([*pip, "--dry-run"], check=True, capture_output=True, text=True).stdout
    would = next((line for line in plan.splitlines() if line.startswith("Would install")), "")
    if any(name in would for name in ("torch-", "nvidia")):
        raise SystemExit(f"pip would replace torch in {venv}: {would}")
    subprocess.run(pip, check=True)
    return python


def run_setfit(split: dict[str, Any], args: argparse.Namespace, seed: int, workdir: Path):
    from hf_metric.evaluation.metrics import accuracy, macro_f1
    from hf_metric.packaged_models import resolve_model_path

    python = ensure_setfit_venv(Path(args.setfit_venv))
    out = workdir / "setfit.json"
    command = [
        str(python),
        str(ROOT / "bench" / "setfit_runner.py"),
        "--train", str(split["parquet"]),
        "--eval", str(split["eval_parquet"]),
        "--model", resolve_model_path(quality.MODEL_NAME),
        "--seed", str(seed),
        "--threads", str(args.threads),
        "--max-steps", str(args.max_steps),
        "--out", str(out),
    ]  # fmt: skip
    if args.setfit_iterations:
        command += ["--num-iterations", str(args.setfit_iterations)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
    subprocess.run(command, check=True, env=env, cwd=workdir)
    result = json.loads(out.read_text())
    names = sorted(set(split["train_labels"].tolist()))
    index = {n: i for i, n in enumerate(names)}
    predicted = np.array([index[p] for p in result["predictions"]])
    truth = np.array([index.get(v, -1) for v in split["eval_labels"]])
    metrics = {"accuracy": accuracy(predicted, truth), "macro_f1": macro_f1(predicted, truth)}
    return metrics, result["seconds"], {"setfit": result["versions"], "pairs": result["pairs"]}


# ------------------------------------------------------------------------------------------------------ docs
def _cell_rows(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        cells.setdefault((r["method"], r["k"]), []).append(r)
    return cells


def _percent_by_seed(rows: list[dict[str, Any]]) -> dict[int, float]:
    return {r["seed"]: 100 * r["accuracy"] for r in rows}


def _arm_cell(values: dict[int, float]) -> str:
    """'mean +- std (seed 0 / seed 1 / ...)' of per-seed accuracies in %, '-' for an arm that did not run."""
    if not values:
        return "-"
    spread = " / ".join(f"{values[s]:.2f}" for s in sorted(values))
    return quality_render.mean_std(list(values.values()), 2) + (f" ({spread})" if len(values) > 1 else "")


def comparison_table(cells: dict[tuple, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """Preset vs SetFit per (dataset, k): both means, the difference at every seed both ran (paired: same k-shot
    sample) and its mean, the training-time ratio, and the other two arms for context.

    Generated from the same rows as the per-run tables so that the headline comparison cannot drift from them."""
    lines = [
        "Preset vs SetFit, seed by seed (test accuracy %, mean +- sample std; per-seed values in brackets; "
        "the difference is paired by seed, i.e. by k-shot sample, and averaged over the seeds both ran):",
        "",
        "| dataset, k | seeds | few-shot preset | SetFit | preset - SetFit (per seed) | preset time / SetFit time | "
        "plain CE | full-data recipe |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (dataset, k), by_method in cells.items():
        preset, setfit = by_method.get("few_shot", []), by_method.get("setfit", [])
        if not preset or not setfit:
            continue
        mine, theirs = _percent_by_seed(preset), _percent_by_seed(setfit)
        paired = sorted(set(mine) & set(theirs))
        differences = [mine[s] - theirs[s] for s in paired]
        per_seed = " / ".join(f"{d:+.2f}" for d in differences)
        preset_s, setfit_s = np.mean([r["seconds"] for r in preset]), np.mean([r["seconds"] for r in setfit])
        seeds = ", ".join(str(s) for s in sorted(set(mine) | set(theirs)))
        lines.append(
            table_row(
                [
                    f"{dataset}, k = {k}",
                    seeds,
                    _arm_cell(mine),
                    _arm_cell(theirs),
                    f"{np.mean(differences):+.2f} ({per_seed})" if differences else "-",
                    f"{preset_s / setfit_s:.2f}x ({preset_s:,.0f} vs {setfit_s:,.0f} s)",
                    _arm_cell(_percent_by_seed(by_method.get("ce", []))),
                    _arm_cell(_percent_by_seed(by_method.get("hf_metric", []))),
                ]
            )
        )
    return [*lines, ""]


def write_docs(results: Path, docs: Path) -> None:
    """Rewrite the few-shot section: per dataset and k, the latest test run, mean +- std over seeds per method
    (a run of one k does not hide an earlier run of another); the preset-vs-SetFit comparison of those runs;
    then every validation (preset selection) row."""
    rows = read_results(results)
    lines = [MARKS[0], "## Few-shot: plain CE vs hf_metric vs SetFit (`bench/few_shot.py`)", ""]
    tests = [r for r in rows if r["protocol"] == "test"]
    latest = {(r["dataset"], r["k"]): r["run_id"] for r in tests}
    compared: dict[tuple, dict[str, list[dict[str, Any]]]] = {}
    for dataset, run_id in dict.fromkeys((d, run_id) for (d, _), run_id in sorted(latest.items())):
        run = [
            r for r in tests if (r["dataset"], r["run_id"]) == (dataset, run_id) and latest[dataset, r["k"]] == run_id
        ]
        for (method, k), rs in _cell_rows(run).items():
            compared.setdefault((dataset, k), {})[method] = rs
        commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in run))
        loads = [r["load_avg"] for r in run]
        lines += [
            f"### {dataset}, run {run[0]['run_id']} ({run[0]['date']})",
            "",
            f"Commands (one run id; several commands ran side by side): {commands}. {run[0]['machine']}, "
            f"{run[0]['threads']} torch thread(s) per process, load "
            f"average {min(loads)}-{max(loads)}. {run[0]['classes']} classes, k training rows per class, "
            f"evaluated on {run[0]['eval_rows']} test rows. Mean +- sample std over seeds.",
            "",
            "| method | k | seeds | test accuracy | test macro-F1 | train s | x SetFit time |",
            "|---|---|---|---|---|---|---|",
        ]
        cells = _cell_rows(run)
        for (method, k), rs in sorted(cells.items(), key=lambda item: (item[0][1], METHODS.index(item[0][0]))):
            setfit = cells.get(("setfit", k))
            ratio = np.mean([r["seconds"] for r in rs]) / np.mean([r["seconds"] for r in setfit]) if setfit else None
            lines.append(
                f"| {method} | {k} | {', '.join(str(r['seed']) for r in rs)} | "
                f"{quality_render.mean_std([r['accuracy'] for r in rs], 2, 100)} | "
                f"{quality_render.mean_std([r['macro_f1'] for r in rs], 2, 100)} | "
                f"{quality_render.mean_std([r['seconds'] for r in rs], 0)} | {f'{ratio:.2f}' if ratio else '-'} |"
            )
        lines.append("")
    lines += comparison_table(dict(sorted(compared.items())))
    vals = [r for r in rows if r["protocol"] == "val"]
    if vals:
        lines += [
            "### Choosing the few-shot preset (validation rows of train outside every k-shot sample; no test)",
            "",
            "Each row: one method (and `--overrides` of `configs/few_shot.yaml` of the time) trained on a k-shot "
            "sample, scored on other rows of the train file (`--protocol val`). Runs shared the 2 cores with other "
            "work (load avg column), so their times are only roughly comparable.",
            "",
            "| method | overrides | note | dataset | k | seed | dev rows | accuracy | macro-F1 | head-only acc | "
            "train s | load avg |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in vals:
            overrides = json.dumps(r.get("overrides") or {}).replace("|", "/")
            head = f"{r['head_accuracy']:.4f}" if "head_accuracy" in r else "-"
            cells = [r["method"], f"`{overrides}`", r.get("note", ""), r["dataset"], r["k"], r["seed"], r["eval_rows"]]
            scores = [f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", head, f"{r['seconds']:.0f}", r["load_avg"]]
            lines.append(table_row(cells + scores))
        lines.append("")
    lines.append(MARKS[1])
    write_section(docs, "\n".join(lines), MARKS)


# ------------------------------------------------------------------------------------------------------ main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["banking77", "hwu64"], help="folders under --data-root")
    parser.add_argument("--data-root", default=str(DATA))
    parser.add_argument("--ks", nargs="+", type=int, default=[5, 10, 20], help="training rows per class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="k-shot sample and training seeds")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--protocol", choices=["test", "val"], default="test", help="val: score on dev rows of train")
    parser.add_argument("--dev-per-class", type=int, default=10, help="protocol val: evaluation rows per class")
    parser.add_argument("--overrides", default=None, help="JSON: overrides of configs/few_shot.yaml (few_shot)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (SetFit's too)")
    parser.add_argument("--max-steps", type=int, default=-1, help="smoke runs: stop every training after N steps")
    parser.add_argument("--classes", type=int, default=None, help="smoke runs: only the first N classes")
    parser.add_argument("--eval-rows", type=int, default=None, help="smoke runs: a seeded subset of evaluation rows")
    parser.add_argument(
        "--setfit-iterations", type=int, default=None, help="SetFit num_iterations (default: its oversampling)"
    )
    parser.add_argument("--setfit-venv", default=str(SETFIT_VENV))
    parser.add_argument(
        "--arrays", default=None, help="folder: save eval logits and embeddings per cell (bench/fusion_grid.py)"
    )
    parser.add_argument("--results", default=str(RESULTS), help="JSON lines, appended")
    parser.add_argument("--note", default=None, help="a remark shown next to the validation rows")
    parser.add_argument("--run-id", default=None, help="group rows of one comparison (e.g. processes side by side)")
    parser.add_argument("--docs", default=str(ROOT / "docs" / "benchmarks.md"), help="update this file ('' = no)")
    parser.add_argument("--render-only", action="store_true", help="only rewrite the docs section from --results")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.render_only:
        write_docs(Path(args.results), Path(args.docs))
        return
    torch.set_num_threads(args.threads)
    run_id = args.run_id or time.strftime("%Y-%m-%dT%H:%M:%S")
    command = "python -m bench.few_shot " + " ".join(sys.argv[1:])
    for dataset in args.datasets:
        for k in args.ks:
            for seed in args.seeds:
                for method in args.methods:
                    with tempfile.TemporaryDirectory(prefix="hf_metric_few_shot_") as tmp:
                        split = build_split(args, dataset, k, seed, Path(tmp) / "data")
                        if args.arrays:
                            split["arrays_dir"] = Path(args.arrays) / f"{args.protocol}_{dataset}_k{k}_seed{seed}"
                            split["arrays_dir"].mkdir(parents=True, exist_ok=True)
                        start = time.perf_counter()
                        metrics, seconds, extra = run_method(method, split, args, seed, Path(tmp))
                        total = time.perf_counter() - start
                    row = {
                        "run_id": run_id,
                        "command": command,
                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "protocol": args.protocol,
                        "dataset": dataset,
                        "method": method,
                        "k": k,
                        "seed": seed,
                        "classes": len(set(split["train_labels"].tolist())),
                        "train_rows": len(split["train_texts"]),
                        "eval_rows": len(split["eval_texts"]),
                        **{key: round(v, 4) for key, v in metrics.items()},
                        "seconds": round(seconds, 1),
                        "total_seconds": round(total, 1),
                        "max_steps": args.max_steps,
                        **extra,
                        **({"note": args.note} if args.note else {}),
                        "threads": args.threads,
                        "load_avg": round(os.getloadavg()[0], 2),
                        "machine": f"{os.cpu_count()} CPU, {platform.machine()}",
                    }
                    append_result(args.results, row)
    if args.docs:
        write_docs(Path(args.results), Path(args.docs))


if __name__ == "__main__":
    main()
