"""A prediction batch against stored rows: `topk_neighbors` as one product vs the blocked search, side by side.

    python -m bench.knn_small_search                  # 64 queries x 1k / 10k / 60k stored rows, dim 384, k 10

`topk_neighbors` answers a cosine search on CPU whose score matrix holds at most `SMALL_SEARCH_SCORES` floats
with one product and one top k; giving it chunk sizes forces the blocked search with its worker threads (the
path of large searches). Both run alternately in one process, on random unit rows; the table gives the median
milliseconds per call and whether both returned the same neighbours.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from hf_metric.model.neighbors import CPU_CHUNK_SIZE, CPU_REF_CHUNK_SIZE, topk_neighbors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--refs", nargs="*", type=int, default=[1000, 10000, 60000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--calls", type=int, default=60)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    torch.manual_seed(0)
    print(
        f"{time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"threads; load average {load:.2f} before\n\n| stored rows | one product ms | blocked ms | x | same |\n"
        "|---|---|---|---|---|"
    )
    for refs in args.refs:
        q = torch.nn.functional.normalize(torch.randn(args.queries, args.dim), dim=1)
        r = torch.nn.functional.normalize(torch.randn(refs, args.dim), dim=1)
        calls = {
            "one": lambda q=q, r=r: topk_neighbors(q, r, args.k, "cos"),
            "blocked": lambda q=q, r=r: topk_neighbors(q, r, args.k, "cos", CPU_CHUNK_SIZE, False, CPU_REF_CHUNK_SIZE),
        }
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.calls):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(1000 * (time.perf_counter() - start))
        one, blocked = (statistics.median(times[n]) for n in calls)
        same = torch.equal(calls["one"]()[1], calls["blocked"]()[1])
        print(f"| {refs:,} | {one:.2f} | {blocked:.2f} | {blocked / one:.2f} | {'yes' if same else 'no'} |")
    print(f"\nload average {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
