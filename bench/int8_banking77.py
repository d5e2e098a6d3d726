"""What int8 quantisation costs on Banking77 test: `hf-metric export --quantize int8` on a model, with the
accuracy of float32 PyTorch and of the int8 graph on the 3,080 test rows.

`--model DIR` exports a trained model folder (the recipe's `best/`). Without it, a model is built in minutes on a
CPU: the packaged MiniLM-L6 encoder, frozen (no fine-tuning), a logistic-regression head fitted on its pooled
training outputs, and the 10,003 training embeddings stored for kNN fusion (w 0.3, k 10, T 0.05, the recipe's
defaults). That measures what int8 does to this encoder and head, not the accuracy of a fine-tuned model.

    python -m bench.int8_banking77 --data /work/shared/data/banking77 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np

BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


def frozen_model(data: str, folder: str, max_length: int, batch_size: int = 64) -> str:
    """MiniLM-L6 (frozen) + a logistic-regression head on its pooled output + the stored training rows."""
    import pyarrow.parquet as pq
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoTokenizer

    from hf_metric.model.modeling import MetricClassifierModel
    from hf_metric.packaged_models import resolve_model_path

    train = pq.read_table(os.path.join(data, "train.parquet")).to_pydict()
    names = sorted(set(train["label"]))
    path = resolve_model_path(BACKBONE)
    torch.manual_seed(0)
    model = MetricClassifierModel.from_backbone(path, dict(enumerate(names)), knn_fusion_weight=0.3).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts, labels = train["text"], np.asarray([names.index(label) for label in train["label"]])
    pooled = np.zeros((len(texts), model.config.encoder_config.hidden_size), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length)
            enc = {k: torch.tensor(v) for k, v in enc.items()}
            pooled[rows] = model._encode(enc, enc["attention_mask"]).float().numpy()
    head = LogisticRegression(C=10.0, max_iter=3000).fit(pooled, labels)
    with torch.no_grad():
        model.head.linear.weight.copy_(torch.from_numpy(head.coef_).float())
        model.head.linear.bias.copy_(torch.from_numpy(head.intercept_).float())
    model.set_knn_reference(torch.nn.functional.normalize(torch.from_numpy(pooled), dim=-1), torch.from_numpy(labels))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/data/banking77", help="folder with train/test.parquet")
    parser.add_argument("--model", help="a trained model folder (default: build the frozen-encoder model)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from hf_metric.commands import main as hf_metric

    tmp = tempfile.mkdtemp(prefix="int8_banking77_")
    model = args.model or frozen_model(args.data, os.path.join(tmp, "model"), args.max_length)
    out = os.path.join(tmp, "int8")
    command = ["export", "--model", model, "--out", out, "--data", os.path.join(args.data, "test.parquet")]
    command += ["--quantize", "int8", "--max-accuracy-drop", "100"]  # report the change, whatever it is
    command += ["--set", f"training.max_seq_length={args.max_length}"]
    if hf_metric(command) != 0:
        sys.exit(1)
    with open(os.path.join(out, "hf_metric_export.json"), encoding="utf-8") as fh:
        print(json.dumps(json.load(fh)["int8"], indent=2))


if __name__ == "__main__":
    main()
