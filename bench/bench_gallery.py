"""Gallery search speed: the whole gallery vs within-group candidate sets, and the cost of an atomic append.

    python -m bench.bench_gallery [--rows 200000] [--groups 20000] [--queries 50000] [--dim 384] [--k 5]

Data: random unit vectors (float32). Timed, each once after a warm-up on 1 % of the queries:

- `search`: every query against the whole gallery (`Gallery.search`, exact blocked top-k);
- `search within group`: every query against its own group's rows (a Python loop over the query groups, one
  exact search per group: its cost grows with the number of groups, not with the gallery size);
- `search within group, batches of 4096`: the same as `predict --gallery --within-group` calls it, one record
  batch at a time (the group index is kept between batches);
- `save` and `load + add 1 % + save` (the atomic append of `hf-metric index --append`).

Prints one Markdown table. Numbers are only meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from hf_metric.inference.gallery import Gallery


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--groups", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    groups = [f"g{g}" for g in rng.integers(args.groups, size=args.rows)]
    labels = [f"id{i // 4}" for i in range(args.rows)]
    gallery = Gallery(emb, labels, groups, [str(i) for i in range(args.rows)], "bench")
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    query_groups = [f"g{g}" for g in rng.integers(args.groups, size=args.queries)]
    warm = max(1, args.queries // 100)
    gallery.search(queries[:warm], args.k)
    gallery.search(queries[:warm], args.k, query_groups[:warm])

    def batched() -> None:
        for start in range(0, args.queries, 4096):
            gallery.search(queries[start : start + 4096], args.k, query_groups[start : start + 4096])

    rows = [
        ("search", _timed(lambda: gallery.search(queries, args.k))),
        ("search within group", _timed(lambda: gallery.search(queries, args.k, query_groups))),
        ("search within group, batches of 4096", _timed(batched)),
    ]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "g")
        rows.append(("save", _timed(lambda: gallery.save(path))))
        extra = max(1, args.rows // 100)
        more = rng.standard_normal((extra, args.dim), dtype=np.float32)

        def append() -> None:
            loaded = Gallery.load(path)
            loaded.add(more, [f"new{i}" for i in range(extra)], ["g0"] * extra, [f"n{i}" for i in range(extra)])
            loaded.save(path)

        rows.append(("load + add 1 % + save", _timed(append)))
    print(f"rows {args.rows}, groups {args.groups}, queries {args.queries}, dim {args.dim}, k {args.k}\n")
    print("| step | seconds |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
