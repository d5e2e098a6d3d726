"""Approximate kNN indexes (faiss IVF / HNSW via `hf_metric.evaluation.ann`) against exact search.

    python -m bench.bench_ann [--n 1000000] [--queries 10000] [--out docs/benchmarks.md]

Data: N reference and Q query rows of width 384 drawn around N / 100 cluster centres (clustered Gaussian,
float32, so that near neighbours are meaningful and recall is not trivially high or low). Exact: the top 10 of
every query by `neighbors.topk_neighbors` (cosine). Each index variant is built once over the references
(build seconds), then searches the queries (query seconds, queries per second) through `IndexedSearch`, the
code path of the kNN pipeline; recall@10 is the share of the exact top 10 it returns. Peak RSS is reported
for the whole process (the data alone is N x 384 x 4 bytes: 1.5 GB at 1M).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from bench.docs_section import write_section

ROOT = Path(__file__).resolve().parents[1]

MARKS = ("<!-- bench_ann:start -->", "<!-- bench_ann:end -->")
VARIANTS = {
    "ivf_nprobe16": {"type": "ivf", "nprobe": 16},
    "ivf_nprobe64": {"type": "ivf", "nprobe": 64},
    "hnsw_ef64": {"type": "hnsw", "hnsw_m": 32, "ef_search": 64},
    "hnsw_ef256": {"type": "hnsw", "hnsw_m": 32, "ef_search": 256},
}


def clustered(n: int, dim: int, clusters: int, seed: int, spread: float) -> np.ndarray:
    """Rows around shared cluster centres (the same centres for every seed), built in slices."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        block = out[start : start + 65536]
        block[:] = rng.standard_normal(block.shape, dtype=np.float32) * spread
        block += centres[rng.integers(0, clusters, len(block))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--spread", type=float, default=3.0, help="noise per coordinate; centres have norm ~sqrt(dim)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="", help="markdown file whose bench_ann section is rewritten ('' = none)")
    args = parser.parse_args()

    import torch

    from hf_metric.evaluation.ann import IndexedSearch
    from hf_metric.model.neighbors import topk_neighbors

    clusters = max(10, args.n // 100)
    ref = clustered(args.n, args.dim, clusters, seed=1, spread=args.spread)
    query = clustered(args.queries, args.dim, clusters, seed=2, spread=args.spread)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    _, exact = topk_neighbors(query, ref, 10, "cos")
    exact_s = time.perf_counter() - start
    exact = exact.numpy()
    print(f"exact: {exact_s:.1f} s", flush=True)
    rows = [("exact (`topk_neighbors`)", "-", 0.0, exact_s, 1.0)]
    for name in args.variants:
        search = IndexedSearch({**VARIANTS[name], "min_size": 1})
        start = time.perf_counter()
        search(query[:1], ref, 10, "cos")  # builds the index
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        _, found = search(query, ref, 10, "cos")
        query_s = time.perf_counter() - start
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.numpy(), exact, strict=True)]))
        settings = ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items())
        rows.append((name, settings, build_s, query_s, recall))
        print(f"{name}: build {build_s:.1f} s, query {query_s:.2f} s, recall@10 {recall:.4f}", flush=True)
        del search
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    command = "python -m bench.bench_ann " + " ".join(sys.argv[1:])
    lines = [
        MARKS[0],
        "## Approximate kNN index vs exact search (`bench/bench_ann.py`)",
        "",
        f"Command: `{command}`; {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), faiss {_version('faiss')}; load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; peak RSS {peak_mb:,.0f} MB.",
        f"Data: {args.n:,} references and {args.queries:,} queries, dim {args.dim}, clustered Gaussian "
        f"({clusters:,} centres, noise {args.spread} per coordinate); k = 10, cosine.",
        "",
        "| method | settings | build s | query s | queries / s | x exact query time | recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, settings, build_s, query_s, recall in rows:
        lines.append(
            f"| {name} | {settings} | {build_s:.1f} | {query_s:.2f} | {args.queries / query_s:,.0f} | "
            f"{query_s / exact_s:.3f} | {recall:.4f} |"
        )
    lines.append(MARKS[1])
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        write_section(Path(args.out), table, MARKS)


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "n/a"


if __name__ == "__main__":
    main()
