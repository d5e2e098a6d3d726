"""The GPU session kit on the CPU: bench/gpu_pack.py's float16 copy and pieces, and bench/gpu_session.sh end to
end on a fake pack (the tiny BERT staged under both backbone names, toy Banking77/HWU64), 2 steps per run."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import synthetic_rows, write_parquet

from bench import gpu_pack

ROOT = Path(__file__).resolve().parents[1]


def test_half_copy_rounds_the_weights_and_keeps_the_rest(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    target = tmp_path / "half"
    gpu_pack.half_copy(Path(tiny_model_dir), target)
    original, rounded = load_file(Path(tiny_model_dir) / "model.safetensors"), load_file(target / "model.safetensors")
    assert rounded.keys() == original.keys()
    for name, tensor in original.items():
        assert rounded[name].dtype == torch.float16 and torch.equal(rounded[name].float(), tensor.half().float())
    assert (target / "tokenizer.json").read_bytes() == (Path(tiny_model_dir) / "tokenizer.json").read_bytes()
    texts = ["my card payment failed", "where is my parcel", "reset my password please"]
    assert gpu_pack.fidelity(Path(tiny_model_dir), target, texts) > 0.9999


def test_pieces_join_back_in_glob_order(tmp_path):
    blob = os.urandom(25_000)
    pieces = gpu_pack.write_pieces(blob, tmp_path, "mpnet", 2_048)
    assert len(pieces) == 13 and all(p.stat().st_size <= 2_048 for p in pieces)
    assert b"".join(p.read_bytes() for p in sorted(tmp_path.glob("mpnet*/part"))) == blob  # shell `cat mpnet*/part`


def fake_pack(pack: Path, model_dir: str) -> None:
    """What gpu_pack writes, with the tiny BERT as both backbones and toy data (no wheels: the env has them)."""
    for dataset in ("banking77", "hwu64"):
        folder = pack / "base" / "data" / dataset
        folder.mkdir(parents=True)
        write_parquet(folder / "train.parquet", synthetic_rows(per_class=10, seed=1))
        write_parquet(folder / "test.parquet", synthetic_rows(per_class=3, seed=2))
    for name, target in (("all-MiniLM-L6-v2", pack / "base" / "minilm.tar"), ("all-mpnet-base-v2", None)):
        blob_path = pack / f"{name}.tar"
        with tarfile.open(blob_path, "w") as tar:
            tar.add(model_dir, arcname=name)
        if target is not None:
            blob_path.rename(target)
        else:
            gpu_pack.write_pieces(blob_path.read_bytes(), pack, "mpnet", 60_000)
            blob_path.unlink()


@pytest.mark.slow
def test_session_script_runs_every_phase(tmp_path, tiny_model_dir):
    pack, out = tmp_path / "pack", tmp_path / "out"
    fake_pack(pack, tiny_model_dir)
    env = {**os.environ, "PACK": str(pack), "OUT": str(out), "MODELS": str(tmp_path / "models"), "SMOKE": "1"}
    env |= {"SEEDS": "42", "PY": "python", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        ["bash", "bench/gpu_session.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    quality = [json.loads(line) for line in (out / "quality.jsonl").read_text().splitlines()]
    assert sorted((r["dataset"], r["variant"]) for r in quality) == [
        ("banking77", "baseline"),
        ("banking77", "hf_metric"),
        ("hwu64", "baseline"),
        ("hwu64", "hf_metric"),
    ]
    assert all(r["model"].endswith("all-mpnet-base-v2") and r["bf16"] for r in quality)
    throughput = [json.loads(line) for line in (out / "throughput.jsonl").read_text().splitlines()]
    assert {r["case"] for r in throughput} == {"text-minilm", "text-mpnet", "image", "audio"}
    assert len(throughput) == 12  # text: 2 arms x grouping on/off; image, audio: 2 arms
    assert (out / "quickstart.txt").read_text().startswith("quickstart: exit 0")
    assert {p.name for p in out.iterdir()} <= {"session.log", "device.txt", "quality.jsonl", "throughput.jsonl",
                                              "quickstart.txt", "logs.tar.gz"}  # fmt: skip
