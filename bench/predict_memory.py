"""Peak memory of `hf-metric predict` on a generated Parquet file: bounded, whatever the number of rows.

Writes a file of `--rows` generated texts (plus an id and a 200-character payload column, so the file is not
tiny), runs `hf-metric predict` on it and on a file with a quarter of the rows, each in a fresh process, and
reports each child's peak RSS (`ru_maxrss`). Streaming holds one record batch, so both peaks should be about
the same (Parquet is read a row group at a time: this file is written in row groups of 50k rows, so from
200k / 4 rows up both files have the same row groups); the script exits with code 1 when the large file's
peak exceeds the small one's by more than `--max-growth-mb`.

    python -m bench.predict_memory --rows 200000 --tiny    # or --model checkpoints/best (real speed, slower)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.inference import generated_texts

ROOT = Path(__file__).resolve().parents[1]


def write_rows(path: str, rows: int, chunk: int = 50_000) -> None:
    """A Parquet file written in chunks (the generator itself stays small)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)  # random payload: the file does not compress to nothing
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        ids = list(range(start, start + n))
        texts = generated_texts(start, start + n)
        table = pa.table({"id": ids, "text": texts, "payload": [rng.bytes(100).hex() for _ in ids]})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()


def fresh_model(folder: str, tiny: bool) -> None:
    """MiniLM (or, with `tiny`, a random 2-layer 32-wide BERT with MiniLM's tokenizer: memory does not depend on
    the backbone's speed) with a fresh head and 1000 stored kNN rows."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hf_metric.model.modeling import MetricClassifierModel
    from hf_metric.packaged_models import resolve_model_path

    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    if tiny:
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
        )
        path = os.path.join(folder, "backbone")
        BertModel(config).save_pretrained(path)
    model = MetricClassifierModel.from_backbone(path, {i: f"c{i}" for i in range(10)}, knn_fusion_weight=0.3)
    dim = model.config.embedding_dim
    model.set_knn_reference(torch.nn.functional.normalize(torch.randn(1000, dim), dim=-1), torch.arange(1000) % 10)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def peak_rss_mb(argv: list[str]) -> float:
    """Peak RSS of `hf-metric` run with `argv` in a child process (Linux reports ru_maxrss in KiB)."""
    code = "import sys; from hf_metric.cli import app; sys.exit(app(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-c", code, *argv], check=True, env=env)
    # the maximum over every child so far: with the small file run first, the second value is the larger peak
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--model", help="a trained model folder (default: MiniLM with a fresh head)")
    parser.add_argument("--tiny", action="store_true", help="a random 2-layer 32-wide backbone (fast, same memory)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--read-batch-rows", type=int, default=4096)
    parser.add_argument("--max-growth-mb", type=float, default=200.0)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench_predict_memory_")
    model = args.model or os.path.join(tmp, "model")
    if args.model is None:
        fresh_model(model, args.tiny)
    results = {}
    # the small file first: children's ru_maxrss is a running maximum, so the larger run must come second
    for rows in (max(args.rows // 4, 1), args.rows):
        data, out = os.path.join(tmp, f"in_{rows}.parquet"), os.path.join(tmp, f"out_{rows}.parquet")
        write_rows(data, rows)
        argv = ["predict", "--model", model, "--data", data, "--out", out, "--threads", str(args.threads)]
        argv += ["--read-batch-rows", str(args.read_batch_rows), "--no-progress"]
        results[rows] = {
            "peak_rss_mb": round(peak_rss_mb(argv), 1),
            "input_mb": round(os.path.getsize(data) / 2**20, 1),
            "output_mb": round(os.path.getsize(out) / 2**20, 1),
        }
    small, large = results.values()
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    print(json.dumps({"results": results, "growth_mb": round(growth, 1), "max_growth_mb": args.max_growth_mb}))
    sys.exit(0 if growth <= args.max_growth_mb else 1)


if __name__ == "__main__":
    main()
