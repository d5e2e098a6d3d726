"""Seconds per optimizer step: hf_metric's trainer (the recipe and with each part switched off) against a plain
`transformers.Trainer` (CE, linear head, random batches) on the same backbone, batch, max_len and rows.

    python bench/step_overhead.py --steps 40 --warmup 8 --repeats 3     # writes its table to docs/benchmarks.md

Each measurement is its own process (fresh allocator and caches); variants alternate (A B C ... A B C ...) so a
change in machine load hits all of them alike. A callback records the wall time of every optimizer step; the
median of the steps after `--warmup` is the variant's figure, and the table reports medians over repeats and the
ratio to the plain Trainer measured in the same rounds. Evaluation and saving are off: this is the training step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "banking77_subset" / "train.parquet"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BATCH, MAX_LEN = 32, 64

VARIANTS: dict[str, dict[str, Any]] = {
    "plain_trainer": {},
    "recipe": {},
    "recipe_no_bank": {"metric_validation": {"keep_last_n_emb_steps": 1}},
    "recipe_no_supcon": {"loss": {"metric": {"weight": 0.0}}},
    "recipe_random_batches": {"training": {"sampler": "random"}},
    "recipe_no_collapse_watch": {"training": {"collapse_check_steps": 1_000_000}},
}
"""Name -> overrides of the example config (`plain_trainer` is transformers alone)."""


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _arguments(out_dir: str, steps: int, **extra: Any):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=1e-4,
        warmup_steps=0.1,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
        report_to="none",
        seed=42,
        use_cpu=True,
        **extra,
    )


def plain_trainer(steps: int, out_dir: str) -> list[float]:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from hf_metric.packaged_models import resolve_model_path

    path = resolve_model_path(MODEL_NAME)
    table = pq.read_table(DATA, columns=["text", "label"]).to_pydict()
    names = sorted(set(table["label"]))
    ids = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    train = Dataset.from_dict({"text": table["text"], "label": [ids[v] for v in table["label"]]}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=MAX_LEN), batched=True, remove_columns=["text"]
    )
    timer = _step_timer()
    trainer = Trainer(
        model=model,
        args=_arguments(out_dir, steps),
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[timer],
    )
    trainer.train()
    return timer.times


def hf_metric_trainer(overrides: dict[str, Any], steps: int, out_dir: str) -> list[float]:
    import yaml

    from hf_metric.config import config_from_dict
    from hf_metric.run import build_trainer

    raw = yaml.safe_load((ROOT / "configs" / "metric_classifier_training.example.yaml").read_text())
    raw["data"]["parquet_path"] = str(DATA)
    raw["training"].update(batch_size=BATCH, max_seq_length=MAX_LEN)
    raw["checkpointing"]["checkpoints_dir"] = out_dir
    raw["metric_validation"]["plots"] = False
    for section, values in overrides.items():
        for key, value in values.items():
            target = raw.setdefault(section, {})
            if isinstance(value, dict):
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    timer = _step_timer()
    trainer = build_trainer(config_from_dict(raw), max_steps=steps, eval_strategy="no", save_strategy="no")
    trainer.add_callback(timer)
    trainer.train()
    return timer.times


def child(name: str, steps: int, out_dir: str) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    times = (
        plain_trainer(steps, out_dir) if name == "plain_trainer" else hf_metric_trainer(VARIANTS[name], steps, out_dir)
    )
    print("RESULT " + json.dumps({"variant": name, "times": times}), flush=True)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="/tmp/hf_metric_step_overhead")
    parser.add_argument("--no-docs", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps, args.out)
        return
    load_before = os.getloadavg()
    per_variant: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for name in args.variants:
            cmd = [sys.executable, __file__, "--child", name, "--steps", str(args.steps), "--out", args.out]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            times = json.loads(out.split("RESULT ", 1)[1])["times"][args.warmup :]
            per_variant[name].append(median(times))
            print(f"{name}: {per_variant[name][-1]:.3f} s/step", flush=True)
    load_after = os.getloadavg()
    base = median(per_variant.get("plain_trainer", [float("nan")]))
    rows = ["| variant | s / step (median of repeats) | x plain Trainer |", "|---|---|---|"]
    for name in args.variants:
        value = median(per_variant[name])
        rows.append(f"| {name} | {value:.3f} | {value / base:.3f} |")
    command = "python bench/step_overhead.py " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    section = "\n".join(
        [
            "<!-- step-overhead:start -->",
            "## Training step: hf_metric vs plain transformers.Trainer (`bench/step_overhead.py`)",
            "",
            f"Command: `{command}`; {time.strftime('%Y-%m-%d')}; {machine}; load average "
            f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; batch {BATCH}, max_len {MAX_LEN}, "
            f"{args.steps} steps ({args.warmup} warm-up), {args.repeats} alternating repeats.",
            "",
            *rows,
            "<!-- step-overhead:end -->",
        ]
    )
    print(section)
    if not args.no_docs:
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import write_section

        write_section(
            ROOT / "docs" / "benchmarks.md", section, ("<!-- step-overhead:start -->", "<!-- step-overhead:end -->")
        )


if __name__ == "__main__":
    main()
