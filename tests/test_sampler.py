import numpy as np
import pytest
from conftest import assert_p_by_k_every_epoch, sampler_batches

from hf_metric.training.samplers import ClassBalancedBatchSampler

_batches = sampler_batches


def _lengths(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, 64, n)


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("counts", [[8] * 10, [50, 7, 3, 1, 12, 9, 4, 4, 30], [5] * 40])
def test_every_batch_is_p_classes_by_k_and_every_row_is_seen(counts, grouped):
    labels = np.repeat(np.arange(len(counts)), counts)
    lengths = _lengths(len(labels)) if grouped else None
    sampler = ClassBalancedBatchSampler(labels, batch_size=16, samples_per_class=4, seed=0, lengths=lengths)
    assert_p_by_k_every_epoch(sampler, labels, p=4, k=4)


def test_fewer_classes_than_p_still_gives_k_per_group():
    labels = np.repeat([0, 1], [9, 6])
    sampler = ClassBalancedBatchSampler(labels, batch_size=12, samples_per_class=3, seed=1)
    batches = _batches(sampler)
    assert set(batches.ravel()) == set(range(len(labels)))
    for batch in batches:
        assert all(c % 3 == 0 for c in np.unique(labels[batch], return_counts=True)[1])


@pytest.mark.parametrize("grouped", [False, True])
def test_order_depends_only_on_seed_and_epoch(grouped):
    labels = np.repeat(np.arange(6), 10)
    lengths = _lengths(len(labels)) if grouped else None
    a = ClassBalancedBatchSampler(labels, 12, 2, seed=5, lengths=lengths)
    b = ClassBalancedBatchSampler(labels, 12, 2, seed=5, lengths=lengths)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


def test_batch_size_must_be_a_multiple_of_k():
    with pytest.raises(ValueError, match="multiple"):
        ClassBalancedBatchSampler([0, 1], batch_size=10, samples_per_class=4)


def _padded_tokens(batches: np.ndarray, lengths: np.ndarray) -> int:
    """What a pad-to-longest collator feeds the model: batch size x the longest row, summed over batches."""
    return int(sum(lengths[b].max() * len(b) for b in batches))


def test_length_grouping_cuts_padding_and_still_mixes_lengths_over_the_epoch():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 40, 2000)
    lengths = np.minimum(rng.lognormal(2.6, 0.5, 2000).astype(int) + 3, 64)  # long-tailed, like chat text
    plain = _batches(ClassBalancedBatchSampler(labels, 32, 4, seed=1))
    grouped = _batches(ClassBalancedBatchSampler(labels, 32, 4, seed=1, lengths=lengths))
    assert _padded_tokens(grouped, lengths) < 0.8 * _padded_tokens(plain, lengths)
    longest = np.array([lengths[b].max() for b in grouped])
    first, second = longest[: len(longest) // 2], longest[len(longest) // 2 :]
    assert abs(np.median(first) - np.median(second)) <= 0.25 * np.median(longest)  # no long-to-short drift


def test_length_grouping_needs_one_length_per_row():
    with pytest.raises(ValueError, match="lengths"):
        ClassBalancedBatchSampler([0, 1, 1, 0], 4, 2, lengths=[3, 4])


def test_trainer_draws_length_grouped_batches_from_the_token_counts(tmp_path, make_config):
    from conftest import synthetic_rows, write_parquet

    from hf_metric.loading import load_config
    from hf_metric.run import build_trainer

    config = make_config(
        write_parquet(tmp_path / "m.parquet", synthetic_rows(12)),
        training={"length_grouping": True, "batch_size": 8, "samples_per_class": 2},
    )
    trainer = build_trainer(load_config(config), max_steps=1, report_to=[])
    sampler = trainer._get_train_sampler()
    data = trainer.train_dataset
    assert sampler.lengths.tolist() == [len(data[i]["input_ids"]) for i in range(len(data))]
    batches = _batches(sampler)
    assert set(batches.ravel().tolist()) == set(range(len(data)))  # every row, in P x K batches
    assert all(len(np.unique(np.asarray(data["labels"])[b])) == 4 for b in batches)
