import numpy as np
import pytest

from dml.data import BalancedBatchSampler, ShuffledBatchSampler


def labels_with_sizes(sizes):
    return np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])


@pytest.mark.parametrize("n_classes,n_samples", [(2, 2), (3, 4), (5, 1), (5, 7)])
def test_every_batch_has_n_classes_with_n_samples_each(n_classes, n_samples):
    labels = labels_with_sizes([10, 12, 9, 30, 8])
    sampler = BalancedBatchSampler(labels, n_classes, n_samples, seed=1)
    assert len(sampler) == len(labels) // (n_classes * n_samples)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len(batch) == n_classes * n_samples
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == n_classes
        assert (counts == n_samples).all()
        # grouped by class: each device's slice of an even split holds whole classes
        assert (labels[batch].reshape(n_classes, n_samples) == labels[batch][::n_samples, None]).all()


def test_no_repeats_within_a_class_when_it_is_large_enough():
    labels = labels_with_sizes([20, 20, 20])
    for batch in BalancedBatchSampler(labels, 3, 6, seed=0):
        assert len(set(batch)) == len(batch)


def test_small_class_is_sampled_with_replacement():
    labels = labels_with_sizes([2, 40, 40])
    sampler = BalancedBatchSampler(labels, 3, 5, seed=0)
    batches = list(sampler)
    for batch in batches:
        small = [i for i in batch if labels[i] == 0]
        assert len(small) == 5 and set(small) <= {0, 1}


def test_deterministic_under_seed_and_epoch():
    labels = labels_with_sizes([15, 15, 15, 15])
    a = BalancedBatchSampler(labels, 2, 3, seed=4)
    b = BalancedBatchSampler(labels, 2, 3, seed=4)
    epoch0, epoch1 = list(a), list(a)
    assert epoch0 == list(b) and epoch1 == list(b)
    assert epoch0 != epoch1  # a new epoch is a new order
    b.set_epoch(1)
    assert list(b) == epoch1
    assert list(BalancedBatchSampler(labels, 2, 3, seed=5)) != epoch0


def test_epoch_visits_images_evenly():
    labels = labels_with_sizes([24] * 4)
    seen = [i for batch in BalancedBatchSampler(labels, 4, 6, seed=0) for i in batch]
    assert sorted(seen) == list(range(96))


def test_rejects_more_classes_than_present():
    with pytest.raises(ValueError, match="only 2 classes"):
        BalancedBatchSampler([0, 0, 1, 1], 3, 1)


def test_shuffled_batches():
    sampler = ShuffledBatchSampler(10, 3, seed=0)
    batches = list(sampler)
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)
    assert len(set(sum(batches, []))) == 9
