"""Exact kNN evaluation (recall@K + kNN accuracy) with hf_metric against faiss and scikit-learn, on CPU.

    python -m bench.bench_knn [--sizes 10000 50000 200000] [--repeats 3] [--out docs/benchmarks.md]

Data: N_query = N_ref = N random unit vectors of width 384 around 1000 class centres (float32). Each method
searches the k = 10 nearest references of every query by cosine similarity and computes recall@{1,5,10} and
the kNN accuracy/macro-F1 of a weighted 10-NN vote:

- hf_metric: `knn_metrics` (one blocked search for both metrics, float32 products);
- hf_metric, 2 calls: `recall_at_k` then `knn_classify` (two searches, as called separately);
- faiss: `IndexFlatIP` (exact; vectors are unit, so inner product = cosine) `search`, then the same metric code;
- sklearn: `NearestNeighbors(algorithm="brute", metric="cosine")`, then the same metric code.

Every run is a fresh subprocess that builds the data, then times the method and tracks its peak RSS (the
kernel's high-water mark, and a 2 ms psutil poll when the data build set that mark). "Extra" memory is the
peak minus the RSS just before the method ran, i.e. on top of the data and the imported libraries. Runs are
interleaved across methods, so background load hits them alike. A (method, size) whose time, extrapolated as
N^2 from the previous size, exceeds --max-seconds is skipped, and one whose first run exceeds
--max-repeat-seconds is not repeated.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench.docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("hf_metric", "hf_metric_2calls", "faiss", "sklearn")
LABELS = {
    "hf_metric": "hf_metric `knn_metrics`",
    "hf_metric_2calls": "hf_metric `recall_at_k` + `knn_classify`",
    "faiss": "faiss `IndexFlatIP`",
    "sklearn": "sklearn brute cosine",
}
KS = (1, 5, 10)
K = 10
MARK_START, MARK_END = "<!-- bench_knn:start -->", "<!-- bench_knn:end -->"


# --- worker: one method, one size, one process -----------------------------------------------------------------


def make_data(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around random class centres, built in slices so that no temporary outgrows the data."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((classes, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, classes, size=n)
    emb = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 16384):
        block = emb[start : start + 16384]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32)
        block *= 3.0 / np.sqrt(dim)  # noise 3x as long as the centre: recall@1 ~0.25 at N = 10k
        block += centres[labels[start : start + 16384]]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return emb, labels


def run_method(method: str, query, qy, ref, ry) -> dict[str, float]:
    from hf_metric.evaluation.metrics import (
        knn_classify,
        knn_metrics,
        knn_vote,
        macro_f1,
        neighbor_weights,
        recall_at_k,
        recall_from_neighbor_labels,
    )

    if method == "hf_metric":
        return knn_metrics(query, qy, ref, ry, k=K, ks=KS)
    if method == "hf_metric_2calls":
        recall = recall_at_k(query, qy, ref, ry, ks=KS)
        pred = knn_classify(query, ref, ry, k=K)
    else:
        if method == "faiss":
            import faiss

            index = faiss.IndexFlatIP(ref.shape[1])
            index.add(ref)
            sims, idx = index.search(query, max(K, *KS))
        else:
            from sklearn.neighbors import NearestNeighbors

            nn = NearestNeighbors(n_neighbors=max(K, *KS), algorithm="brute", metric="cosine").fit(ref)
            dist, idx = nn.kneighbors(query)
            sims = 1.0 - dist
        neighbor_labels = ry[idx]
        recall = recall_from_neighbor_labels(qy, neighbor_labels, KS)
        pred = knn_vote(neighbor_labels[:, :K], neighbor_weights(sims[:, :K], "cos"))
    out = {f"recall@{k}": v for k, v in recall.items()}
    out.update(knn_accuracy=float((pred == qy).mean()), knn_f1=macro_f1(pred, qy))
    return out


def worker(method: str, n: int, dim: int, classes: int) -> None:
    import psutil
    import torch  # imported before the baseline, like faiss and sklearn below: libraries are not "extra"

    if method == "faiss":
        import faiss  # noqa: F401
    if method == "sklearn":
        import sklearn.neighbors  # noqa: F401
    import hf_metric.evaluation.metrics  # noqa: F401

    proc = psutil.Process()
    ref, ry = make_data(n, dim, classes, seed=1)
    query, qy = make_data(n, dim, classes, seed=2)
    gc.collect()
    before = proc.memory_info().rss
    hwm_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak, done = [before], threading.Event()

    def poll() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], proc.memory_info().rss)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    load = os.getloadavg()[0]
    start, cpu_start = time.perf_counter(), time.process_time()
    metrics = run_method(method, query, qy, ref, ry)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    done.set()
    poller.join()
    hwm_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The kernel's high-water mark is exact but includes the data build; use it when the method raised it.
    peak_rss = hwm_after if hwm_after > hwm_before else max(peak[0], proc.memory_info().rss)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "extra_bytes": peak_rss - before,
                "data_bytes": query.nbytes + ref.nbytes,
                "load_before": load,
                "load_after": os.getloadavg()[0],
                "torch_threads": torch.get_num_threads(),
                "metrics": metrics,
            }
        )
    )


# --- driver ---------------------------------------------------------------------------------------------------


def run_once(method: str, n: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--n", str(n), "--dim", str(args.dim)]
    cmd += ["--classes", str(args.classes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{method} at N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt_mb(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="skip runs predicted to take longer")
    parser.add_argument("--max-repeat-seconds", type=float, default=60.0, help="no repeats after a longer run")
    parser.add_argument(
        "--out", default=str(ROOT / "docs" / "benchmarks.md"), help="markdown file to update ('' = none)"
    )
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.dim, args.classes)
        return

    command = "python -m bench.bench_knn " + " ".join(sys.argv[1:])
    wall = time.perf_counter()
    results: dict[tuple[str, int], list[dict]] = {}
    skipped: dict[tuple[str, int], str] = {}
    last: dict[str, tuple[int, float]] = {}  # method -> (size, median seconds) of its last completed size
    for n in args.sizes:
        active = []
        for m in args.methods:
            if m in last:
                prev_n, prev_s = last[m]
                predicted = prev_s * (n / prev_n) ** 2
                if predicted > args.max_seconds:
                    skipped[(m, n)] = f"skipped: ~{predicted:,.0f} s predicted ({prev_s:.1f} s at N={prev_n:,} x N^2)"
                    continue
            active.append(m)
        for rep in range(args.repeats):
            for m in list(active):
                r = run_once(m, n, args)
                results.setdefault((m, n), []).append(r)
                print(
                    f"N={n:>7,} {m:<17} run {rep + 1}: {r['seconds']:8.2f} s  extra {fmt_mb(r['extra_bytes'])} MiB  "
                    f"load {r['load_before']:.1f}->{r['load_after']:.1f}  {r['metrics']}",
                    flush=True,
                )
                if r["seconds"] > args.max_repeat_seconds:
                    active.remove(m)
        for m in args.methods:
            if (m, n) in results:
                last[m] = (n, statistics.median(r["seconds"] for r in results[(m, n)]))

    table = render(args, results, skipped, command, time.perf_counter() - wall)
    print("\n" + table)
    if args.out:
        write_section(Path(args.out), table, (MARK_START, MARK_END))


def render(args, results, skipped, command: str, wall: float) -> str:
    lines = [
        MARK_START,
        "## Exact kNN evaluation: hf_metric vs faiss vs scikit-learn (`bench/bench_knn.py`)",
        "",
        f"Command: `{command}` (whole run: {wall / 60:.1f} min).",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{platform.python_version()}, torch {_version('torch')} ({_first(results, 'torch_threads')} threads), "
        f"faiss-cpu {_version('faiss')}, scikit-learn {_version('sklearn')}.",
        f"Data: N queries and N references, dim {args.dim}, {args.classes} classes, float32 unit vectors; "
        f"k = {K} neighbours, recall@{{{','.join(map(str, KS))}}} + weighted {K}-NN accuracy.",
        "Time: median wall seconds over the runs (each in a fresh process); x faiss: that median / faiss's; "
        "CPU s: median CPU seconds of the process (all threads) during the call. "
        "Extra memory: peak RSS minus RSS before the call (data and libraries already loaded); "
        "'x data': extra / bytes of the query + reference embeddings.",
        "",
        "| N | method | runs | median s | x faiss | CPU s | extra MiB | data MiB | extra x data | recall@1 "
        "| recall@10 | kNN acc | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in args.sizes:
        faiss_runs = results.get(("faiss", n))
        faiss_median = statistics.median(r["seconds"] for r in faiss_runs) if faiss_runs else None
        for m in args.methods:
            if (m, n) in skipped:
                lines.append(f"| {n:,} | {LABELS[m]} | 0 | {skipped[(m, n)]} | | | | | | | | | |")
                continue
            runs = results.get((m, n))
            if not runs:
                continue
            med = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            extra = max(r["extra_bytes"] for r in runs)
            data = runs[0]["data_bytes"]
            mx = runs[0]["metrics"]
            ratio = f"{med / faiss_median:.2f}" if faiss_median else "-"
            load = max(max(r["load_before"], r["load_after"]) for r in runs)
            lines.append(
                f"| {n:,} | {LABELS[m]} | {len(runs)} | {med:.2f} | {ratio} | {cpu:.1f} | {fmt_mb(extra)} | "
                f"{fmt_mb(data)} | {extra / data:.2f} | {mx['recall@1']:.4f} | {mx['recall@10']:.4f} | "
                f"{mx['knn_accuracy']:.4f} | {load:.1f} |"
            )
    lines.append(MARK_END)
    return "\n".join(lines)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "n/a"


def _first(results, key: str):
    return next((runs[0][key] for runs in results.values() if runs), "?")


if __name__ == "__main__":
    main()
