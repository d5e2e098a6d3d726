"""Train SetFit (defaults: contrastive pairs, then a logistic-regression head) on one k-shot file and predict.

Run by `bench/few_shot.py` with the python of its SetFit virtualenv; it imports nothing from hf_metric, and
writes the predicted label names, the training wall time and the versions used to `--out` (JSON).
"""

from __future__ import annotations

import argparse
import json
import time

import pyarrow.parquet as pq
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", required=True, help="Parquet with text, label")
    parser.add_argument("--eval", required=True, help="Parquet with text (labels are not read)")
    parser.add_argument("--model", required=True, help="local sentence-transformers folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=-1, help="contrastive steps (smoke runs); -1: all pairs")
    parser.add_argument("--num-iterations", type=int, default=None, help="pairs per row; default: oversampling")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import datasets
    import setfit
    import transformers
    from setfit import SetFitModel, Trainer, TrainingArguments

    train = pq.read_table(args.train, columns=["text", "label"]).to_pydict()
    texts = pq.read_table(args.eval, columns=["text"]).column("text").to_pylist()
    model = SetFitModel.from_pretrained(args.model)
    training_args = TrainingArguments(
        seed=args.seed,
        max_steps=args.max_steps,
        num_iterations=args.num_iterations,
        max_length=64,
        report_to="none",
        save_strategy="no",
        logging_steps=500,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=datasets.Dataset.from_dict(train))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    predictions = [str(p) for p in model.predict(texts, batch_size=128, use_labels=True)]
    result = {
        "predictions": predictions,
        "seconds": seconds,
        "pairs": len(trainer.st_trainer.train_dataset),  # contrastive pairs trained on
        "versions": {name: module.__version__ for name, module in [("setfit", setfit), ("torch", torch)]}
        | {"transformers": transformers.__version__},
    }
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
