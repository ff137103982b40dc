import numpy as np
import pytest

from dml.data import BatchLoader, ImageArrayDataset, PairDataset, ShuffledBatchSampler, TripletDataset


def base_dataset(counts=(5, 1, 7, 3)):
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))  # classes interleaved, as in a real dataset
    labels = labels[order]
    # every image carries its own index in pixel (0, 0, 0) so batches can be checked
    images = np.zeros((len(labels), 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))
    return ImageArrayDataset(images, labels)


def test_pairs_are_balanced_and_labelled_correctly():
    base = base_dataset()
    pairs = PairDataset(base, train=True, seed=3)
    t = pairs.tuples
    assert len(pairs) == len(base) and sorted(t[:, 0]) == list(range(len(base)))
    assert abs(int(t[:, 2].sum()) - len(base) / 2) <= 0.5
    same = base.labels[t[:, 0]] == base.labels[t[:, 1]]
    np.testing.assert_array_equal(same, t[:, 2] == 1)
    # a positive partner is another sample unless the class has a single member
    alone = np.isin(base.labels[t[:, 0]], [1])
    assert np.all((t[:, 0] != t[:, 1]) | alone)
    img1, img2, target = pairs[0]
    assert img1[0, 0, 0] == t[0, 0] and img2[0, 0, 0] == t[0, 1] and target == t[0, 2]


def test_triplets_are_labelled_correctly():
    base = base_dataset()
    triplets = TripletDataset(base, train=True, seed=1)
    a, p, n = triplets.tuples.T
    labels = base.labels
    assert np.all(labels[a] == labels[p]) and np.all(labels[a] != labels[n])
    assert np.all((a != p) | (labels[a] == 1))
    images, anchor_labels = triplets.batch([0, 1, 2])
    assert [im[:, 0, 0, 0].tolist() for im in images] == [col[:3].tolist() for col in (a, p, n)]
    np.testing.assert_array_equal(anchor_labels, labels[a[:3]])


@pytest.mark.parametrize("cls", [PairDataset, TripletDataset])
def test_training_tuples_are_fresh_each_epoch_and_validation_tuples_fixed(cls):
    base = base_dataset((20, 20, 20))
    train = cls(base, train=True, seed=0)
    first = train.tuples.copy()
    train.set_epoch(1)
    assert not np.array_equal(first, train.tuples)
    train.set_epoch(0)
    np.testing.assert_array_equal(first, train.tuples)  # deterministic under the seed
    val = cls(base, train=False, seed=0)
    fixed = val.tuples.copy()
    val.set_epoch(5)
    np.testing.assert_array_equal(fixed, val.tuples)
    np.testing.assert_array_equal(fixed, cls(base, train=False, seed=0).tuples)
    assert not np.array_equal(fixed, cls(base, train=False, seed=1).tuples)


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="at least 2 classes"):
        PairDataset(base_dataset((4,)))


def test_loader_yields_tuple_batches_and_redraws_per_epoch():
    base = base_dataset((10, 10, 10))
    pairs = PairDataset(base, train=True, seed=0)
    loader = BatchLoader(pairs, ShuffledBatchSampler(len(pairs), 8, seed=0), (0, 0, 0), (1, 1, 1),
                         num_workers=1)
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 3
        x1, x2, same = batches[0]
        assert x1.shape == x2.shape == (8, 3, 4, 4) and same.shape == (8,)
        i, j = (np.rint(x[:, 0, 0, 0] * 255).astype(int) for x in (x1, x2))  # undo the /255
        np.testing.assert_array_equal(base.labels[i] == base.labels[j], same == 1)
        epochs.append(pairs.tuples.copy())
    assert not np.array_equal(epochs[0], epochs[1])
