"""Media decoding in DataLoader workers: training rows per second with `data.num_workers` 0, 1, 2, ...

    python -m bench.data_workers                      # images and audio, workers 0 1 2, 3 alternating repeats
    python -m bench.data_workers --cases audio --workers 0 2 --batches 10 --repeats 1   # smoke

Only the input side is timed: the training DataLoader of a real run (`hf_metric.run.build_run`: the P x K
sampler, the featurizer's decoding and augmentation, the collator), iterated for `--batches` batches after the
first one (whose wait, the workers' start, is reported apart). No model step runs, so the numbers say how many
rows per second the data path can feed, which is what decides whether a GPU waits for it.

Cases: ``image`` writes `--images` JPEG photos of 320 x 240 (noise tinted per class, 10 classes) and trains
`configs/quickstart_image.yaml` on them with the processor resizing to 128 (a photo is decoded, cropped,
jittered, erased and resized per row); ``audio`` trains `configs/quickstart_audio.yaml` on its spoken-words
subset (1 s WAV clips decoded, resampled if needed, turned into log-mel features per row).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"image": ROOT / "configs" / "quickstart_image.yaml", "audio": ROOT / "configs" / "quickstart_audio.yaml"}


def write_photos(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` 320 x 240 JPEG photos, labels `c0`..`c9` (row `i` is class `i % 10`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells, labels = [], []
    for i in range(rows):
        tint = np.array([(i % 10) * 25, 255 - (i % 10) * 25, 128], dtype=np.float32)
        pixels = np.clip(rng.normal(0, 40, size=(240, 320, 3)) + tint, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        cells.append({"bytes": buffer.getvalue(), "path": None})
        labels.append(f"c{i % 10}")
    pq.write_table(pa.table({"image": cells, "label": labels}), path)


def case_config(case: str, workdir: Path, workers: int, images: int) -> dict[str, Any]:
    raw = yaml.safe_load(CONFIGS[case].read_text())
    if case == "image":
        photos = workdir / "photos.parquet"
        if not photos.exists():
            write_photos(photos, images)
        raw["data"]["parquet_path"] = str(photos)
        raw["processor_config"]["size"] = {"shortest_edge": 128}
    else:
        raw["data"]["parquet_path"] = str(ROOT / raw["data"]["parquet_path"])
    raw["data"]["num_workers"] = workers
    raw["checkpointing"]["checkpoints_dir"] = str(workdir / f"run_{case}_{workers}")
    return raw


def time_loader(case: str, workdir: Path, workers: int, batches: int, images: int) -> dict[str, float]:
    """Seconds to the first batch, then rows per second over the next `batches` batches (epochs restart)."""
    from hf_metric.loading import config_from_dict
    from hf_metric.run import build_run

    trainer, _ = build_run(config_from_dict(case_config(case, workdir, workers, images)))
    loader = trainer.get_train_dataloader()
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    rows, epoch_start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        rows += len(batch["labels"])
    seconds = time.perf_counter() - epoch_start
    del it, loader, trainer
    return {"first_batch_s": first, "rows_per_s": rows / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--workers", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=640, help="generated photos of the image case")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hf_metric_workers_") as tmp:
        for _ in range(args.repeats):  # alternating, so a slow moment of the machine hits every setting alike
            for case in args.cases:
                for workers in args.workers:
                    one = time_loader(case, Path(tmp), workers, args.batches, args.images)
                    results.setdefault((case, workers), []).append(one)
                    print(f"{case} workers={workers}: {one['rows_per_s']:.1f} rows/s", flush=True)
    command = "python -m bench.data_workers " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
    )
    print(
        f"\nCommand: `{command}`; {time.strftime('%Y-%m-%d')}; {platform.machine()}, {os.cpu_count()} cores; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; median of {args.repeats} repeats.\n"
    )
    print("| case | workers | rows / s | x 0 workers | first batch s |\n|---|---|---|---|---|")
    for case in args.cases:
        base = statistics.median(r["rows_per_s"] for r in results[(case, args.workers[0])])
        for workers in args.workers:
            runs = results[(case, workers)]
            rate = statistics.median(r["rows_per_s"] for r in runs)
            first = statistics.median(r["first_batch_s"] for r in runs)
            print(f"| {case} | {workers} | {rate:.1f} | {rate / base:.2f} | {first:.2f} |")


if __name__ == "__main__":
    main()
