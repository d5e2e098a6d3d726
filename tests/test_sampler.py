import numpy as np
import pytest

from hf_metric.training.samplers import ClassBalancedBatchSampler


def _batches(sampler):
    idx = np.array(list(sampler))
    assert len(idx) == len(sampler) and len(idx) % sampler.batch_size == 0
    return idx.reshape(-1, sampler.batch_size)


@pytest.mark.parametrize("counts", [[8] * 10, [50, 7, 3, 1, 12, 9, 4, 4, 30], [5] * 40])
def test_every_batch_is_p_classes_by_k_and_every_row_is_seen(counts):
    labels = np.repeat(np.arange(len(counts)), counts)
    sampler = ClassBalancedBatchSampler(labels, batch_size=16, samples_per_class=4, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _batches(sampler)
        assert set(batches.ravel()) == set(range(len(labels)))
        for batch in batches:
            classes, per_class = np.unique(labels[batch], return_counts=True)
            assert len(classes) == 4 and (per_class == 4).all()


def test_fewer_classes_than_p_still_gives_k_per_group():
    labels = np.repeat([0, 1], [9, 6])
    sampler = ClassBalancedBatchSampler(labels, batch_size=12, samples_per_class=3, seed=1)
    batches = _batches(sampler)
    assert set(batches.ravel()) == set(range(len(labels)))
    for batch in batches:
        assert all(c % 3 == 0 for c in np.unique(labels[batch], return_counts=True)[1])


def test_order_depends_only_on_seed_and_epoch():
    labels = np.repeat(np.arange(6), 10)
    a = ClassBalancedBatchSampler(labels, 12, 2, seed=5)
    b = ClassBalancedBatchSampler(labels, 12, 2, seed=5)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


def test_batch_size_must_be_a_multiple_of_k():
    with pytest.raises(ValueError, match="multiple"):
        ClassBalancedBatchSampler([0, 1], batch_size=10, samples_per_class=4)
