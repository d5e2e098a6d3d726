"""Seconds per optimizer step: hf_metric's trainer (the recipe and with each part switched off) against a plain
`transformers.Trainer` (CE, linear head) on the same backbone, batch, max_len and rows, with random batches and
with its own length grouping (`train_sampling_strategy="group_by_length"`, `LengthGroupedSampler`), the fair
peer of `recipe_length_grouping`.

    python -m bench.step_overhead --steps 40 --warmup 8 --repeats 3     # writes its table to docs/benchmarks.md
    python -m bench.step_overhead --data ../shared/data/banking77/train.parquet ...   # another training file

Each measurement is its own process (fresh allocator and caches); variants alternate (A B C ... A B C ...) so a
change in machine load hits all of them alike. A callback records the wall time of every optimizer step; the
median of the steps after `--warmup` is the variant's figure, and the table reports medians over repeats and the
ratio to the plain Trainer measured in the same rounds. Evaluation and saving are off: this is the training step.

Throughput: the collator is wrapped to count, per batch, the tokens fed (batch x longest row) and the real
(non-padding) tokens. Real tokens / s is the sum of real tokens over the timed steps divided by their time. The
FLOP bound of a training step is 6 x (non-embedding parameters) x tokens fed plus attention (12 x layers x
hidden x longest row per token fed); "x peak" divides the FLOP/s achieved on real tokens (useful work) and on
fed tokens by the float32 matmul peak measured in the same process (a 2048^3 `torch.mm`, best of 5).
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
    "plain_trainer_length_grouped": {},
    "recipe": {},
    "recipe_no_bank": {"metric_validation": {"keep_last_n_emb_steps": 1}},
    "recipe_no_supcon": {"loss": {"metric": {"weight": 0.0}}},
    "recipe_random_batches": {"training": {"sampler": "random"}},
    "recipe_no_collapse_watch": {"training": {"collapse_check_steps": 1_000_000}},
    "recipe_length_grouping": {"training": {"length_grouping": True}},
}
"""Name -> overrides of the example config (`plain_trainer*` is transformers alone). The recipe runs here without
length grouping (`hf_metric_trainer`; the example config's default groups text by length), so `recipe` and its
ablations are the peers of `plain_trainer` and `recipe_length_grouping` that of `plain_trainer_length_grouped`."""
PLAIN = ("plain_trainer", "plain_trainer_length_grouped")


class TokenCounter:
    """Wraps a data collator: (tokens fed, real tokens) of every batch it pads, in order."""

    def __init__(self, collator) -> None:
        self.collator, self.batches = collator, []

    def __call__(self, features):
        batch = self.collator(features)
        mask = batch["attention_mask"]
        self.batches.append((int(mask.numel()), int(mask.sum())))
        return batch


def matmul_peak() -> float:
    """Best float32 FLOP/s of a 2048^3 torch.mm over 5 tries, with the current torch threads."""
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 2048**3 / best


def model_flops(model, fed: int, longest: int) -> float:
    """Training FLOPs of one batch: 6 N tokens (N: non-embedding parameters) + attention scores and sums."""
    config = getattr(model.config, "encoder_config", None) or model.config
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    params = sum(p.numel() for p in model.parameters()) - embeddings
    return 6 * params * fed + 12 * config.num_hidden_layers * config.hidden_size * longest * fed


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


def length_grouping_arguments() -> dict[str, Any]:
    """The Trainer's own length grouping: `train_sampling_strategy` from transformers 5 on, `group_by_length`
    before."""
    from transformers import TrainingArguments

    if "train_sampling_strategy" in TrainingArguments.__dataclass_fields__:
        return {"train_sampling_strategy": "group_by_length"}
    return {"group_by_length": True}


def plain_trainer(steps: int, out_dir: str, length_grouped: bool = False) -> tuple[list[float], list, Any]:
    import pyarrow.parquet as pq
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer

    from hf_metric.packaged_models import resolve_model_path

    path = resolve_model_path(MODEL_NAME)
    table = pq.read_table(os.environ.get("BENCH_DATA", DATA), columns=["text", "label"]).to_pydict()
    names = sorted(set(table["label"]))
    ids = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    train = Dataset.from_dict({"text": table["text"], "label": [ids[v] for v in table["label"]]}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=MAX_LEN), batched=True, remove_columns=["text"]
    )
    timer, counter = _step_timer(), TokenCounter(DataCollatorWithPadding(tokenizer))
    trainer = Trainer(
        model=model,
        args=_arguments(out_dir, steps, **(length_grouping_arguments() if length_grouped else {})),
        train_dataset=train,
        processing_class=tokenizer,
        data_collator=counter,
        callbacks=[timer],
    )
    print(f"sampler: {type(trainer._get_train_sampler()).__name__}", flush=True)
    trainer.train()
    return timer.times, counter.batches, model


def hf_metric_trainer(overrides: dict[str, Any], steps: int, out_dir: str) -> tuple[list[float], list, Any]:
    import yaml

    from hf_metric.loading import config_from_dict
    from hf_metric.run import build_trainer

    raw = yaml.safe_load((ROOT / "configs" / "metric_classifier_training.example.yaml").read_text())
    raw["data"]["parquet_path"] = os.environ.get("BENCH_DATA", str(DATA))
    raw["training"].update(batch_size=BATCH, max_seq_length=MAX_LEN, length_grouping=False)  # VARIANTS' doc
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
    trainer.data_collator = counter = TokenCounter(trainer.data_collator)
    trainer.add_callback(timer)
    trainer.train()
    return timer.times, counter.batches, trainer.model


def child(name: str, steps: int, out_dir: str, warmup: int) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if name in PLAIN:
        times, batches, model = plain_trainer(steps, out_dir, length_grouped=name == "plain_trainer_length_grouped")
    else:
        times, batches, model = hf_metric_trainer(VARIANTS[name], steps, out_dir)
    timed = batches[warmup : len(times)]  # one batch per step (no gradient accumulation)
    seconds = sum(times[warmup:])
    fed, real = sum(b[0] for b in timed), sum(b[1] for b in timed)
    flops = sum(model_flops(model, b[0], b[0] // BATCH) for b in timed)
    peak = matmul_peak()
    result = {
        "variant": name,
        "times": times,
        "real_tokens_per_s": real / seconds,
        "padding_share": 1 - real / fed,
        "fed_flop_share": flops / seconds / peak,
        "real_flop_share": flops * real / fed / seconds / peak,
        "peak_gflops": peak / 1e9,
    }
    print("RESULT " + json.dumps(result), flush=True)


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
    parser.add_argument("--data", default=str(DATA), help="training Parquet (text, label)")
    args = parser.parse_args()
    os.environ["BENCH_DATA"] = args.data
    if args.child:
        child(args.child, args.steps, args.out, args.warmup)
        return
    load_before = os.getloadavg()
    per_variant: dict[str, list[float]] = {v: [] for v in args.variants}
    throughput: dict[str, list[dict]] = {v: [] for v in args.variants}
    for _ in range(args.repeats):
        for name in args.variants:
            cmd = [sys.executable, "-m", "bench.step_overhead", "--child", name, "--steps", str(args.steps)]
            cmd += ["--out", args.out]
            cmd += ["--warmup", str(args.warmup), "--data", args.data]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            result = json.loads(out.split("RESULT ", 1)[1])
            per_variant[name].append(median(result["times"][args.warmup :]))
            throughput[name].append(result)
            print(
                f"{name}: {per_variant[name][-1]:.3f} s/step, {result['real_tokens_per_s']:.0f} real tokens/s, "
                f"padding {result['padding_share']:.3f}",
                flush=True,
            )
    load_after = os.getloadavg()
    base = median(per_variant.get("plain_trainer", [float("nan")]))
    grouped_base = median(per_variant.get("plain_trainer_length_grouped", [float("nan")]))
    rows = [
        "| variant | s / step (median of repeats) | x plain Trainer | x plain Trainer, length-grouped "
        "| real tokens / s | padding share | x peak (real tokens) | x peak (fed tokens) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.variants:
        value = median(per_variant[name])
        t = {
            key: median([r[key] for r in throughput[name]])
            for key in throughput[name][0]
            if key not in ("times", "variant")
        }
        rows.append(
            f"| {name} | {value:.3f} | {value / base:.3f} | {value / grouped_base:.3f} "
            f"| {t['real_tokens_per_s']:,.0f} | {t['padding_share']:.3f} "
            f"| {t['real_flop_share']:.3f} | {t['fed_flop_share']:.3f} |"
        )
    peak = median([r["peak_gflops"] for runs in throughput.values() for r in runs])
    rows.append(f"\nfloat32 matmul peak (2048^3 torch.mm, median of the runs' best): {peak:.1f} GFLOP/s.")
    command = "python -m bench.step_overhead " + " ".join(sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}"
    section = "\n".join(
        [
            "<!-- step-overhead:start -->",
            "## Training step: hf_metric vs plain transformers.Trainer (`python -m bench.step_overhead`)",
            "",
            f"Command: `{command}`; {time.strftime('%Y-%m-%d')}; {machine}; load average "
            f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; batch {BATCH}, max_len {MAX_LEN}, "
            f"{args.steps} steps ({args.warmup} warm-up), {args.repeats} alternating repeats; data "
            f"{Path(args.data).name} ({Path(args.data).parent.name}).",
            "",
            *rows,
            "<!-- step-overhead:end -->",
        ]
    )
    print(section)
    if not args.no_docs:
        from bench.docs_section import write_section

        write_section(
            ROOT / "docs" / "benchmarks.md", section, ("<!-- step-overhead:start -->", "<!-- step-overhead:end -->")
        )


if __name__ == "__main__":
    main()
