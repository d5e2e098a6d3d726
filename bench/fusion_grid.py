"""Tune classifier + kNN fusion offline on arrays saved by `bench/quality.py --arrays DIR` (validation protocol).

    python -m bench.fusion_grid /work/logs/arrays/val/cosine.npz [...]

For each file: classifier-only and kNN-only accuracy, then accuracy / macro-F1 of the fused prediction for a
grid of weights and temperatures (`hf_metric.model.knn_fusion`), so the model's default can be picked on validation
rows only.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hf_metric.evaluation.metrics import accuracy, macro_f1
from hf_metric.model.knn_fusion import fuse_probabilities, knn_class_probabilities

WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0)
TEMPERATURES = (0.02, 0.05, 0.1)


def fused_scores(arrays, weights, temperature: float, k: int = 10) -> list[str]:
    """'accuracy / macro-F1' of the saved head logits fused with the kNN vote, one cell per weight."""
    logits, y = torch.from_numpy(arrays["eval_logits"]), arrays["eval_ids"]
    emb, ref, ref_ids = arrays["eval_emb"], arrays["train_emb"], arrays["train_ids"]
    p_knn = knn_class_probabilities(emb, ref, ref_ids, logits.shape[1], k, temperature)
    cells = []
    for w in weights:
        pred = fuse_probabilities(logits, p_knn, w).argmax(dim=1).numpy()
        cells.append(f"{accuracy(pred, y):.4f} / {macro_f1(pred, y):.4f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("arrays", nargs="+")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    for path in args.arrays:
        a = np.load(path)
        print(f"\n{path}")
        print("| T | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |")
        print("|---|" + "---|" * len(WEIGHTS))
        for t in TEMPERATURES:
            print(f"| {t} | " + " | ".join(fused_scores(a, WEIGHTS, t, args.k)) + " |")


if __name__ == "__main__":
    main()
