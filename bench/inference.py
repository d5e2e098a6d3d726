"""Rows per second of one model served three ways, on the same backbone and texts, with the same thread count:

- torch: `hf-metric predict`'s PyTorch backend (`hf_metric.inference.backends.TorchBackend`),
- onnxruntime: the `hf-metric export` folder run by `OnnxBackend`,
- sentence-transformers `encode` of the same backbone (embeddings only, its own batching: a reference point).

The model is the backbone with a fresh head (speed does not depend on training) and, with `--reference-rows`,
stored kNN rows (the fusion is part of both our backends). Each timing is the best of `--repeats` passes over
the texts after one warm-up pass; featurization (tokenizing) is included for all three.

    python bench/inference.py --rows 2000 --threads 2 --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from docs_section import write_section

MARKS = ("<!-- inference:start -->", "<!-- inference:end -->")
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


WORDS = tuple("please help my card was charged twice and the refund parcel courier login password is not here".split())  # noqa: SIM905


def generated_texts(start: int, stop: int) -> list[str]:
    """Deterministic texts of 5-15 words for rows start..stop-1 (shared with predict_memory.py)."""
    return [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(5 + i % 11)) for i in range(start, stop)]


def texts_from(path: str | None, rows: int) -> list[str]:
    import pyarrow.parquet as pq

    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist() if path else generated_texts(0, rows)
    return (texts * (rows // max(len(texts), 1) + 1))[:rows]


def build_model(backbone: str, folder: str, labels: int, reference_rows: int, texts: list[str]) -> str:
    import torch
    from transformers import AutoTokenizer

    from hf_metric.model.modeling import MetricClassifierModel
    from hf_metric.packaged_models import resolve_model_path

    path = resolve_model_path(backbone)
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(path, {i: f"c{i}" for i in range(labels)}, knn_fusion_weight=0.3)
    if reference_rows:
        emb = torch.nn.functional.normalize(torch.randn(reference_rows, model.config.embedding_dim), dim=-1)
        model.set_knn_reference(emb, torch.arange(reference_rows) % labels)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return path


def time_rows_per_s(run, rows: int, repeats: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return rows / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--data", help="Parquet file with a text column (default: generated texts)")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--labels", type=int, default=77)
    parser.add_argument("--reference-rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="docs/benchmarks.md to update")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from hf_metric.data.featurize import TextFeaturizer
    from hf_metric.inference.backends import OnnxBackend, TorchBackend, run_batches
    from hf_metric.sharing.export import export_onnx

    texts = texts_from(args.data, args.rows)
    tmp = tempfile.mkdtemp(prefix="bench_inference_")
    model_dir, onnx_dir = os.path.join(tmp, "model"), os.path.join(tmp, "onnx")
    backbone_path = build_model(args.backbone, model_dir, args.labels, args.reference_rows, texts)
    featurizer = TextFeaturizer.from_pretrained(model_dir, args.max_length)
    parity = export_onnx(model_dir, onnx_dir, featurizer, texts[:16])

    results = {}
    torch_backend = TorchBackend(model_dir)
    results["torch (hf-metric predict)"] = time_rows_per_s(
        lambda: run_batches(torch_backend, featurizer, texts, args.batch_size), len(texts), args.repeats
    )
    onnx_backend = OnnxBackend(onnx_dir, threads=args.threads)
    results["onnxruntime (--backend onnx)"] = time_rows_per_s(
        lambda: run_batches(onnx_backend, featurizer, texts, args.batch_size), len(texts), args.repeats
    )
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(backbone_path, device="cpu")
        st.max_seq_length = args.max_length
        results["sentence-transformers encode"] = time_rows_per_s(
            lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True), len(texts), args.repeats
        )
    except ImportError:
        print("sentence-transformers not installed: skipped", file=sys.stderr)

    base = results["torch (hf-metric predict)"]
    print(json.dumps({"rows_per_s": results, "parity": parity, "args": vars(args)}, indent=2))
    if args.out:
        lines = [
            MARKS[0],
            "## Inference speed (`bench/inference.py`)",
            "",
            f"{args.rows} texts, batch {args.batch_size}, max_length {args.max_length}, {args.threads} threads, "
            f"`{args.backbone}`, {args.labels} classes, {args.reference_rows} stored kNN rows (fusion on). "
            f"ONNX parity (max abs diff): {max(parity.values()):.1e}.",
            "",
            "| backend | rows/s | vs torch |",
            "|---|---|---|",
            *[f"| {name} | {rate:.1f} | {rate / base:.2f}x |" for name, rate in results.items()],
            "",
            f"Command: `python bench/inference.py --rows {args.rows} --threads {args.threads} --out {args.out}`; "
            f"{time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores; load average "
            f"{os.getloadavg()[0]:.2f} after the run.",
            MARKS[1],
        ]
        write_section(Path(args.out), "\n".join(lines), MARKS)


if __name__ == "__main__":
    main()
