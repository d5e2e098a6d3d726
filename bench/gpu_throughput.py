"""Training throughput of hf_metric's recipe against a plain `transformers.Trainer` on the same data, backbone,
batch size and precision (bf16 on a GPU), with and without length grouping, for text (MiniLM, mpnet), images and
audio (the from-scratch quickstart configs, `--num-workers` loader processes).

    python -m bench.gpu_throughput --out $OUT/throughput.jsonl                      # every case, on the GPU
    python -m bench.gpu_throughput --cases text-minilm --steps 2 --warmup 0 --tiny-model DIR   # CPU smoke

Per (case, arm, grouping), in one process one after the other: `--steps` optimizer steps, of which the first
`--warmup` are not timed. A callback stamps the start and end of every step: s/step is the median interval
between step ends (data loading included); `loader wait` is the share of that interval spent between one step's
end and the next one's start, i.e. waiting for the batch (near 0: the loader keeps up; large: it starves the
GPU). GPU utilisation is sampled every 0.2 s during the timed steps (`torch.cuda.utilization`, else
`nvidia-smi`); on a CPU it is omitted. For text, the collator counts the tokens fed (batch x longest row) and
"x bf16 peak" is 6 x (non-embedding parameters) x tokens fed (+ attention, `bench.step_overhead.model_flops`)
/ time / the device's dense bf16 peak, looked up from its name (H100 SXM and H200: 989 TFLOP/s); convolutional
image/audio backbones get no such estimate.

Arms: `recipe` is the example config (text) or the modality's quickstart (image, audio) trained by hf_metric
(P x K batches, CE + SupCon, cosine head, kNN bank); `plain` is `transformers.Trainer` with
`AutoModelFor{Sequence,Image}Classification` (CE, random batches) fed by the same featurized dataset and
collator, only hf_metric's extra columns dropped. Length grouping: hf_metric's `training.length_grouping`, and
the Trainer's own (`train_sampling_strategy="group_by_length"` in transformers >= 5.25, `group_by_length=True`
before); images and audio have fixed shapes, so only text runs it.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.step_overhead import model_flops

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MPNET = "sentence-transformers/all-mpnet-base-v2"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_CONFIG = ROOT / "configs" / "metric_classifier_training.example.yaml"

CASES: dict[str, dict[str, Any]] = {
    "text-minilm": {"config": TEXT_CONFIG, "model_name": MINILM, "data": SHARED / "banking77" / "train.parquet"},
    "text-mpnet": {"config": TEXT_CONFIG, "model_name": MPNET, "data": SHARED / "banking77" / "train.parquet"},
    "image": {"config": ROOT / "configs" / "quickstart_image.yaml", "data": ROOT / "data/digits/train.parquet"},
    "audio": {
        "config": ROOT / "configs" / "quickstart_audio.yaml",
        "data": ROOT / "data/spoken_words_subset/train.parquet",
    },
}
"""Case -> its config, backbone (text) and training Parquet (text falls back to the Banking77 subset)."""

BF16_PEAK = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L4": 121e12}
"""Dense bf16 tensor-core FLOP/s by device-name fragment (first match wins: the PCIe card before the SXM)."""


def bf16_peak(device_name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in device_name), None)


class Stamps:
    """A `TrainerCallback` (built lazily: transformers is imported by the run) stamping step starts and ends."""

    def __new__(cls):
        import torch
        from transformers import TrainerCallback

        class _Stamps(TrainerCallback):
            def __init__(self) -> None:
                self.begins: list[float] = []
                self.ends: list[float] = []

            def on_step_begin(self, args, state, control, **kwargs):
                self.begins.append(time.perf_counter())

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # the step's kernels are done, not just queued
                self.ends.append(time.perf_counter())

        return _Stamps()


class Counting:
    """Wraps a collator and records (tokens fed, longest row) per batch. For the plain arm it also keeps only
    the `keep` keys of each row and turns audio features into the one-channel image hf_metric feeds a CNN."""

    def __init__(self, collator, keep: tuple[str, ...] | None = None, main_input: str = "") -> None:
        self.collator, self.keep, self.main_input, self.batches = collator, keep, main_input, []

    def __call__(self, features):
        if self.keep is None:
            batch = self.collator(features)
        else:
            from hf_metric.model.modeling import spectrogram_as_image

            batch = self.collator([{k: v for k, v in f.items() if k in self.keep} for f in features])
            batch = spectrogram_as_image(batch, self.main_input)
        mask = batch.get("attention_mask")
        self.batches.append((int(mask.numel()), int(mask.shape[1])) if mask is not None else (0, 0))
        return batch


class UtilSampler:
    """GPU utilisation (%) every `period` s on a thread, between `start()` and `stop()`; nothing on a CPU."""

    def __init__(self, period: float = 0.2) -> None:
        import torch

        self.period, self.samples, self._stop = period, [], threading.Event()
        self.read = None
        if torch.cuda.is_available():
            try:
                torch.cuda.utilization()
                self.read = torch.cuda.utilization
            except Exception:  # no pynvml: ask nvidia-smi
                if shutil.which("nvidia-smi"):
                    self.read = self._smi
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _smi() -> float:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(out.stdout.strip().splitlines()[0])

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(float(self.read()))

    def start(self) -> None:
        if self.read is not None:
            self._thread.start()

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        return sum(self.samples) / len(self.samples) if self.samples else None


def case_config(case: str, args: argparse.Namespace, grouping: bool, out_dir: str) -> dict[str, Any]:
    """The case's YAML with the data, backbone, precision, grouping, loader workers and batch of this run."""
    import torch
    import yaml

    from hf_metric.config.overrides import merge_overrides

    spec = CASES[case]
    data = args.data.get(case) or spec["data"]
    if case.startswith("text") and not Path(data).exists():
        data = ROOT / "data" / "banking77_subset" / "train.parquet"
    overrides = [
        f"data.parquet_path={json.dumps(str(data))}",
        f"data.num_workers={args.num_workers}",
        f"training.length_grouping={str(grouping).lower()}",
        "training.mixed_precision=" + ("bf16" if torch.cuda.is_available() else '"no"'),
        f"checkpointing.checkpoints_dir={json.dumps(out_dir)}",
        "metric_validation.plots=false",
    ]
    if "model_name" in spec:
        overrides.append(f"model_name={json.dumps(str(args.model.get(case) or spec['model_name']))}")
    if args.batch_size:
        overrides.append(f"training.batch_size={args.batch_size}")
    return merge_overrides(yaml.safe_load(Path(spec["config"]).read_text()), overrides)


def plain_model(cfg, num_labels: int):
    """The plain arm's classifier: the same pretrained backbone (text) or the same from-scratch config."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    from hf_metric.packaged_models import resolve_model_path

    if cfg.model_config is None:
        path = resolve_model_path(cfg.model_name)
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    config = AutoConfig.for_model(**{**cfg.model_config, "num_labels": num_labels})
    return AutoModelForImageClassification.from_config(config)


def grouping_arguments(grouping: bool) -> dict[str, Any]:
    """The Trainer's own length grouping, in whichever spelling the installed transformers has."""
    import inspect

    from transformers import TrainingArguments

    if "train_sampling_strategy" in inspect.signature(TrainingArguments).parameters:
        return {"train_sampling_strategy": "group_by_length" if grouping else "random"}
    return {"group_by_length": grouping}


def one_run(case: str, arm: str, grouping: bool, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import Trainer, TrainingArguments

    from hf_metric.loading import config_from_dict
    from hf_metric.run import build_run

    with tempfile.TemporaryDirectory(prefix="hf_metric_gpu_throughput_") as out_dir:
        cfg = config_from_dict(case_config(case, args, grouping and arm == "recipe", out_dir))
        trainer, data = build_run(cfg, max_steps=args.steps, eval_strategy="no", save_strategy="no")
        stamps = Stamps()
        if arm == "recipe":
            counter = Counting(trainer.data_collator)
            trainer.data_collator = counter
            trainer.add_callback(stamps)
            model = trainer.model
        else:
            model = plain_model(cfg, len(data.id2label))
            keep = (model.main_input_name, "input_values", "input_features", "attention_mask", "token_type_ids")
            keep += ("labels",)
            counter = Counting(trainer.data_collator, keep, model.main_input_name)
            plain_args = TrainingArguments(
                output_dir=out_dir,
                per_device_train_batch_size=cfg.training.batch_size,
                max_steps=args.steps,
                learning_rate=cfg.optimizer.learning_rate,
                weight_decay=cfg.optimizer.weight_decay,
                warmup_steps=0.1,
                save_strategy="no",
                eval_strategy="no",
                logging_steps=max(args.steps, 1),
                report_to="none",
                seed=cfg.training.seed,
                bf16=cfg.training.mixed_precision == "bf16",
                use_cpu=not torch.cuda.is_available(),
                dataloader_num_workers=args.num_workers,
                remove_unused_columns=False,
                **grouping_arguments(grouping),
            )
            trainer = Trainer(
                model=model,
                args=plain_args,
                train_dataset=data.train,
                data_collator=counter,
                processing_class=trainer.processing_class if case.startswith("text") else None,
                callbacks=[stamps],
            )
        sampler = UtilSampler()
        starter = _StartAfter(args.warmup, sampler)
        trainer.add_callback(starter.callback())
        trainer.train()
        utilisation = sampler.stop()
    return summarize(case, arm, grouping, args, stamps, counter.batches, model, cfg.training.batch_size, utilisation)


class _StartAfter:
    """Starts the utilisation sampler when the warm-up steps are done."""

    def __init__(self, warmup: int, sampler: UtilSampler) -> None:
        self.warmup, self.sampler = warmup, sampler

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class _Start(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == outer.warmup:
                    outer.sampler.start()

        if self.warmup == 0:
            self.sampler.start()
        return _Start()


def summarize(case, arm, grouping, args, stamps, batches, model, batch_size, utilisation) -> dict[str, Any]:
    import torch

    from bench.step_overhead import median

    ends, begins = stamps.ends, stamps.begins
    # interval i: from the end of step i-1 (or the start of step 0) to the end of step i
    starts = [begins[0], *ends[:-1]]
    intervals = [e - s for s, e in zip(starts, ends, strict=True)][args.warmup :]
    waits = [b - s for s, b in zip(starts, begins, strict=True)][args.warmup :]
    seconds = median(intervals)
    row: dict[str, Any] = {
        "case": case,
        "arm": arm,
        "length_grouping": grouping,
        "steps": args.steps,
        "warmup": args.warmup,
        "s_per_step": round(seconds, 5),
        "samples_per_s": round(batch_size / seconds, 2),
        "loader_wait_share": round(sum(waits) / sum(intervals), 4),
        "num_workers": args.num_workers,
        "batch_size": batch_size,
        "params": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "bf16": torch.cuda.is_available(),
    }
    if utilisation is not None:
        row["gpu_utilisation"] = round(utilisation, 1)
    timed = batches[args.warmup : len(ends)]
    if case.startswith("text") and timed and timed[0][0]:
        row["tokens_per_s"] = round(sum(b[0] for b in timed) / sum(intervals), 1)
        flops = sum(model_flops(model, fed, longest) for fed, longest in timed) / sum(intervals)
        row["tflops"] = round(flops / 1e12, 3)
        peak = bf16_peak(row["device"]) if torch.cuda.is_available() else None
        if peak:
            row["bf16_peak_share"] = round(flops / peak, 4)
    return row


def parse_pairs(values: list[str]) -> dict[str, str]:
    """`case=value` pairs (`--model text-mpnet=/tmp/mpnet`)."""
    out = {}
    for value in values:
        case, sep, path = value.partition("=")
        if not sep or case not in CASES:
            raise SystemExit(f"expected CASE=VALUE with CASE in {', '.join(CASES)}: {value!r}")
        out[case] = path
    return out


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--arms", nargs="+", default=["recipe", "plain"], choices=["recipe", "plain"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader worker processes (both arms)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each config's")
    parser.add_argument("--model", nargs="*", default=[], help="CASE=PATH: another backbone (a staged copy)")
    parser.add_argument("--data", nargs="*", default=[], help="CASE=PARQUET: another training file")
    parser.add_argument("--tiny-model", default=None, help="smoke runs: this local backbone for every text case")
    parser.add_argument("--out", default=None, help="JSON lines, one per run (appended)")
    parser.add_argument("--render", default=None, help="only print the table of this JSON lines file")
    args = parser.parse_args(argv)
    if args.render:
        rows = [json.loads(line) for line in Path(args.render).read_text().splitlines() if line.strip()]
        print(table(rows))
        return rows
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    args.model, args.data = parse_pairs(args.model), parse_pairs(args.data)
    if args.tiny_model:
        args.model = {c: args.tiny_model for c in CASES if c.startswith("text")} | args.model
    rows = []
    for case in args.cases:
        for arm in args.arms:
            for grouping in (False, True) if case.startswith("text") else (False,):
                row = one_run(case, arm, grouping, copy.copy(args))
                row["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
                _free_memory()
    print(table(rows))
    return rows


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows (blank cells where a figure does not apply)."""
    head = (
        "| case | arm | length grouping | s / step | samples / s | loader wait | GPU util % | TFLOP/s | x bf16 peak |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        cells = [r["case"], r["arm"], "yes" if r["length_grouping"] else "no", f"{r['s_per_step']:.4f}"]
        cells += [f"{r['samples_per_s']:.1f}", f"{r['loader_wait_share']:.3f}", str(r.get("gpu_utilisation", ""))]
        cells += [str(r.get("tflops", "")), str(r.get("bf16_peak_share", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
