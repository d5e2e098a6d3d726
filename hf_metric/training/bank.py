"""A fixed-size memory of the embeddings of the last N optimizer steps (cross-batch memory).

Contrastive losses and in-training retrieval metrics get better with more candidates than one batch holds;
keeping the (detached) embeddings of recent steps provides them at almost no cost, because embeddings drift
slowly (Wang et al., 2020, "Cross-Batch Memory for Embedding Learning"). The bank is a ring of
`capacity_steps` slots of `max_rows_per_step` rows, preallocated once, so its memory never grows and a long
run cannot leak: adding a step overwrites the oldest slot. It is per process and knows nothing about
distribution; in a multi-process run, gather the rows of all processes first and add them in every process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

BANK_FORMAT = "hf_metric.EmbeddingBank/1"
"""Written into the safetensors metadata by `save`, checked by `load`."""


class EmbeddingBank:
    """Ring buffer of the embeddings and integer labels of the last `capacity_steps` steps.

    A step is any step id passed to `add`; steps must not decrease. Several `add` calls with the same step
    (gradient-accumulation micro-batches, or one call per process after a gather) append to that step's slot.
    The first `add` of a new step takes the slot of the oldest step held, so the bank always holds exactly the
    last `capacity_steps` distinct steps it was given, even if some optimizer steps added nothing.

    Args:
        capacity_steps: steps held.
        dim: embedding width.
        max_rows_per_step: rows one step may add in total (e.g. per-device batch x accumulation steps x
            processes). Exceeding it raises `ValueError` rather than growing: the memory stays what was
            budgeted, and a wrong setting shows at once instead of as a slow leak.
        device: where the buffers live (e.g. the model's device, to search the bank without copies).
        dtype: storage type of the embeddings (float32; bfloat16 halves the memory).

    Example::

        bank = EmbeddingBank(capacity_steps=16, dim=384, max_rows_per_step=64)
        bank.add(state.global_step, embeddings, labels)
        recall_at_k(val_emb, val_labels, bank.embeddings(), bank.labels())
    """

    def __init__(
        self,
        capacity_steps: int,
        dim: int,
        max_rows_per_step: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if capacity_steps < 1 or dim < 1 or max_rows_per_step < 1:
            raise ValueError(
                f"capacity_steps, dim and max_rows_per_step must be >= 1, got {capacity_steps}, {dim}, "
                f"{max_rows_per_step}"
            )
        self.capacity_steps, self.dim, self.max_rows_per_step = capacity_steps, dim, max_rows_per_step
        self.device = torch.device(device)
        self._emb = torch.zeros(capacity_steps * max_rows_per_step, dim, dtype=dtype, device=self.device)
        self._labels = torch.zeros(capacity_steps * max_rows_per_step, dtype=torch.int64, device=self.device)
        # Per slot: the step it holds (-1: empty) and how many of its rows are filled. Kept as Python lists:
        # they are tiny, and the slot bookkeeping then never synchronises with an accelerator.
        self._slot_step = [-1] * capacity_steps
        self._slot_rows = [0] * capacity_steps
        self._newest = -1  # slot of the newest step; the oldest is the next one round the ring

    def clear(self) -> None:
        """Forget every step (the buffers are kept, so the memory is not released)."""
        self._slot_step = [-1] * self.capacity_steps
        self._slot_rows = [0] * self.capacity_steps
        self._newest = -1

    def add(
        self, step: int, embeddings: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | list[int]
    ) -> None:
        """Append `embeddings` (rows, dim) and their integer `labels` (rows,) to the slot of `step`.

        The embeddings are detached and copied into the bank's own storage (converted to its dtype and
        device), so the caller's tensors and graph are not kept alive.
        """
        emb = embeddings.detach() if isinstance(embeddings, torch.Tensor) else torch.as_tensor(embeddings)
        lab = labels.detach() if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"embeddings must have shape (rows, {self.dim}), got {tuple(emb.shape)}")
        if lab.shape != (emb.shape[0],):
            raise ValueError(f"labels must have shape ({emb.shape[0]},), got {tuple(lab.shape)}")
        if lab.numel() and (lab.dtype.is_floating_point or lab.dtype == torch.bool):
            raise TypeError(f"labels must be integers, got {lab.dtype}")
        step, rows = int(step), emb.shape[0]
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        newest_step = self._slot_step[self._newest] if self._newest >= 0 else -1
        if step < newest_step:
            raise ValueError(f"steps must not decrease: got step {step} after step {newest_step} (clear() first)")
        new_step = step != newest_step
        filled = 0 if new_step else self._slot_rows[self._newest]
        if filled + rows > self.max_rows_per_step:  # checked before anything changes
            raise ValueError(
                f"step {step} would hold {filled + rows} rows, more than max_rows_per_step={self.max_rows_per_step}"
                " (set it to at least per-device batch x gradient-accumulation steps x processes)"
            )
        if new_step:
            self._newest = (self._newest + 1) % self.capacity_steps
            self._slot_step[self._newest] = step
        slot = self._newest
        start = slot * self.max_rows_per_step + filled
        self._emb[start : start + rows] = emb.to(self._emb.device, self._emb.dtype)
        self._labels[start : start + rows] = lab.to(self._labels.device, torch.int64)
        self._slot_rows[slot] = filled + rows

    def _slots_oldest_first(self) -> list[int]:
        order = [(self._newest + 1 + i) % self.capacity_steps for i in range(self.capacity_steps)]
        return [s for s in order if self._slot_step[s] >= 0]

    def _row_index(self) -> torch.Tensor:
        """Buffer rows of the valid entries, oldest step first and in insertion order within a step."""
        spans = [
            torch.arange(s * self.max_rows_per_step, s * self.max_rows_per_step + self._slot_rows[s])
            for s in self._slots_oldest_first()
        ]
        return torch.cat(spans).to(self.device) if spans else torch.zeros(0, dtype=torch.int64, device=self.device)

    def embeddings(self) -> torch.Tensor:
        """The valid rows, (len(self), dim), oldest step first; a new tensor, unaffected by later `add`s."""
        return self._emb.index_select(0, self._row_index())

    def labels(self) -> torch.Tensor:
        """The labels of `embeddings()`, in the same order (int64)."""
        return self._labels.index_select(0, self._row_index())

    def recent(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The newest `rows` rows (all when the bank holds fewer): `(embeddings, labels)`, e.g. the memory of
        `training.bank_negatives`."""
        index = self._row_index()[-rows:]
        return self._emb.index_select(0, index), self._labels.index_select(0, index)

    def steps(self) -> list[int]:
        """The step ids held, oldest first."""
        return [self._slot_step[s] for s in self._slots_oldest_first()]

    def __len__(self) -> int:
        return sum(self._slot_rows[s] for s in self._slots_oldest_first())

    def __repr__(self) -> str:
        return (
            f"EmbeddingBank(capacity_steps={self.capacity_steps}, dim={self.dim}, "
            f"max_rows_per_step={self.max_rows_per_step}, rows={len(self)}, steps={self.steps()})"
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The contents as plain CPU tensors (valid rows only, so the size follows the data, not the capacity):
        "embeddings", "labels", and per step held, oldest first, "steps" and "rows_per_step"."""
        slots = self._slots_oldest_first()
        return {
            "embeddings": self.embeddings().cpu(),
            "labels": self.labels().cpu(),
            "steps": torch.tensor([self._slot_step[s] for s in slots], dtype=torch.int64),
            "rows_per_step": torch.tensor([self._slot_rows[s] for s in slots], dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the contents by `state` (from `state_dict`), replaying its steps oldest first.

        The bank's own capacity applies: a state with more steps than `capacity_steps` keeps the newest ones,
        which lets a run resume with a smaller bank. The width must match.
        """
        emb, labels = state["embeddings"], state["labels"]
        steps, rows = state["steps"].tolist(), state["rows_per_step"].tolist()
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"saved embeddings have shape {tuple(emb.shape)}, this bank has dim {self.dim}")
        if sum(rows) != emb.shape[0] or labels.shape != (emb.shape[0],) or len(steps) != len(rows):
            raise ValueError("inconsistent bank state: rows_per_step, embeddings and labels do not match")
        self.clear()
        start = 0
        for step, n in zip(steps, rows, strict=True):
            self.add(step, emb[start : start + n], labels[start : start + n])
            start += n

    def save(self, path: str | Path) -> None:
        """Write `state_dict()` to a safetensors file (e.g. next to a checkpoint's model.safetensors)."""
        from safetensors.torch import save_file

        tensors = {name: t.contiguous() for name, t in self.state_dict().items()}
        save_file(tensors, str(path), metadata={"format": BANK_FORMAT, "dtype": str(self._emb.dtype)})

    def load(self, path: str | Path) -> None:
        """Replace the contents by a file written by `save` (see `load_state_dict`)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            fmt = (f.metadata() or {}).get("format")
        if fmt != BANK_FORMAT:
            raise ValueError(f"{path}: not an EmbeddingBank file (format {fmt!r}, expected {BANK_FORMAT!r})")
        self.load_state_dict(load_file(str(path)))
