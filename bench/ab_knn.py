"""Interleaved A/B timing of the exact kNN evaluation against faiss, in one process.

    python -m bench.ab_knn [--sizes 10000 30000] [--repeats 5] [--baseline GIT_REF]

On a shared machine absolute times drift with other people's load, so `bench/bench_knn.py` (fresh process per
run) needs many runs to compare two methods. This script instead alternates faiss, hf_metric (and, with
--baseline, hf_metric's `neighbors.py` as of GIT_REF) on the same data in one process, and reports the median
of the per-round ratios to faiss: each round's methods ran within seconds of each other, under the same load.
Methods and data are those of `bench_knn.py` (its `make_data` and `run_method`); memory is not measured here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import hf_metric.evaluation.metrics
from bench.bench_knn import make_data, run_method

ROOT = Path(__file__).resolve().parent.parent


def baseline_search(ref: str):
    """`topk_neighbors` from hf_metric/neighbors.py as it was at git `ref`, loaded as a separate module."""
    source = subprocess.run(
        ["git", "show", f"{ref}:hf_metric/neighbors.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "neighbors_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("neighbors_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.topk_neighbors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="also time hf_metric with neighbors.py from this git ref")
    args = parser.parse_args()
    current = hf_metric.evaluation.metrics.topk_neighbors
    methods = {
        "faiss": ("faiss", current),
        "hf_metric": ("hf_metric", current),
    }
    if args.baseline:
        methods[f"hf_metric@{args.baseline}"] = ("hf_metric", baseline_search(args.baseline))
    for n in args.sizes:
        ref, ry = make_data(n, 384, 1000, seed=1)
        query, qy = make_data(n, 384, 1000, seed=2)
        times: dict[str, list[float]] = {name: [] for name in methods}
        results = {}
        for _ in range(args.repeats):
            for name, (method, search) in methods.items():
                hf_metric.evaluation.metrics.topk_neighbors = search  # what knn_metrics calls
                start = time.perf_counter()
                results[name] = run_method(method, query, qy, ref, ry)
                times[name].append(time.perf_counter() - start)
        hf_metric.evaluation.metrics.topk_neighbors = current
        print(f"N={n:,} ({args.repeats} rounds, load avg now {os.getloadavg()[0]:.1f})")
        for name, runs in times.items():
            ratio = statistics.median(t / f for t, f in zip(runs, times["faiss"], strict=True))
            same = all(results[name][key] == value for key, value in results["faiss"].items())
            print(
                f"  {name:<24} median {statistics.median(runs):7.2f} s   median ratio to faiss {ratio:.3f}   "
                f"metrics equal to faiss's: {same}   runs {[round(t, 2) for t in runs]}"
            )


if __name__ == "__main__":
    main()
