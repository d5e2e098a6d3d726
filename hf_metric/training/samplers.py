"""P classes x K samples per batch, so that every contrastive anchor has positives.

Random batches drawn from many classes hold almost no same-class pairs, and SupCon then learns nothing. This
sampler cuts every class into groups of K rows and packs P groups of distinct classes into each batch. Every
row appears in every epoch (groups short of K are topped up from their own class), and the epoch length is
fixed in advance, which the Trainer needs for its schedule and for resuming mid-epoch.

With `lengths` (token counts, `training.length_grouping`), the batches are length-aware (`length_batches`):
each class's rows are sorted by length (each moved a few places at random) before they are cut into groups,
the epoch is cut into mega-batches (the classes of each drawn as without lengths, each class's groups spread
over them at random), and inside a mega-batch the groups are dealt into batches of P distinct classes shortest
first; the batches of the epoch then come in a random order, the longest first (a batch too large for memory
fails at once). On Banking77 with MiniLM and max_len 64, batches of 8 x 4 pad far less (`bench/padding_waste.py`,
docs/sampling.md). The P x K promise is kept: P classes x K rows per batch, every row once per epoch, the order
a function of seed + epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from .length_batches import MEGA_BATCH, deal, length_chunks, pack_mega_batch


class ClassBalancedBatchSampler(Sampler[int]):
    """Yields row indices so that each consecutive run of `batch_size` is one P x K batch.

    It is a flat index sampler (not a batch sampler) so that the Trainer's DataLoader and accelerate's
    per-process sharding of whole batches keep working unchanged: under N processes each process takes whole
    P x K batches, and the global batch stays class balanced.

    Args:
        labels: encoded label of every row.
        batch_size: rows per batch; a multiple of `samples_per_class`.
        samples_per_class: K, the rows of one class in a batch.
        seed: base seed; the order of epoch `e` depends only on `seed + e`, which makes runs reproducible and
            lets a resumed run skip exactly the batches it has already seen.
        lengths: tokens of every row; given, batches hold rows of similar length (module doc).
        num_replicas: processes the batches are dealt to; the batch count is rounded up to a multiple of it, so
            that no process gets a batch twice to even out the others.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        samples_per_class: int,
        seed: int = 0,
        lengths: Sequence[int] | None = None,
        num_replicas: int = 1,
    ) -> None:
        if batch_size % samples_per_class:
            raise ValueError(f"batch_size {batch_size} is not a multiple of samples_per_class {samples_per_class}")
        self.labels = np.asarray(labels)
        self.batch_size = batch_size
        self.k = samples_per_class
        self.p = batch_size // samples_per_class
        self.seed = seed
        self.epoch = 0
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.float64)
        if self.lengths is not None and self.lengths.shape != self.labels.shape:
            raise ValueError(f"lengths has {len(self.lengths)} rows, labels {len(self.labels)}")
        self.class_rows = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        groups_per_class = [math.ceil(len(rows) / self.k) for rows in self.class_rows]
        self.distinct = len(self.class_rows) >= self.p
        self.num_batches = max(1, math.ceil(sum(groups_per_class) / self.p))
        if self.distinct:  # a class appears at most once per batch, so its groups need that many batches
            self.num_batches = max(self.num_batches, max(groups_per_class))
        self.num_batches = math.ceil(self.num_batches / num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def _class_groups(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """Each class's rows, shuffled and cut into groups of K (the last one topped up from the class)."""
        groups = []
        for rows in self.class_rows:
            rows = rng.permutation(rows)
            short = (-len(rows)) % self.k
            if short:
                rows = np.concatenate([rows, rng.choice(rows, size=short, replace=len(rows) < short)])
            if self.lengths is not None:
                groups.append(length_chunks(rows, self.lengths, self.k, rng))
            else:
                groups.append(list(rows.reshape(-1, self.k)))
        return groups

    def _fresh_group(self, rng: np.random.Generator, exclude: set[int]) -> tuple[int, np.ndarray]:
        """(class, K random rows of it) for a class not in `exclude` (which is updated), for the batches left
        short."""
        candidates = [c for c in range(len(self.class_rows)) if c not in exclude]
        cls = int(rng.choice(candidates or range(len(self.class_rows))))
        if self.distinct:
            exclude.add(cls)
        rows = self.class_rows[cls]
        return cls, rng.choice(rows, size=self.k, replace=len(rows) < self.k)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng(self.seed + self.epoch)
        batches = self._batches(rng) if self.lengths is None else self._length_batches(rng)
        for batch in batches:
            yield from (int(i) for i in np.concatenate(batch))

    def _batches(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """The epoch's batches, each a list of P groups of K rows."""
        batches = []
        groups = self._class_groups(rng)
        if not self.distinct:  # fewer classes than P: classes may repeat within a batch
            flat = [g for class_groups in groups for g in class_groups]
            flat = [flat[i] for i in rng.permutation(len(flat))]
        left = np.array([len(g) for g in groups], dtype=float)
        for b in range(self.num_batches):
            if self.distinct:
                chosen = self._plan_batch(rng, left)
                batch = [groups[c].pop() for c in chosen]
                exclude = set(chosen)
            else:
                batch = flat[b * self.p : (b + 1) * self.p]
                exclude = set()
            while len(batch) < self.p:
                batch.append(self._fresh_group(rng, exclude)[1])
            batches.append(batch)
        return batches

    def _length_batches(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """The epoch's batches with `lengths`: mega-batches planned as `_batches` plans batches (which classes,
        how many groups each), each class's groups dealt to them at random, packed shortest first inside each;
        then the batches in a random order, the longest first."""
        groups = [[g[i] for i in rng.permutation(len(g))] for g in self._class_groups(rng)]
        mega_batches: list[list[tuple[int, np.ndarray]]] = []
        if self.distinct:
            left = np.array([len(g) for g in groups], dtype=float)
            for start in range(0, self.num_batches, MEGA_BATCH):
                chunks: list[tuple[int, np.ndarray]] = []
                for _ in range(min(MEGA_BATCH, self.num_batches - start)):
                    chosen = self._plan_batch(rng, left)
                    chunks += [(c, groups[c].pop()) for c in chosen]
                    exclude = set(chosen)
                    while len(exclude) < self.p:
                        chunks.append(self._fresh_group(rng, exclude))
                mega_batches.append(chunks)
        else:  # fewer classes than P: classes repeat within a batch, every group counts as a class of its own
            flat = [g for class_groups in groups for g in class_groups]
            flat += [self._fresh_group(rng, set())[1] for _ in range(self.num_batches * self.p - len(flat))]
            flat = [flat[i] for i in rng.permutation(len(flat))]
            step = MEGA_BATCH * self.p
            mega_batches = [list(enumerate(flat[i : i + step])) for i in range(0, len(flat), step)]
        batches = [batch for chunks in mega_batches for batch in pack_mega_batch(chunks, self.lengths, self.p, rng)]
        return deal(batches, self.lengths, rng)

    def _plan_batch(self, rng: np.random.Generator, left: np.ndarray) -> list[int]:
        """The P classes with the most groups left (random tie-break), whose counts `left` drop by one: this
        places every group within `num_batches` batches, however imbalanced the classes are."""
        order = np.argsort(-(left + rng.random(len(left)) * 0.5), kind="stable")
        chosen = [int(c) for c in order[: self.p] if left[c] > 0]
        left[chosen] -= 1
        return chosen


def row_lengths(dataset) -> list[int]:
    """Tokens of every row of a tokenized dataset (`input_ids`), for `training.length_grouping`."""
    if "input_ids" not in dataset.column_names:
        raise ValueError("training.length_grouping needs tokenized text rows (an input_ids column)")
    return [len(ids) for ids in dataset["input_ids"]]


def sampling_labels(labels: Sequence[int], out_of_scope_id: int = -1) -> np.ndarray:
    """Labels for the P x K samplers only: known out-of-scope rows (`open_set.train_with_oos`) are dealt, in a
    seeded order, into pseudo-classes -1, -2, ... of about the median in-scope class size each.

    As one class, a large out-of-scope set would fill at most one K-row slot per batch and stretch the epoch until
    all its rows were placed; as several class-sized pseudo-classes, a batch holds out-of-scope rows in about
    their share of the data (as extra negatives for the metric loss), every row still appears once per epoch, and
    the epoch length follows the row count. The loss still sees label -1 for all of them.
    """
    labels = np.asarray(labels)
    oos = np.flatnonzero(labels == out_of_scope_id)
    if not len(oos):
        return labels
    _, counts = np.unique(labels[labels >= 0], return_counts=True)
    size = max(1, int(np.median(counts))) if len(counts) else len(oos)
    pieces = math.ceil(len(oos) / size)
    out = labels.copy()
    out[np.random.default_rng(0).permutation(oos)] = -1 - (np.arange(len(oos)) % pieces)
    return out


def train_sampler(
    labels: Sequence[int],
    batch_size: int,
    samples_per_class: int,
    seed: int,
    num_replicas: int,
    group_sampling=None,
    lengths: Sequence[int] | None = None,
) -> Sampler[int]:
    """The training sampler: group-aware P x K batches with `group_sampling` (`group_sampler.GroupSampling`), else
    P x K batches; length-aware with `lengths` (`training.length_grouping`). Known out-of-scope rows are spread
    over pseudo-classes (`sampling_labels`); under group-aware sampling each pseudo-class is a group of its own."""
    labels = sampling_labels(labels)
    if group_sampling is not None:
        return group_sampling.sampler(labels, batch_size, samples_per_class, seed, num_replicas, lengths)
    return ClassBalancedBatchSampler(labels, batch_size, samples_per_class, seed, lengths, num_replicas)
