"""Group-aware P x K batches: confusable classes (the same `group`) meet in one batch as negatives.

`ClassBalancedBatchSampler` packs P random classes into a batch; with hundreds of classes, two classes of the same
group (trees at one address, intents of one scenario) almost never share a batch, so the metric loss never
pushes them apart. `GroupPKSampler` builds each batch from a few groups: `P - round(group_mix * P)` classes come
from at most `groups_per_batch` groups, the other `round(group_mix * P)` from the rest, K rows each.

Guarantees (tested in tests/test_group_sampler.py):
- every batch holds P distinct classes x K rows (needs at least P classes);
- every row appears at least once per epoch: each class is shuffled and cut into chunks of K, the last chunk
  topped up from its own class, and every chunk is placed (the classes whose chunks would otherwise not fit are
  placed first); the only repeated rows are those top-ups and the fillers of batches left short;
- the epoch length is fixed and a multiple of `num_replicas`, so under accelerate (which deals whole batches
  to processes in turn) every process gets distinct rows and together they cover the epoch once;
- the order of epoch e depends only on `seed + e` and the group weights of that epoch, which their owner records
  (`curriculum.HardGroupCurriculum` keeps them in the checkpoint) so a resumed run replays the same batches.

With `lengths` (`training.length_grouping`) the batches hold rows of similar length (`GroupPKSampler` args,
docs/sampling.md) under the same guarantees.

Group weights (`GroupWeights`, e.g. the hard-group curriculum) change how many chunks each group contributes to
an epoch: a weight of 2 draws the group's chunks twice as often, 0.5 half as often; the epoch length does not
change, and uniform weights (the default) give the coverage guarantee above.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from torch.utils.data import Sampler

from .length_batches import MEGA_BATCH, LengthPool, deal, length_chunks


class GroupWeights(Protocol):
    """Source of per-group sampling weights for an epoch (`curriculum.HardGroupCurriculum`)."""

    def weights_for_epoch(self, epoch: int, groups: Sequence[str]) -> np.ndarray | None:
        """Weight of each of `groups` in `epoch` (relative), or None for uniform; the same answer every time it
        is asked for the same epoch, so that a resumed run replays the epoch it stopped in."""


class GroupPKSampler(Sampler[int]):
    """Yields row indices so that each consecutive run of `batch_size` is one group-aware P x K batch.

    Args:
        labels: encoded label of every row.
        class_groups: class id -> group name (classes missing here form a group of their own).
        batch_size: rows per batch, a multiple of `samples_per_class`.
        samples_per_class: K.
        groups_per_batch: at most this many groups provide the in-group classes of a batch.
        group_mix: share of the P classes drawn from other groups (0: none, 1: ignore groups).
        seed: the order of epoch e depends only on `seed + e` (and that epoch's weights).
        num_replicas: processes the batches are dealt to; the batch count is rounded up to a multiple of it.
        weights: optional per-epoch group weights (see `GroupWeights`).
        lengths: tokens of every row (`training.length_grouping`); given, each class's rows of the epoch are
            sorted by length before they are cut into chunks, every batch gets a target length (a mega-batch's
            targets sweep the lengths left), classes and groups with a chunk near it are preferred and give that
            chunk (`length_batches.LengthPool`), and the batches come in a random order, the longest first. The
            group rules, the coverage and the epoch length stay those without lengths.
    """

    def __init__(
        self,
        labels: Sequence[int],
        class_groups: Mapping[int, str],
        batch_size: int,
        samples_per_class: int,
        groups_per_batch: int = 2,
        group_mix: float = 0.25,
        seed: int = 0,
        num_replicas: int = 1,
        weights: GroupWeights | None = None,
        lengths: Sequence[int] | None = None,
    ) -> None:
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_class {samples_per_class}")
        if not 0.0 <= group_mix <= 1.0:
            raise ValueError(f"group_mix must be in [0, 1], got {group_mix}")
        self.labels = np.asarray(labels)
        self.batch_size, self.k = batch_size, samples_per_class
        self.p = batch_size // samples_per_class
        self.p_mix = round(group_mix * self.p)
        self.groups_per_batch = max(1, groups_per_batch)
        self.seed, self.epoch, self.weights = seed, 0, weights
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.float64)
        if self.lengths is not None and self.lengths.shape != self.labels.shape:
            raise ValueError(f"lengths has {len(self.lengths)} rows, labels {len(self.labels)}")
        self.classes = np.unique(self.labels)
        if len(self.classes) < self.p:
            raise ValueError(f"group P x K batches need at least P={self.p} classes, the data has {len(self.classes)}")
        self.class_rows = [np.flatnonzero(self.labels == c) for c in self.classes]
        names = [str(class_groups.get(int(c), f"<class {int(c)}>")) for c in self.classes]
        self.groups = sorted(set(names))
        index = {g: i for i, g in enumerate(self.groups)}
        self.class_group = np.array([index[n] for n in names])
        self.chunks_per_class = np.array([math.ceil(len(rows) / self.k) for rows in self.class_rows])
        batches = max(math.ceil(self.chunks_per_class.sum() / self.p), int(self.chunks_per_class.max()))
        self.num_batches = math.ceil(batches / num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def _chunk_counts(self, rng: np.random.Generator, weights: np.ndarray | None) -> np.ndarray:
        """Chunks of each class this epoch: all of them, or (weighted) each group's share scaled by its weight,
        the total kept, each class capped at `num_batches` (a class appears at most once per batch)."""
        base = self.chunks_per_class.astype(float)
        if weights is None:
            return self.chunks_per_class.copy()
        target = base * weights[self.class_group]
        target *= base.sum() / max(target.sum(), 1e-12)
        target = np.minimum(target, self.num_batches)
        counts = np.floor(target).astype(int)
        counts += rng.random(len(counts)) < (target - counts)  # stochastic rounding, seeded
        return np.minimum(counts, self.num_batches)

    def _chunks(self, rng: np.random.Generator, counts: np.ndarray) -> list[list[np.ndarray]]:
        """`counts[c]` chunks of K rows of class c: the class's rows shuffled (repeated when more are asked)."""
        chunks = []
        for rows, n in zip(self.class_rows, counts, strict=True):
            need = n * self.k
            order = np.concatenate([rng.permutation(rows) for _ in range(max(1, math.ceil(need / len(rows))))])
            chunks.append(list(order[:need].reshape(-1, self.k)) if n else [])
        return chunks

    def _pick_groups(self, rng: np.random.Generator, left: np.ndarray, chosen: list[int]) -> list[int]:
        """Groups for the in-group part: those of the `chosen` (forced) classes first, then groups drawn in
        proportion to their chunks left, until `groups_per_batch` (or no group has chunks left)."""
        per_group = np.bincount(self.class_group, weights=left, minlength=len(self.groups))
        picked = list(dict.fromkeys(int(self.class_group[c]) for c in chosen))[: self.groups_per_batch]
        while len(picked) < self.groups_per_batch:
            free = per_group.copy()
            free[picked] = 0
            if free.sum() <= 0:
                break
            picked.append(int(rng.choice(len(free), p=free / free.sum())))
        return picked

    def _length_chunks(self, rng: np.random.Generator, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """A class's chunks of the epoch cut again from its rows sorted by length."""
        return length_chunks(np.concatenate(chunks), self.lengths, self.k, rng) if chunks else []

    def _plan_batch(
        self, rng: np.random.Generator, left: np.ndarray, batches_left: int, distance: np.ndarray | None = None
    ) -> list[int]:
        """The P classes of the next batch: classes that must go now (chunks left = batches left), then the
        largest of the chosen groups (with `distance`, from `lengths`: those with a chunk nearest the batch's
        target length), then other groups, then any class with chunks left. Whatever the order, every batch
        takes P classes with chunks left when there are P, which keeps every chunk placeable."""
        noise = rng.random(len(left)) * 0.5  # random tie-break among equal counts (or distances)
        order = np.argsort(-(left + noise) if distance is None else distance + noise, kind="stable")
        order = order[left[order] > 0]
        chosen = [int(c) for c in order[left[order] >= batches_left][: self.p]]
        if distance is not None:  # groups drawn by chunks left near the target length
            left = left / (1.0 + np.minimum(distance, 1e9)) ** 2
        groups = self._pick_groups(rng, left, chosen)
        in_group = np.isin(self.class_group[order], groups)
        taken = np.isin(order, chosen)
        for allowed, quota in ((in_group, self.p - self.p_mix), (~in_group, self.p), (None, self.p)):
            free = ~taken if allowed is None else allowed & ~taken
            extra = order[free][: max(0, quota - len(chosen))]
            taken |= np.isin(order, extra)
            chosen += [int(c) for c in extra]
        return chosen

    def _filler(self, rng: np.random.Generator, exclude: list[int], groups: np.ndarray) -> tuple[int, np.ndarray]:
        """K random rows of a class not in the batch, from the batch's groups when possible."""
        free = [c for c in range(len(self.classes)) if c not in exclude]
        near = [c for c in free if self.class_group[c] in groups]
        cls = int(rng.choice(near or free))
        rows = self.class_rows[cls]
        return cls, rng.choice(rows, size=self.k, replace=len(rows) < self.k)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        weights = self.weights.weights_for_epoch(self.epoch, self.groups) if self.weights is not None else None
        counts = self._chunk_counts(rng, None if weights is None else np.asarray(weights, dtype=float))
        chunks = self._chunks(rng, counts)
        pool = target = distance = None
        if self.lengths is not None:
            pool = LengthPool([self._length_chunks(rng, c) for c in chunks], self.lengths)
        left = counts.astype(float)
        batches = []
        for b in range(self.num_batches):
            if pool is not None:  # each mega-batch sweeps the lengths left, one target per batch
                if b % MEGA_BATCH == 0:
                    targets = pool.targets(min(MEGA_BATCH, self.num_batches - b))
                target = targets[b % MEGA_BATCH]
                distance = pool.distance(target)
            chosen = self._plan_batch(rng, left, self.num_batches - b, distance)
            batch = [chunks[c].pop() if pool is None else pool.take(c, target) for c in chosen]
            left[chosen] -= 1
            groups = np.unique(self.class_group[chosen]) if chosen else np.array([], dtype=int)
            while len(batch) < self.p:
                cls, rows = self._filler(rng, chosen, groups)
                chosen.append(cls)
                batch.append(rows)
            batches.append(batch)
        if pool is not None:
            batches = deal(batches, self.lengths, rng)
        for batch in batches:
            yield from (int(i) for i in np.concatenate(batch))


@dataclass
class GroupSampling:
    """What the trainer needs for `training.sampler: group_pk`: the groups, the batch mix and the curriculum."""

    class_groups: Mapping[int, str]
    groups_per_batch: int = 2
    group_mix: float = 0.25
    curriculum: GroupWeights | None = None

    def sampler(
        self,
        labels: Sequence[int],
        batch_size: int,
        samples_per_class: int,
        seed: int,
        num_replicas: int,
        lengths: Sequence[int] | None = None,
    ) -> GroupPKSampler:
        return GroupPKSampler(
            labels,
            self.class_groups,
            batch_size,
            samples_per_class,
            self.groups_per_batch,
            self.group_mix,
            seed,
            num_replicas,
            self.curriculum,
            lengths,
        )
