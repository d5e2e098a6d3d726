"""EmbeddingBank: a fixed-memory ring of the last N steps, checked against what was added (kept on the side)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hf_metric.training.bank import EmbeddingBank

DIM = 4


def step_rows(step: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Content that identifies its step and row: embedding [step, row, step * row, 1], label 100 * step + row."""
    r = torch.arange(rows, dtype=torch.float32)
    emb = torch.stack([torch.full_like(r, step), r, step * r, torch.ones_like(r)], dim=1)
    return emb, 100 * step + torch.arange(rows)


def expected(steps_and_rows: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [step_rows(s, n) for s, n in steps_and_rows]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fill(bank: EmbeddingBank, steps: range) -> dict[int, int]:
    """Add steps with 1..4 rows each (varying, so slots are partly filled); returns rows per step."""
    rows = {s: 1 + (s * 7) % 4 for s in steps}
    for s in steps:
        bank.add(s, *step_rows(s, rows[s]))
    return rows


def test_ring_keeps_exactly_the_last_steps():
    bank = EmbeddingBank(capacity_steps=3, dim=DIM, max_rows_per_step=4)
    rows = fill(bank, range(10))
    assert bank.steps() == [7, 8, 9]
    want_emb, want_labels = expected([(s, rows[s]) for s in (7, 8, 9)])
    assert torch.equal(bank.embeddings(), want_emb)
    assert torch.equal(bank.labels(), want_labels)
    assert len(bank) == rows[7] + rows[8] + rows[9]


def test_partial_ring_and_empty_bank():
    bank = EmbeddingBank(capacity_steps=5, dim=DIM, max_rows_per_step=4)
    assert len(bank) == 0 and bank.embeddings().shape == (0, DIM) and bank.labels().shape == (0,)
    rows = fill(bank, range(2))
    assert bank.steps() == [0, 1]
    assert torch.equal(bank.embeddings(), expected([(0, rows[0]), (1, rows[1])])[0])


def test_micro_batches_of_one_step_append_to_its_slot():
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=6)
    emb, labels = step_rows(5, 6)
    for part in range(3):  # gradient accumulation: 3 micro-batches of 2 rows
        bank.add(5, emb[2 * part : 2 * part + 2], labels[2 * part : 2 * part + 2])
    bank.add(6, *step_rows(6, 1))
    bank.add(7, *step_rows(7, 2))  # evicts step 5 as a whole
    assert bank.steps() == [6, 7]
    assert torch.equal(bank.embeddings(), expected([(6, 1), (7, 2)])[0])


def test_steps_may_be_sparse_but_not_go_back():
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=4)
    for s in (3, 10, 40):
        bank.add(s, *step_rows(s, 1))
    assert bank.steps() == [10, 40]
    with pytest.raises(ValueError, match="must not decrease"):
        bank.add(39, *step_rows(39, 1))


def test_too_many_rows_in_a_step_raises_and_changes_nothing():
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=3)
    bank.add(0, *step_rows(0, 2))
    bank.add(1, *step_rows(1, 2))
    before = bank.embeddings()
    with pytest.raises(ValueError, match="max_rows_per_step=3"):
        bank.add(1, *step_rows(1, 2))
    with pytest.raises(ValueError, match="max_rows_per_step=3"):
        bank.add(2, *step_rows(2, 4))  # a new step that does not fit must not evict step 0
    assert bank.steps() == [0, 1] and torch.equal(bank.embeddings(), before)


def test_memory_is_preallocated_and_rows_are_copied_and_detached():
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=4)
    storage = bank._emb.data_ptr()
    emb = torch.ones(2, DIM, requires_grad=True) * 3
    bank.add(0, emb, torch.tensor([1, 2]))
    snapshot = bank.embeddings()
    with torch.no_grad():
        emb.zero_()  # the caller reusing its buffer must not change the bank
    fill(bank, range(1, 20))
    assert bank._emb.data_ptr() == storage
    assert not bank.embeddings().requires_grad
    assert torch.equal(snapshot, torch.full((2, DIM), 3.0))  # a copy, untouched by later adds


def test_numpy_input_and_validation():
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=2)
    bank.add(0, np.ones((2, DIM), dtype=np.float64), np.array([3, 4]))
    assert bank.embeddings().dtype == torch.float32 and bank.labels().tolist() == [3, 4]
    with pytest.raises(ValueError, match="shape"):
        bank.add(1, np.ones((2, DIM + 1)), [0, 1])
    with pytest.raises(TypeError, match="integers"):
        bank.add(1, np.ones((2, DIM)), np.array([0.5, 1.0]))


def test_clear():
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=4)
    fill(bank, range(3))
    bank.clear()
    assert len(bank) == 0 and bank.steps() == []
    bank.add(0, *step_rows(0, 1))  # after clear, steps may start again
    assert bank.steps() == [0]


def test_save_load_round_trip(tmp_path):
    bank = EmbeddingBank(capacity_steps=3, dim=DIM, max_rows_per_step=4)
    rows = fill(bank, range(8))
    bank.save(tmp_path / "bank.safetensors")

    restored = EmbeddingBank(capacity_steps=3, dim=DIM, max_rows_per_step=4)
    restored.load(tmp_path / "bank.safetensors")
    want_emb, want_labels = expected([(s, rows[s]) for s in (5, 6, 7)])
    assert restored.steps() == [5, 6, 7]
    assert torch.equal(restored.embeddings(), want_emb) and torch.equal(restored.labels(), want_labels)
    fill(restored, range(8, 9))  # the ring goes on where it stopped: step 5 is the oldest
    assert restored.steps() == [6, 7, 8]

    smaller = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=4)
    smaller.load(tmp_path / "bank.safetensors")
    assert smaller.steps() == [6, 7]

    empty = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=4)
    empty.save(tmp_path / "empty.safetensors")
    smaller.load(tmp_path / "empty.safetensors")
    assert len(smaller) == 0


def test_load_rejects_other_files(tmp_path):
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"))
    bank = EmbeddingBank(capacity_steps=2, dim=DIM, max_rows_per_step=4)
    with pytest.raises(ValueError, match="not an EmbeddingBank"):
        bank.load(tmp_path / "model.safetensors")
    other = EmbeddingBank(capacity_steps=2, dim=DIM + 1, max_rows_per_step=4)
    other.save(tmp_path / "wide.safetensors")
    with pytest.raises(ValueError, match="dim"):
        bank.load(tmp_path / "wide.safetensors")
