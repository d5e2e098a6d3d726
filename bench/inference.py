"""Rows per second of one model served several ways, on the same backbone and texts, with the same thread count:

- torch: `hf-metric predict`'s PyTorch backend (`hf_metric.inference.backends.TorchBackend`),
- ONNX fp32 plain: `hf-metric export --no-optimize` run by `OnnxBackend` (onnxruntime's load-time optimisations
  only),
- ONNX fp32 fused: `hf-metric export` (transformer fusions: Attention, EmbedLayerNormalization, ...),
- ONNX int8: `hf-metric export --quantize int8` (dynamic int8 backbone),
- sentence-transformers `encode` of the same backbone (embeddings only, its own batching: a reference point).

Each of our backends runs twice: "head + kNN on" is the model with `--reference-rows` stored kNN rows and fusion
(the vote over them is part of the graph), "kNN off" the same model without stored rows (embeddings and the
head's logits only). The model is the backbone with a fresh head (speed does not depend on training). Each timing
is the best of `--repeats` passes over the texts after one warm-up pass; featurization (tokenizing) is included
for all. `--profile` adds where `hf-metric predict` (torch, head + kNN on, Parquet in and out) spends its time.

    python -m bench.inference --rows 2000 --threads 2 --out docs/benchmarks.md
    python -m bench.inference --rows 64 --reference-rows 200 --repeats 1 --profile   # a quick check

Run it on an idle machine: timings taken while other jobs run say nothing.
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

from bench.docs_section import table_row, write_section

MARKS = ("<!-- inference:start -->", "<!-- inference:end -->")
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
ST_NAME = "sentence-transformers encode"
ONNX_VARIANTS = {"ONNX fp32 plain": {"optimize": False}, "ONNX fp32 fused": {}, "ONNX int8": {"quantize": "int8"}}
"""Export folder -> `ExportOptions` settings."""


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


def export_variants(model_dir: str, tmp: str, featurizer, texts: list[str]) -> dict[str, tuple[str, dict]]:
    """Each ONNX variant of `model_dir`: name -> (export folder, its `hf_metric_export.json` record)."""
    from hf_metric.sharing.export import ExportOptions, export_onnx

    out = {}
    for name, settings in ONNX_VARIANTS.items():
        folder = os.path.join(tmp, f"{os.path.basename(model_dir)}-{name.split()[-1]}")
        options = ExportOptions(max_accuracy_drop=100.0, **settings)  # a random head: no accuracy to keep
        out[name] = folder, export_onnx(model_dir, folder, featurizer, texts[:16], options)
    return out


def measure(args: argparse.Namespace, texts: list[str], tmp: str) -> tuple[dict, dict, str]:
    """rows/s by backend name and by "on" / "off" (head + kNN fusion), the export records, the backbone path."""
    from hf_metric.data.featurize import TextFeaturizer
    from hf_metric.inference.backends import OnnxBackend, TorchBackend, run_batches

    results: dict[str, dict[str, float]] = {}
    exports = {}
    backbone_path = ""
    for mode, reference_rows in (("on", args.reference_rows), ("off", 0)):
        model_dir = os.path.join(tmp, f"model-{mode}")
        backbone_path = build_model(args.backbone, model_dir, args.labels, reference_rows, texts)
        featurizer = TextFeaturizer.from_pretrained(model_dir, args.max_length)
        backends = {"torch (hf-metric predict)": TorchBackend(model_dir)}
        for name, (folder, info) in export_variants(model_dir, tmp, featurizer, texts).items():
            backends[name] = OnnxBackend(folder, threads=args.threads)
            exports[f"{name}, kNN {mode}"] = info
        for name, backend in backends.items():
            rate = time_rows_per_s(
                lambda b=backend, f=featurizer: run_batches(b, f, texts, args.batch_size), len(texts), args.repeats
            )
            results.setdefault(name, {})[mode] = rate
            print(f"{name}, head + kNN {mode}: {rate:.1f} rows/s", file=sys.stderr, flush=True)
    try:
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(backbone_path, device="cpu")
        st.max_seq_length = args.max_length
        results[ST_NAME] = {
            "off": time_rows_per_s(
                lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True),
                len(texts),
                args.repeats,
            )
        }
    except ImportError:
        print("sentence-transformers not installed: skipped", file=sys.stderr)
    return results, exports, backbone_path


def profile_predict(args: argparse.Namespace, texts: list[str], tmp: str) -> dict[str, float]:
    """Seconds per phase of `hf-metric predict` (torch, head + kNN on) on `texts`, under cProfile: Parquet in and
    out with the added columns, tokenising, the backbone, the rest of the model (pooling, head), the kNN vote."""
    import cProfile
    import pstats

    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_metric.data.featurize import TextFeaturizer
    from hf_metric.inference.backends import TorchBackend
    from hf_metric.inference.predict import StreamSettings, predict_file

    model_dir = os.path.join(tmp, "model-on")
    source, out = os.path.join(tmp, "profile.parquet"), os.path.join(tmp, "profile-out.parquet")
    pq.write_table(pa.table({"text": texts}), source)
    backend, featurizer = TorchBackend(model_dir), TextFeaturizer.from_pretrained(model_dir, args.max_length)
    settings = StreamSettings(batch_size=args.batch_size, progress=False)
    predict_file(source, out, backend, featurizer, 5, settings)  # warm-up
    profiler = cProfile.Profile()
    profiler.runcall(predict_file, source, out, backend, featurizer, 5, settings)
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, ncalls, own, cumulative, callers)

    def cumulative(file_end: str, function: str) -> float:
        return sum(v[3] for (f, _, fn), v in stats.items() if f.endswith(file_end) and fn == function)

    total = cumulative("inference/predict.py", "predict_file")
    batches = cumulative("inference/backends.py", "run_batches")
    model = cumulative("model/modeling.py", "forward")
    backbone = cumulative("model/modeling.py", "_encode")
    knn = cumulative("inference/onnx_module.py", "knn_probabilities")
    tokenise = cumulative("data/featurize.py", "encode")
    module = cumulative("inference/onnx_module.py", "forward")
    return {
        "backbone forward": backbone,
        "pooling + head + projection": model - backbone,
        "inference module around the model (kNN vote, fusion)": module - model,
        "of which the kNN search and vote": knn,
        "tokenising": tokenise,
        "batching, sorting, numpy copies": batches - module - tokenise,
        "Parquet read/write + added columns": total - batches,
        "total": total,
    }


def render(args: argparse.Namespace, results: dict, exports: dict, phases: dict | None) -> str:
    base = results["torch (hf-metric predict)"]

    def cell(rate: float | None, mode: str) -> list[str]:
        return ["-", "-"] if rate is None else [f"{rate:.1f}", f"{rate / base[mode]:.2f}x"]

    int8 = exports.get("ONNX int8, kNN on", {}).get("int8", {})
    parity = max(exports["ONNX fp32 fused, kNN on"]["parity_max_abs_diff"].values())
    lines = [
        MARKS[0],
        "## Inference speed (`bench/inference.py`)",
        "",
        f"{args.rows} texts, batch {args.batch_size}, max_length {args.max_length}, {args.threads} threads, "
        f"`{args.backbone}`, {args.labels} classes; head + kNN on: {args.reference_rows} stored kNN rows and "
        f"fusion; off: no stored rows (embeddings + head logits). ONNX fp32 fused parity (max abs diff vs torch): "
        f"{parity:.1e}; int8 vs torch: embedding cosine min {int8.get('min_cosine', float('nan')):.4f}, top-1 "
        f"agreement {int8.get('top1_agreement', float('nan')):.3f} (random head; accuracy: docs/export.md).",
        "",
        "| backend | head + kNN on: rows/s | vs torch | kNN off: rows/s | vs torch |",
        "|---|---|---|---|---|",
        *[table_row([name, *cell(r.get("on"), "on"), *cell(r.get("off"), "off")]) for name, r in results.items()],
        "",
    ]
    if phases:
        total = phases["total"]
        lines += [
            f"Where `hf-metric predict` (torch, head + kNN on) spends its time (cProfile, {args.rows} rows):",
            "",
            "| phase | seconds | share |",
            "|---|---|---|",
            *[table_row([k, f"{v:.3f}", f"{100 * v / total:.1f} %"]) for k, v in phases.items()],
            "",
        ]
    lines += [
        f"Command: `python -m bench.inference --rows {args.rows} --threads {args.threads}"
        f"{' --profile' if phases else ''}{f' --out {args.out}' if args.out else ''}`; {time.strftime('%Y-%m-%d')}; "
        f"{platform.machine()}, "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} after the run.",
        MARKS[1],
    ]
    return "\n".join(lines)


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
    parser.add_argument("--profile", action="store_true", help="also profile `hf-metric predict` by phase")
    parser.add_argument("--out", help="docs/benchmarks.md to update")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    texts = texts_from(args.data, args.rows)
    tmp = tempfile.mkdtemp(prefix="bench_inference_")
    results, exports, _ = measure(args, texts, tmp)
    phases = profile_predict(args, texts, tmp) if args.profile else None
    print(json.dumps({"rows_per_s": results, "phases_s": phases, "exports": exports, "args": vars(args)}, indent=2))
    section = render(args, results, exports, phases)
    print(section)
    if args.out:
        write_section(Path(args.out), section, MARKS)


if __name__ == "__main__":
    main()
