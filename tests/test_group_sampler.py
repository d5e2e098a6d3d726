"""Group-aware P x K batches and the hard-group curriculum: shape, mix, coverage, resume, processes, weights."""

from collections import Counter

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from hf_metric.training.curriculum import CurriculumSettings, HardGroupCurriculum, error_weights
from hf_metric.training.group_sampler import GroupPKSampler


def _data(num_classes=40, num_groups=10, seed=0, rows=(3, 30)):
    rng = np.random.default_rng(seed)
    counts = rng.integers(rows[0], rows[1], size=num_classes)
    labels = rng.permutation(np.repeat(np.arange(num_classes), counts))
    groups = {c: f"g{c % num_groups}" for c in range(num_classes)}
    return labels, groups


def _batches(sampler):
    idx = np.array(list(sampler))
    assert len(idx) == len(sampler) and len(idx) % sampler.batch_size == 0
    return idx.reshape(-1, sampler.batch_size)


@pytest.mark.parametrize(("batch_size", "k", "mix"), [(32, 4, 0.25), (24, 2, 0.5), (16, 4, 0.0)])
def test_every_batch_is_p_classes_by_k_with_the_promised_group_mix(batch_size, k, mix):
    labels, groups = _data()
    sampler = GroupPKSampler(labels, groups, batch_size, k, groups_per_batch=2, group_mix=mix, seed=3)
    p, p_mix = batch_size // k, round(mix * batch_size // k)
    as_promised = 0
    for batch in _batches(sampler):
        classes, per_class = np.unique(labels[batch], return_counts=True)
        assert len(classes) == p and (per_class == k).all()
        by_group = Counter(groups[int(c)] for c in classes)
        top_two = sum(n for _, n in by_group.most_common(2))
        as_promised += top_two >= p - p_mix
    # the end of an epoch may force classes from anywhere (the ones whose chunks must still be placed)
    assert as_promised >= 0.9 * len(_batches(sampler))


def test_in_group_share_beats_random_batches():
    """The point of the sampler: far more same-group class pairs per batch than P x K batches of random classes."""
    labels, groups = _data(num_classes=60, num_groups=15)

    def same_group_pairs(batches):
        total = 0
        for batch in batches:
            names = [groups[int(c)] for c in np.unique(labels[batch])]
            total += sum(a == b for i, a in enumerate(names) for b in names[i + 1 :])
        return total / len(batches)

    from hf_metric.training.samplers import ClassBalancedBatchSampler

    grouped = same_group_pairs(_batches(GroupPKSampler(labels, groups, 32, 4, group_mix=0.25)))
    plain = same_group_pairs(_batches(ClassBalancedBatchSampler(labels, 32, 4)))
    assert grouped > 3 * plain


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_row_appears_in_every_epoch_and_repeats_are_only_top_ups(seed):
    labels, groups = _data(seed=seed)
    sampler = GroupPKSampler(labels, groups, 32, 4, seed=seed)
    chunks = sum(-(-c // 4) for c in np.bincount(labels))
    for epoch in range(3):
        sampler.set_epoch(epoch)
        idx = _batches(sampler).ravel()
        assert set(idx.tolist()) == set(range(len(labels)))
        # every class's rows fill whole chunks; the remaining slots are filler batches' chunks
        assert len(idx) - len(labels) <= (sampler.num_batches * sampler.p - chunks) * 4 + (chunks * 4 - len(labels))


def test_order_depends_only_on_seed_and_epoch():
    labels, groups = _data()
    a, b = GroupPKSampler(labels, groups, 32, 4, seed=5), GroupPKSampler(labels, groups, 32, 4, seed=5)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


def _shards(sampler, world):
    """Row indices per process, as accelerate deals the DataLoader's batches (`BatchSamplerShard`)."""
    batches = BatchSampler(sampler, sampler.batch_size, drop_last=False)
    return [[i for b in BatchSamplerShard(batches, world, rank) for i in b] for rank in range(world)]


def test_two_processes_get_disjoint_batches_that_cover_the_epoch_once():
    labels, groups = _data()
    sampler = GroupPKSampler(labels, groups, 32, 4, seed=1, num_replicas=2)
    assert sampler.num_batches % 2 == 0
    shards = _shards(sampler, 2)
    assert len(shards[0]) == len(shards[1])
    whole = _batches(sampler)
    # dealt in turn: process r gets batches r, r + 2, ...; nothing is repeated to even them out
    for rank in range(2):
        assert shards[rank] == whole[rank::2].ravel().tolist()
    assert set(shards[0]) | set(shards[1]) == set(range(len(labels)))


def test_curriculum_weights_follow_the_error_within_the_caps():
    errors = np.array([0.0, 0.05, 0.1, 0.2, 0.6, np.nan])
    w = error_weights(errors, max_oversample=3.0, min_weight=0.25)
    mean = np.nanmean(errors)
    expected = [max(0.25, min(3.0, e / mean)) for e in errors[:-1]]
    assert np.allclose(w[:-1], expected) and w[-1] == 1.0
    assert error_weights([0.0, 0.0], 3.0, 0.25) is None


def test_weighted_epochs_draw_hard_groups_more_often_and_keep_their_length():
    labels, groups = _data(num_classes=40, num_groups=4, rows=(20, 21))
    curriculum = HardGroupCurriculum(CurriculumSettings(start_epoch=1, max_oversample=3.0, min_weight=0.25))
    sampler = GroupPKSampler(labels, groups, 32, 4, seed=0, weights=curriculum)
    errors = {"g0": 0.4, "g1": 0.2, "g2": 0.1, "g3": 0.1}
    curriculum.record(errors, epoch=1.0)
    share = {}
    for epoch in (0, 1):  # epoch 0 is before start_epoch: uniform
        sampler.set_epoch(epoch)
        idx = _batches(sampler).ravel()
        assert len(idx) == len(sampler)
        rows = Counter(groups[int(labels[i])] for i in idx)
        share[epoch] = {g: rows[g] / len(idx) for g in errors}
    assert np.allclose(list(share[0].values()), 0.25, atol=0.03)
    w = error_weights(list(errors.values()), 3.0, 0.25)
    assert np.allclose(list(share[1].values()), w / w.sum(), atol=0.03)


def test_a_resumed_sampler_replays_the_weighted_epoch_it_stopped_in(tmp_path):
    labels, groups = _data()
    settings = CurriculumSettings(start_epoch=0)
    original = HardGroupCurriculum(settings)
    original.record({f"g{i}": 0.05 * i for i in range(10)}, epoch=0.5)
    sampler = GroupPKSampler(labels, groups, 32, 4, seed=2, weights=original)
    sampler.set_epoch(2)
    first = list(sampler)
    original.record({f"g{i}": 0.3 - 0.03 * i for i in range(10)}, epoch=2.5)  # a mid-epoch evaluation
    original.save_checkpoint_files(str(tmp_path))
    assert list(sampler) == first  # the running epoch keeps its weights

    restored = HardGroupCurriculum(settings)
    restored.load_checkpoint_files(str(tmp_path))
    again = GroupPKSampler(labels, groups, 32, 4, seed=2, weights=restored)
    again.set_epoch(2)
    assert list(again) == first
    again.set_epoch(3)  # the next epoch uses the newest errors
    fresh = HardGroupCurriculum(settings)
    fresh.record(restored.errors, epoch=2.5)
    reference = GroupPKSampler(labels, groups, 32, 4, seed=2, weights=fresh)
    reference.set_epoch(3)
    assert list(again) == list(reference)


def test_fewer_classes_than_p_is_refused():
    with pytest.raises(ValueError, match="at least P"):
        GroupPKSampler([0, 1, 2, 0, 1, 2], {0: "a", 1: "a", 2: "b"}, 16, 4)


def test_accelerate_dataloader_on_two_real_processes(tmp_path):
    """One real 2-process gloo run: accelerate's prepared DataLoader hands each process distinct rows."""
    from dist_worker import group_sampler_data
    from test_distributed import _torchrun

    _torchrun("group_sampler", str(tmp_path))
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    labels, groups, batch_size, k = group_sampler_data()
    whole = _batches(GroupPKSampler(labels, groups, batch_size, k, seed=7, num_replicas=2))
    for rank in range(2):  # batches dealt in turn, none repeated to even out the processes
        assert got[rank] == whole[rank::2].ravel().tolist()
    assert set(got[0]) | set(got[1]) == set(range(len(labels)))
