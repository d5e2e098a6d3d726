"""`python -m bench.inference` runs end to end on a tiny backbone (every backend, kNN on and off, the profile)
and renders its table; the timings themselves are for an idle machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_the_inference_benchmark_runs_as_a_module(tiny_model_dir, tmp_path):
    out = tmp_path / "benchmarks.md"
    command = [sys.executable, "-m", "bench.inference", "--backbone", tiny_model_dir, "--rows", "12", "--labels", "4"]
    command += ["--reference-rows", "20", "--repeats", "1", "--threads", "1", "--profile", "--out", str(out)]
    run = subprocess.run(command, cwd=ROOT, env={**os.environ}, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    text = out.read_text()
    for row in ("torch (hf-metric predict)", "ONNX fp32 plain", "ONNX fp32 fused", "ONNX int8", "backbone forward"):
        assert f"| {row} |" in text, row
    assert "python -m bench.inference --rows 12 --threads 1 --profile" in text
