"""Choose a lever on validation, then test it over seeds: `bench/quality.py` runs in parallel processes.

Made for a machine with room for many runs at once (a GPU box): phase 1 trains every `--val` spec on the
validation protocol (seed 42, the test file is not read); the rule fixed before the results are seen picks the
spec with the best validation accuracy (the model's fused prediction), and keeps the control (the first spec)
unless the pick beats it by `--min-gain`. Phase 2 trains the plain-Trainer baseline, the control and the pick on
the full train file, one process per (spec, seed), and scores each once on the test file. Rows go to
`--results` with run ids `<run-id>-val` and `<run-id>-test`; `python -m bench.quality --render-only` renders them.

A spec is a `bench/quality.VARIANTS` name (or `baseline`), optionally `@epochs`: `hf_metric@10`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.docs_section import read_results
from bench.quality import SEED
from bench.quality_render import spec

ROOT = Path(__file__).resolve().parents[1]


def spec_args(spec: str) -> list[str]:
    """`name@epochs` -> quality.py's `--variants name [--epochs E]`."""
    name, _, epochs = spec.partition("@")
    return ["--variants", name] + (["--epochs", epochs] if epochs else [])


def run_all(jobs: list[list[str]], parallel: int, log_dir: Path) -> None:
    """Run each argument list as `python -m bench.quality ...`, `parallel` at a time; stop on the first failure."""

    def one(i_args: tuple[int, list[str]]) -> int:
        i, args = i_args
        with open(log_dir / f"job{i:02d}.log", "w") as log:
            cmd = [sys.executable, str(ROOT / "bench" / "quality.py"), *args]
            log.write(" ".join(cmd) + "\n")
            log.flush()
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode

    with ThreadPoolExecutor(parallel) as pool:
        codes = list(pool.map(one, enumerate(jobs)))
    failed = [i for i, c in enumerate(codes) if c != 0]
    if failed:
        raise SystemExit(f"quality.py failed in jobs {failed}: see {log_dir}/jobNN.log")


def pick(rows: list[dict], control: str, min_gain: float) -> str:
    """The spec with the best validation accuracy if it beats the control's by `min_gain`, else the control."""
    by_spec = {r["spec"]: r["accuracy"] for r in rows}
    best = max(by_spec, key=lambda s: (by_spec[s], s == control))
    return best if by_spec[best] - by_spec[control] >= min_gain else control


def read_rows(results: Path, run_id: str) -> list[dict]:
    rows = [r for r in read_results(results) if r["run_id"] == run_id]
    for r in rows:
        r["spec"] = spec(r)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--val", nargs="+", required=True, help="specs; the first is the control")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--min-gain", type=float, default=0.003, help="accuracy the pick must add to the control's")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per process")
    parser.add_argument("--results", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--logs", default="quality_sweep_logs")
    parser.add_argument("--max-steps", type=int, default=-1, help="smoke runs")
    args = parser.parse_args()
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    launched_by = "python -m bench.quality_sweep " + " ".join(sys.argv[1:])
    common = ["--data", args.data, "--threads", str(args.threads), "--results", args.results, "--docs", ""]
    common += ["--launched-by", launched_by]
    common += ["--max-steps", str(args.max_steps)] if args.max_steps > 0 else []
    start = time.time()
    val_id = f"{args.run_id}-val"
    run_all(
        [[*common, "--protocol", "val", "--run-id", val_id, *spec_args(s)] for s in args.val], args.parallel, log_dir
    )
    val_rows = read_rows(Path(args.results), val_id)
    for r in sorted(val_rows, key=lambda r: -r["accuracy"]):
        print(
            f"val {r['spec']:>16}: accuracy {r['accuracy']:.4f}  head {r.get('head_accuracy', 0):.4f}  "
            f"kNN {r['knn_accuracy']:.4f}  {r['seconds']:.0f} s",
            flush=True,
        )
    chosen = pick(val_rows, args.val[0], args.min_gain)
    print(
        f"picked on validation: {chosen} (control {args.val[0]}, min gain {args.min_gain}); "
        f"{time.time() - start:.0f} s so far",
        flush=True,
    )
    specs = list(dict.fromkeys(["baseline", args.val[0], chosen]))
    test_id = f"{args.run_id}-test"
    jobs = [
        [
            *common,
            "--protocol",
            "test",
            "--seeds",
            str(args.seeds),
            "--only-seed",
            str(SEED + i),
            "--run-id",
            test_id,
            *spec_args(s),
        ]
        for i in range(args.seeds)
        for s in specs
    ]
    run_all(jobs, args.parallel, log_dir)
    for r in read_rows(Path(args.results), test_id):
        print(
            f"test {r['spec']:>16} seed {r['seed']}: accuracy {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  "
            f"kNN {r['knn_accuracy']:.4f}  {r['seconds']:.0f} s",
            flush=True,
        )
    print(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
