"""Random pairs and triplets over any labelled dataset, for siamese and triplet networks.

Training sets draw fresh tuples every epoch (``set_epoch``, called by the loader); validation sets
(``train=False``) draw one fixed, seeded set. Every sample of the base dataset is the first element
of exactly one tuple per epoch, so an epoch has ``len(base)`` tuples (adambielski/siamese-triplet's
``SiameseMNIST`` / ``TripletMNIST``, vectorized over classes instead of looping over samples).
"""
import numpy as np
from mxnet import gluon


class _TupleDataset(gluon.data.Dataset):
    def __init__(self, base, train=True, seed=0):
        self.base = base
        self.train = bool(train)
        self._seed = seed
        labels = np.asarray(base.labels).reshape(-1)
        self._labels = labels
        self._classes, inverse = np.unique(labels, return_inverse=True)
        if len(self._classes) < 2:
            raise ValueError("%s needs at least 2 classes, the dataset has %d"
                             % (type(self).__name__, len(self._classes)))
        self._class_of = inverse
        self._members = [np.flatnonzero(inverse == c) for c in range(len(self._classes))]
        self._epoch = None
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Draw epoch ``epoch``'s tuples (training sets only; a validation set never changes)."""
        epoch = int(epoch) if self.train else -1
        if epoch != self._epoch:
            self._epoch = epoch
            self.tuples = self._draw(np.random.default_rng([self._seed, epoch + 1]))

    def __len__(self):
        return len(self.tuples)

    def _same_class(self, rng, anchors):
        """For each anchor, a random other member of its class (itself if it is alone)."""
        out = np.empty(len(anchors), dtype=np.int64)
        cls = self._class_of[anchors]
        for c in np.unique(cls):
            rows = np.flatnonzero(cls == c)
            members = self._members[c]
            if len(members) == 1:
                out[rows] = members[0]
                continue
            position = np.searchsorted(members, anchors[rows])
            pick = rng.integers(0, len(members) - 1, size=len(rows))
            out[rows] = members[pick + (pick >= position)]  # skip the anchor itself
        return out

    def _other_class(self, rng, anchors):
        """For each anchor, a uniformly random sample of any other class."""
        out = np.empty(len(anchors), dtype=np.int64)
        cls = self._class_of[anchors]
        for c in np.unique(cls):
            rows = np.flatnonzero(cls == c)
            others = np.flatnonzero(self._class_of != c)
            out[rows] = others[rng.integers(0, len(others), size=len(rows))]
        return out

    def _images(self, indices):
        return self.base.batch(indices)[0]


class PairDataset(_TupleDataset):
    """``(image1, image2, same)`` pairs over ``base``: for every sample a partner of its class
    (``same = 1``) or of another class (``same = 0``), half of each (balanced).

    ``tuples`` is the N x 3 int array ``(i, j, same)`` of the current epoch.
    """

    def _draw(self, rng):
        n = len(self._labels)
        anchors = np.arange(n)
        same = rng.permutation(np.arange(n) < (n + 1) // 2)
        partner = np.where(same, self._same_class(rng, anchors), self._other_class(rng, anchors))
        return np.stack([anchors, partner, same.astype(np.int64)], axis=1)

    def __getitem__(self, k):
        i, j, same = self.tuples[k]
        return self.base[int(i)][0], self.base[int(j)][0], float(same)

    def batch(self, rows):
        t = self.tuples[np.asarray(rows)]
        return [self._images(t[:, 0]), self._images(t[:, 1])], t[:, 2]


class TripletDataset(_TupleDataset):
    """``(anchor, positive, negative)`` image triplets over ``base``: every sample is an anchor,
    with a random other sample of its class and a random sample of another class.

    ``tuples`` is the N x 3 int array ``(anchor, positive, negative)`` of the current epoch; the
    label of a triplet is its anchor's.
    """

    def _draw(self, rng):
        anchors = np.arange(len(self._labels))
        return np.stack([anchors, self._same_class(rng, anchors), self._other_class(rng, anchors)],
                        axis=1)

    def __getitem__(self, k):
        a, p, n = self.tuples[k]
        return self.base[int(a)][0], self.base[int(p)][0], self.base[int(n)][0]

    def batch(self, rows):
        t = self.tuples[np.asarray(rows)]
        return [self._images(t[:, 0]), self._images(t[:, 1]), self._images(t[:, 2])], self._labels[t[:, 0]]
