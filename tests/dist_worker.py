"""Run under `torchrun --nproc_per_node 2`: the distributed side of tests/test_distributed.py.

dist_worker.py supcon OUT_JSON MODE        cross-process SupCon loss and gradients
dist_worker.py train OUT_DIR CONFIG        one SGD step of the real trainer, then an evaluation
dist_worker.py pk OUT_DIR CONFIG [CKPT]    P x K batches with gradient accumulation 2 (resumed from CKPT)
dist_worker.py group_sampler OUT_DIR       the rows accelerate's prepared DataLoader gives each process
dist_worker.py sharded_search OUT_PT       top k of every query, each process searching half the references
"""

import json
import os
import sys

import torch
import torch.distributed as dist

from hf_metric.model.losses import SupConLoss
from hf_metric.training.distributed import cross_process_per_anchor

B = 6


def supcon_inputs(world: int):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(world * B, 8, generator=g)
    labels = torch.randint(0, 3, (world * B,), generator=g)
    mask = (torch.rand(world * B, generator=g) > 0.2).long()
    return emb, labels, mask


def supcon(out: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    emb, labels, mask = supcon_inputs(world)
    rows = slice(rank * B, (rank + 1) * B)
    local = emb[rows].clone().requires_grad_()
    per_row, valid = cross_process_per_anchor(SupConLoss(0.1), local, labels[rows], mask[rows], mode)
    loss = per_row[valid].sum() / SupConLoss.num_anchors(labels, mask)
    loss.backward()
    total = loss.detach().clone()
    dist.all_reduce(total)
    grads = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(grads, local.grad)
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"loss": total.item(), "grad": torch.cat(grads).tolist()}, fh)


def train(out_dir: str, config: str) -> None:
    sys.path.insert(0, os.path.dirname(__file__))
    from test_training import _sequential_trainer

    trainer = _sequential_trainer(config)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    delta = {k: before[k] - v.detach() for k, v in trainer.model.named_parameters()}
    metrics = trainer.evaluate()
    rank = trainer.accelerator.process_index
    result = {
        "metrics": metrics,
        "bank_size": len(trainer.bank),
        "world": trainer.accelerator.num_processes,
        "wrapped": type(trainer.model_wrapped).__name__,
        "train_log": next(h for h in trainer.state.log_history if "ce_loss" in h),
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)
    if rank == 0:
        torch.save(delta, os.path.join(out_dir, "delta.pt"))


def _row_key(input_ids, attention_mask, label) -> list:
    """A row's identity: its tokens without padding, and its label."""
    return [[int(t) for t, m in zip(input_ids, attention_mask, strict=True) if m], int(label)]


def pk(out_dir: str, config: str, checkpoint: str | None = None) -> None:
    """Record every micro-batch each process trains on (rows and optimizer step), and the sampler's own order."""
    from hf_metric.loading import load_config
    from hf_metric.run import build_trainer

    trainer = build_trainer(load_config(config), gradient_accumulation_steps=2, report_to=[])
    seen = []
    original = trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        rows = zip(
            inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), inputs["labels"].tolist(), strict=True
        )
        seen.append({"step": trainer.state.global_step + 1, "rows": [_row_key(*r) for r in rows]})
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    trainer.train(resume_from_checkpoint=checkpoint)
    sampler = trainer._get_train_sampler()
    data = trainer.train_dataset
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        epochs.append([_row_key(data[i]["input_ids"], data[i]["attention_mask"], data[i]["labels"]) for i in sampler])
    result = {
        "seen": seen,
        "sampler_epochs": epochs,
        "batch_size": sampler.batch_size,
        "num_batches": sampler.num_batches,
        "all_rows": [_row_key(r["input_ids"], r["attention_mask"], r["labels"]) for r in data],
    }
    with open(os.path.join(out_dir, f"pk_rank{trainer.accelerator.process_index}.json"), "w") as fh:
        json.dump(result, fh)


def group_sampler_data():
    import numpy as np

    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(30), rng.integers(3, 20, size=30)))
    return labels, {c: f"g{c % 7}" for c in range(30)}, 16, 4


def group_sampler(out_dir: str) -> None:
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from hf_metric.training.group_sampler import GroupPKSampler

    accelerator = Accelerator(cpu=True)
    labels, groups, batch_size, k = group_sampler_data()
    sampler = GroupPKSampler(labels, groups, batch_size, k, seed=7, num_replicas=accelerator.num_processes)
    loader = accelerator.prepare(DataLoader(list(range(len(labels))), batch_size=batch_size, sampler=sampler))
    rows = [int(i) for batch in loader for i in batch]
    torch.save(rows, os.path.join(out_dir, f"rank{accelerator.process_index}.pt"))


def sharded_search_data():
    """Gaussian rows (distinct scores) and +-1 rows (many exact ties), 13 references: shards of 7 and 6."""
    g = torch.Generator().manual_seed(0)
    gauss = (torch.randn(9, 5, generator=g), torch.randn(13, 5, generator=g))
    dyadic = tuple(torch.randint(0, 2, (n, 4), generator=g).float() * 2 - 1 for n in (9, 13))
    return {"gauss": gauss, "dyadic": dyadic}


def sharded_search(out: str) -> None:
    from hf_metric.evaluation.sharded_search import distributed_topk_neighbors, shard_span, sharded_topk_neighbors

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for kind, (query, ref) in sharded_search_data().items():
        start, stop = shard_span(len(ref), rank, world)
        for distance in ("cos", "l2"):
            for k in (1, 4, 9, 20):  # 9 > the 6 rows of rank 1's shard; 20 > all 13 rows
                results[(kind, distance, k, "shard")] = distributed_topk_neighbors(query, ref[start:stop], k, distance)
                results[(kind, distance, k, "whole")] = sharded_topk_neighbors(query, ref, k, distance)
    if rank == 0:
        torch.save(results, out)


def _shut_down_process_group() -> None:
    """Every mode's one teardown: wait for the other rank, then tear gloo down before the interpreter exits. A
    rank that exits while its process group is still alive can abort in gloo's destructor ("terminate called
    without an active exception"), which failed the 2-process training test once after both ranks had finished."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1] == "supcon":
        supcon(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "pk":
        pk(*sys.argv[2:])
    elif sys.argv[1] == "sharded_search":
        sharded_search(sys.argv[2])
    elif sys.argv[1] == "group_sampler":
        group_sampler(sys.argv[2])
    else:
        train(sys.argv[2], sys.argv[3])
    _shut_down_process_group()
