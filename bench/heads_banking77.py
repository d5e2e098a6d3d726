"""Train one short run per classification head on the Banking77 demo subset and print a comparison table.

    python -m bench.heads_banking77 [--epochs 2] [--heads linear arcface ...] [--out docs/heads_banking77.json]

Every run uses configs/quickstart.yaml with only `head` changed (and `num_epochs`), so the numbers compare heads,
not recipes. Margin heads use scale 30 (64 is tuned for face recognition with far more steps).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from hf_metric.loading import config_from_dict
from hf_metric.run import train

ROOT = Path(__file__).resolve().parents[1]
HEADS = {
    "linear": {"type": "linear"},
    "cosine": {"type": "cosine", "scale": 30.0},
    "arcface": {"type": "arcface", "scale": 30.0, "margin": 0.2},
    "subcenter_arcface": {"type": "subcenter_arcface", "scale": 30.0, "margin": 0.2, "sub_centers": 3},
    "cosface": {"type": "cosface", "scale": 30.0, "margin": 0.2},
    "circle": {"type": "circle", "scale": 64.0, "margin": 0.25},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--heads", nargs="*", default=list(HEADS))
    parser.add_argument("--out", default=str(ROOT / "docs" / "heads_banking77.json"))
    args = parser.parse_args()
    base = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    base["data"]["parquet_path"] = str(ROOT / base["data"]["parquet_path"])
    results = {}
    for name in args.heads:
        raw = json.loads(json.dumps(base))
        raw["head"] = HEADS[name]
        raw["training"]["num_epochs"] = args.epochs
        raw["checkpointing"]["checkpoints_dir"] = str(ROOT / "checkpoints" / f"heads-{name}")
        start = time.perf_counter()
        metrics = train(config_from_dict(raw))
        results[name] = {
            "accuracy": metrics["eval_accuracy"],
            "f1": metrics["eval_f1"],
            "seconds": round(time.perf_counter() - start, 1),
            "head": HEADS[name],
        }
    print("\n| head | settings | val accuracy | val macro-F1 | wall s |\n|---|---|---|---|---|")
    for name, r in results.items():
        settings = ", ".join(f"{k}={v}" for k, v in r["head"].items() if k != "type")
        print(f"| {name} | {settings or '-'} | {r['accuracy']:.4f} | {r['f1']:.4f} | {r['seconds']} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"epochs": args.epochs, "results": results}, indent=2))


if __name__ == "__main__":
    main()
