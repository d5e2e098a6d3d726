"""Tune classifier + kNN fusion offline on arrays saved by `bench/quality.py --arrays DIR` (validation protocol).

    python bench/fusion_grid.py /work/logs/arrays/val/cosine.npz [...]

For each file: classifier-only and kNN-only accuracy, then accuracy / macro-F1 of the fused prediction for a
grid of weights and temperatures (`hf_metric.knn_fusion`), so the model's default can be picked on validation
rows only.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hf_metric.knn_fusion import fuse_probabilities, knn_class_probabilities
from hf_metric.metrics import accuracy, macro_f1

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0)
TEMPERATURES = (0.02, 0.05, 0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("arrays", nargs="+")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    for path in args.arrays:
        a = np.load(path)
        logits = torch.from_numpy(a["eval_logits"])
        y = a["eval_ids"]
        print(f"\n{path}")
        print("| T | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |")
        print("|---|" + "---|" * len(WEIGHTS))
        for t in TEMPERATURES:
            p_knn = knn_class_probabilities(a["eval_emb"], a["train_emb"], a["train_ids"], logits.shape[1], args.k, t)
            cells = []
            for w in WEIGHTS:
                pred = fuse_probabilities(logits, p_knn, w).argmax(dim=1).numpy()
                cells.append(f"{accuracy(pred, y):.4f} / {macro_f1(pred, y):.4f}")
            print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
