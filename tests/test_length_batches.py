"""Length-aware P x K batches (`training.length_grouping`, pk and group_pk): the P x K promises, less padding than
before and about as little as transformers' own `LengthGroupedSampler`, exact resume, disjoint process shards."""

from collections import Counter

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard, skip_first_batches
from conftest import assert_p_by_k_every_epoch, sampler_batches
from torch.utils.data import BatchSampler, DataLoader
from transformers.trainer_pt_utils import get_length_grouped_indices

from hf_metric.training.group_sampler import GroupPKSampler
from hf_metric.training.length_batches import LengthPool, length_chunks, pack_mega_batch
from hf_metric.training.samplers import ClassBalancedBatchSampler

PREVIOUS_PADDED_TOKENS = (55_328, 54_720, 53_856)
"""Tokens fed (batch x longest row) in epochs 0-2 of `_long_tailed()` by the length grouping before the
length-aware sampler (commit 4bba01e: each class sorted, batch i took the i-th longest group of each class)."""


def _long_tailed():
    """2,000 rows of 40 classes, token counts long-tailed like chat text (median ~16, a tail up to 64)."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 40, 2000)
    lengths = np.minimum(rng.lognormal(2.6, 0.5, 2000).astype(int) + 3, 64)
    return labels, lengths


def _groups(num_classes: int, num_groups: int = 8) -> dict[int, str]:
    return {c: f"g{c % num_groups}" for c in range(num_classes)}


_batches = sampler_batches


def _padded(batches: np.ndarray, lengths: np.ndarray) -> int:
    """What a pad-to-longest collator feeds the model: batch size x the longest row, summed over batches."""
    return int(sum(lengths[b].max() * len(b) for b in batches))


def _samplers(labels, lengths, batch_size=32, k=4, seed=1, num_replicas=1):
    return {
        "pk": ClassBalancedBatchSampler(labels, batch_size, k, seed, lengths, num_replicas),
        "group_pk": GroupPKSampler(
            labels,
            _groups(len(np.unique(labels))),
            batch_size,
            k,
            seed=seed,
            num_replicas=num_replicas,
            lengths=lengths,
        ),
    }


@pytest.mark.parametrize("kind", ["pk", "group_pk"])
@pytest.mark.parametrize("counts", [[20] * 12, [50, 7, 3, 1, 12, 9, 4, 4, 30], [5] * 40])
def test_every_batch_is_p_classes_by_k_and_every_row_is_seen(kind, counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    lengths = np.random.default_rng(0).integers(3, 64, len(labels))
    assert_p_by_k_every_epoch(_samplers(labels, lengths, batch_size=16, k=4)[kind], labels, p=4, k=4)


def test_fewer_classes_than_p_still_gives_whole_groups_and_every_row():
    labels = np.repeat([0, 1], [9, 6])
    lengths = np.arange(15) % 7 + 3
    sampler = ClassBalancedBatchSampler(labels, batch_size=12, samples_per_class=3, seed=1, lengths=lengths)
    batches = _batches(sampler)
    assert set(batches.ravel()) == set(range(len(labels)))
    for batch in batches:
        assert all(c % 3 == 0 for c in np.unique(labels[batch], return_counts=True)[1])


@pytest.mark.parametrize("kind", ["pk", "group_pk"])
def test_order_depends_only_on_seed_and_epoch(kind):
    labels, lengths = _long_tailed()
    a, b = _samplers(labels, lengths)[kind], _samplers(labels, lengths)[kind]
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    c = _samplers(labels, lengths, seed=2)[kind]
    c.set_epoch(1)
    assert list(c) != list(b)


def test_padding_falls_below_the_previous_length_grouping_and_near_transformers_own():
    labels, lengths = _long_tailed()
    sampler = ClassBalancedBatchSampler(labels, 32, 4, seed=1, lengths=lengths)
    generator = torch.Generator()
    generator.manual_seed(1)
    reference = np.array(get_length_grouped_indices(lengths.tolist(), 32, generator=generator))
    reference_share = 1 - lengths.sum() / _padded([reference[i : i + 32] for i in range(0, 2000, 32)], lengths)
    for epoch, previous in enumerate(PREVIOUS_PADDED_TOKENS):
        sampler.set_epoch(epoch)
        batches = _batches(sampler)
        fed = _padded(batches, lengths)
        assert fed < 0.8 * previous, (epoch, fed, previous)
        share = 1 - lengths[batches].sum() / fed
        assert share <= reference_share + 0.05, (epoch, share, reference_share)


def test_group_pk_padding_falls_and_keeps_its_group_mix():
    labels, lengths = _long_tailed()
    groups = _groups(40)
    plain = GroupPKSampler(labels, groups, 32, 4, seed=1)
    grouped = GroupPKSampler(labels, groups, 32, 4, seed=1, lengths=lengths)
    assert _padded(_batches(grouped), lengths) < 0.65 * _padded(_batches(plain), lengths)
    as_promised = 0
    for batch in _batches(grouped):
        by_group = Counter(groups[int(c)] for c in np.unique(labels[batch]))
        as_promised += sum(n for _, n in by_group.most_common(2)) >= grouped.p - grouped.p_mix
    assert as_promised >= 0.9 * grouped.num_batches


@pytest.mark.parametrize("kind", ["pk", "group_pk"])
def test_batches_mix_lengths_over_the_epoch_and_the_longest_comes_first(kind):
    labels, lengths = _long_tailed()
    longest = np.array([lengths[b].max() for b in _batches(_samplers(labels, lengths)[kind])])
    assert longest[0] == longest.max()
    first, second = longest[1 : len(longest) // 2], longest[len(longest) // 2 :]
    assert abs(np.median(first) - np.median(second)) <= 0.25 * np.median(longest)  # no long-to-short drift


@pytest.mark.parametrize("kind", ["pk", "group_pk"])
def test_a_resumed_epoch_replays_the_rest_of_its_batches(kind):
    """As the Trainer resumes: a fresh sampler at the same epoch, its DataLoader skipping the steps already taken."""
    labels, lengths = _long_tailed()
    original = _samplers(labels, lengths)[kind]
    original.set_epoch(2)
    whole = _batches(original)
    fresh = _samplers(labels, lengths)[kind]  # a new process: nothing carried over but seed and epoch
    fresh.set_epoch(2)
    loader = DataLoader(range(len(labels)), batch_size=32, sampler=fresh)
    rest = [b.tolist() for b in skip_first_batches(loader, 7)]
    assert rest == whole[7:].tolist()


@pytest.mark.parametrize("kind", ["pk", "group_pk"])
def test_two_processes_get_disjoint_batches_that_cover_the_epoch_once(kind):
    labels, lengths = _long_tailed()
    sampler = _samplers(labels, lengths, num_replicas=2)[kind]
    assert sampler.num_batches % 2 == 0
    whole = _batches(sampler)
    batches = BatchSampler(sampler, sampler.batch_size, drop_last=False)
    shards = [[i for b in BatchSamplerShard(batches, 2, rank) for i in b] for rank in range(2)]
    for rank in range(2):  # dealt in turn, nothing repeated to even out the processes
        assert shards[rank] == whole[rank::2].ravel().tolist()
    assert {tuple(b) for b in whole[0::2]}.isdisjoint(tuple(b) for b in whole[1::2])
    assert set(shards[0]) | set(shards[1]) == set(range(len(labels)))


def test_pack_mega_batch_places_every_chunk_even_when_a_class_must_fill_every_batch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 400)
    for trial in range(30):
        num_batches, p = int(rng.integers(1, 9)), int(rng.integers(2, 6))
        # class 0 in every batch (the tightest case), the other slots spread over random classes
        classes = [0] * num_batches
        counts = Counter()
        while len(classes) < num_batches * p:
            c = int(rng.integers(1, p + 3))
            if counts[c] < num_batches:
                counts[c] += 1
                classes.append(c)
        chunks = [(c, rng.choice(400, 3, replace=False)) for c in classes]
        batches = pack_mega_batch(chunks, lengths, p, rng)
        assert len(batches) == num_batches
        placed = [tuple(rows) for batch in batches for rows in batch]
        assert sorted(placed) == sorted(tuple(rows) for _, rows in chunks), trial
        owner = {tuple(rows): c for c, rows in chunks}
        for batch in batches:
            assert len({owner[tuple(rows)] for rows in batch}) == p


def test_length_chunks_are_sorted_runs_of_k_each_row_moved_less_than_k_places(monkeypatch):
    import hf_metric.training.length_batches as length_batches

    lengths = np.array([9, 1, 5, 7, 3, 8, 2, 6])
    monkeypatch.setattr(length_batches, "ORDER_JITTER", 0.0)
    chunks = length_chunks(np.arange(8), lengths, 2, np.random.default_rng(0))
    assert [sorted(lengths[c].tolist()) for c in chunks] == [[1, 2], [3, 5], [6, 7], [8, 9]]
    monkeypatch.setattr(length_batches, "ORDER_JITTER", 1.0)
    lengths = np.random.default_rng(1).permutation(60)  # distinct: the sorted place of every row is known
    rank = np.argsort(np.argsort(lengths))
    orders = set()
    for seed in range(20):
        order = np.concatenate(length_chunks(np.arange(60), lengths, 4, np.random.default_rng(seed)))
        assert (np.abs(np.arange(60) - rank[order]) < 4).all()
        orders.add(tuple(order))
    assert len(orders) == 20  # the chunks change with the generator (the epoch)


def test_length_pool_distance_and_take_match_a_naive_loop():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 64, 300)
    class_chunks = [[rng.choice(300, 4) for _ in range(n)] for n in (3, 0, 5, 1, 4)]
    pool = LengthPool(class_chunks, lengths)
    left = [[lengths[c].max() for c in chunks] for chunks in class_chunks]
    for target in rng.uniform(0, 64, 12):
        expected = [min((abs(k - target) for k in keys), default=np.inf) for keys in left]
        assert np.allclose(pool.distance(target), expected)
        cls = int(np.argmin(expected))
        if np.isinf(expected[cls]):
            break
        taken = pool.take(cls, target)
        assert abs(lengths[taken].max() - target) == expected[cls]
        left[cls].remove(lengths[taken].max())


def test_config_allows_length_grouping_for_group_pk_and_refuses_it_for_random_batches():
    from hf_metric.config.sections import TrainingSection
    from hf_metric.errors import ConfigError

    TrainingSection(sampler="group_pk", length_grouping=True).validate()
    with pytest.raises(ConfigError, match="length_grouping"):
        TrainingSection(sampler="random", length_grouping=True).validate()


def test_text_is_length_grouped_by_default_and_media_and_random_batches_are_not():
    from hf_metric.config.sections import TrainingSection

    TrainingSection(sampler="random").validate()  # the default (None) is no error with random batches
    assert TrainingSection(sampler="pk").groups_lengths("text")
    assert TrainingSection(sampler="group_pk").groups_lengths("text")
    assert not TrainingSection(sampler="random").groups_lengths("text")
    assert not any(TrainingSection(sampler="pk").groups_lengths(m) for m in ("image", "audio"))
    assert not TrainingSection(sampler="pk", length_grouping=False).groups_lengths("text")


def test_a_text_run_with_the_default_config_trains_on_length_aware_batches(tmp_path, make_config):
    from conftest import write_parquet

    from hf_metric.loading import load_config
    from hf_metric.run import build_trainer

    def sampler_of(**training):
        config = make_config(write_parquet(tmp_path / "v.parquet", _varied_rows()), training=training)
        return build_trainer(load_config(config), report_to=[])._get_train_sampler()

    assert sampler_of().lengths is not None
    assert sampler_of(length_grouping=False).lengths is None


def _varied_rows(per_class: int = 16):
    """Synthetic rows of 1 to 9 filler words more than usual (token counts vary), each class in a group."""
    from conftest import FILLER, synthetic_rows

    rng = np.random.default_rng(0)
    rows = synthetic_rows(per_class)
    for row in rows:
        row["text"] += " " + " ".join(rng.choice(FILLER, int(rng.integers(0, 9))))
        row["group"] = "money" if row["label"] in ("billing", "card") else "service"
    return rows


def _run(config, checkpoint=None) -> tuple[list[tuple[int, list]], object]:
    """Train; (optimizer step, the rows of the micro-batch) for every micro-batch, and the trainer."""
    from hf_metric.loading import load_config
    from hf_metric.run import build_trainer

    trainer = build_trainer(load_config(config), report_to=[])
    seen, original = [], trainer.training_step

    def training_step(model, inputs, num_items_in_batch=None):
        rows = [
            [t for t, m in zip(ids, mask, strict=True) if m]
            for ids, mask in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].tolist(), strict=True)
        ]
        seen.append((trainer.state.global_step + 1, rows))
        return original(model, inputs, num_items_in_batch)

    trainer.training_step = training_step
    trainer.train(resume_from_checkpoint=checkpoint)
    return seen, trainer


@pytest.mark.parametrize("sampler", ["pk", "group_pk"])
def test_the_trainer_resumed_mid_epoch_trains_on_the_same_length_grouped_batches(tmp_path, make_config, sampler):
    from conftest import write_parquet

    training = {"sampler": sampler, "length_grouping": True, "num_epochs": 2, "group_mix": 0.5}
    config = make_config(
        write_parquet(tmp_path / "v.parquet", _varied_rows()),
        training=training,
        checkpointing={"save_every_n_batches": 3, "save_total_limit": 10},
        metric_validation={"plots": False},
    )
    seen, trainer = _run(config)
    sampler_used = trainer._get_train_sampler()
    data = trainer.train_dataset
    assert sampler_used.lengths.tolist() == [len(ids) for ids in data["input_ids"]]
    steps_per_epoch = sampler_used.num_batches
    assert steps_per_epoch > 4 and len({len(r) for _, batch in seen for r in batch}) > 3  # lengths do vary
    again, _ = _run(config, str(tmp_path / "ckpt" / "checkpoint-3"))  # mid first epoch
    assert again and again == [s for s in seen if s[0] > 3]
