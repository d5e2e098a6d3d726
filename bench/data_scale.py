"""Train on a generated audio Parquet file of any size: wall time, time to the first step and peak RSS.

Writes `--rows` four-second 16 kHz WAV clips (20 classes, a tone per class in noise, PCM 16-bit: 128 kB each;
row groups of 256 rows) into one Parquet file under `--workdir`, then trains `configs/quickstart_audio.yaml` on
it for `--steps` optimizer steps in a child process (validation on 1 % of the rows, no plots, no stored kNN rows:
the run measures reading and preparing the data, not the model). The default 19,200 rows make a 2.5 GB `audio`
column, more than one Arrow `binary` array holds (2 GB).

    python -m bench.data_scale                          # 19,200 clips, about 2.5 GB
    python -m bench.data_scale --rows 4800 --threads 1  # a quarter
    python -m bench.data_scale --shards 8               # the same rows as 8 Parquet shards in a folder

Prints one JSON line: rows, file size, wall seconds of the training command, seconds from its start to the first
logged training step (the Trainer logs step 1), the child's peak RSS (`ru_maxrss`), the peaks of its anonymous
and file-backed resident memory (`RssAnon`, `RssFile` of `/proc/PID/status`, sampled every 50 ms: mapped pages of
the data cache are file-backed) and its exit code. `--again` trains a second time on the same file, which maps
the data cache the first run wrote (`again_*`). The child's `HF_METRIC_CACHE` is a folder under `--workdir`, so
the generated file, the data cache and the run's folder are all deleted afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart_audio.yaml"
RATE, SECONDS, CLASSES, ROW_GROUP = 16000, 4.0, 20, 256


def wav_header(samples: int) -> bytes:
    """The 44-byte header of a mono 16-bit PCM WAV at `RATE` holding `samples` samples."""
    data = 2 * samples
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + data) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", data)


def write_clips(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` WAV clips with labels `w00`..`w19` (row `i` is class `i % 20`), one row group of `ROW_GROUP` rows
    at a time: the generator holds one row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    length = int(RATE * SECONDS)
    t = np.arange(length, dtype=np.float32) / RATE
    tones = np.stack([3000 * np.sin(2 * np.pi * (200.0 * 1.15**c) * t) for c in range(CLASSES)]).astype(np.int16)
    header = wav_header(length)
    schema = pa.schema([("audio", pa.binary()), ("label", pa.string())])
    with pq.ParquetWriter(path, schema, use_dictionary=["label"]) as writer:
        for start in range(0, rows, ROW_GROUP):
            labels = np.arange(start, min(start + ROW_GROUP, rows)) % CLASSES
            noise = rng.integers(-1000, 1000, size=(len(labels), length), dtype=np.int16)  # the bytes do not compress
            waves = (tones[labels] + noise).astype("<i2")
            clips = [header + wave.tobytes() for wave in waves]
            names = [f"w{label:02d}" for label in labels]
            writer.write_table(pa.table({"audio": clips, "label": names}, schema=schema), row_group_size=ROW_GROUP)


def sample_rss(pid: int, peaks: dict[str, int], stop: threading.Event, every: float = 0.05) -> None:
    """Keep in `peaks` the largest `RssAnon` and `RssFile` (kB) of process `pid` until `stop` or its end."""
    while not stop.is_set():
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("RssAnon", "RssFile"):
                peaks[key] = max(peaks.get(key, 0), int(value.split()[0]))
        stop.wait(every)


def train_once(parquet: Path, run_dir: Path, steps: int, threads: int) -> dict:
    """Train in a child process; its wall time, time to the first logged step, peak RSS and exit code."""
    overrides = {
        "data.parquet_path": str(parquet),
        "data.val_ratio": 0.01,
        "scheduler.num_training_steps": steps,
        "training.logging_steps": 1,
        "metric_validation.plots": "false",
        "model.knn_fusion_weight": 0.0,
        "checkpointing.checkpoints_dir": str(run_dir),
    }
    argv = [sys.executable, "-m", "hf_metric.cli", "--config", str(CONFIG)]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["HF_METRIC_CACHE"] = str(parquet.parent / "cache")  # the data cache goes with the generated file
    env.update({name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    start, first_step, tail = time.perf_counter(), None, deque(maxlen=20)
    child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peaks: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(child.pid, peaks, stop), daemon=True)
    sampler.start()
    for line in child.stdout:
        if first_step is None and "'loss'" in line:  # the Trainer logs the first step (logging_first_step)
            first_step = time.perf_counter() - start
        tail.append(line.rstrip())
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print("\n".join(tail), file=sys.stderr)
    first = None if first_step is None else round(first_step, 1)
    return {
        "wall_s": round(wall, 1),
        "first_step_s": first,
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "peak_rss_anon_mb": round(peaks.get("RssAnon", 0) / 1024),
        "peak_rss_file_mb": round(peaks.get("RssFile", 0) / 1024),
        "exit": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=19200, help="clips (default 19200: about 2.5 GB)")
    parser.add_argument("--workdir", default="/tmp", help="where the file and the run's folder go")
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps (scheduler.num_training_steps)")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL/Arrow threads of the training process")
    parser.add_argument("--keep", action="store_true", help="keep the generated file and the run's folder")
    parser.add_argument("--shards", type=int, default=1, help="write the rows as this many Parquet shards in a folder")
    parser.add_argument("--again", action="store_true", help="train a second time, on the data cache of the first")
    args = parser.parse_args(argv)

    folder = Path(args.workdir) / f"hf_metric_data_scale_{args.rows}"
    folder.mkdir(parents=True, exist_ok=True)
    parquet = folder / "clips.parquet" if args.shards == 1 else folder / "shards"
    try:
        began = time.perf_counter()
        if args.shards == 1:
            write_clips(parquet, args.rows)
        else:  # data.parquet_path: the folder of shards
            parquet.mkdir(exist_ok=True)
            bounds = [args.rows * i // args.shards for i in range(args.shards + 1)]
            for i in range(args.shards):
                write_clips(parquet / f"part-{i:05d}.parquet", bounds[i + 1] - bounds[i], seed=i)
        size = sum(p.stat().st_size for p in ([parquet] if parquet.is_file() else parquet.glob("*.parquet")))
        result = {"rows": args.rows, "shards": args.shards, "file_gb": round(size / 1e9, 2)}
        result["generate_s"] = round(time.perf_counter() - began, 1)
        result.update(train_once(parquet, folder / "run", args.steps, args.threads))
        if args.again and result["exit"] == 0:
            shutil.rmtree(folder / "run", ignore_errors=True)
            again = train_once(parquet, folder / "run", args.steps, args.threads)
            result.update({f"again_{key}": value for key, value in again.items()})
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(result))
    return 0 if result["exit"] == 0 and result.get("again_exit", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
