"""Batch samplers for online mining."""
import numpy as np
from mxnet import gluon


def _check_part(num_parts, part_index):
    if not 0 <= part_index < num_parts:
        raise ValueError("part_index=%d is not in [0, num_parts=%d)" % (part_index, num_parts))


class BalancedBatchSampler(gluon.data.Sampler):
    """Batches of ``n_classes`` distinct classes with ``n_samples`` indices each (P x K sampling).

    A Gluon batch sampler (``DataLoader(dataset, batch_sampler=...)``) yielding lists of
    ``n_classes * n_samples`` indices grouped by class. Per epoch there are
    ``len(labels) // (n_classes * n_samples)`` batches. Within a class, indices are drawn from a
    shuffled pass over the class and the pass restarts when exhausted, so an epoch visits images
    evenly; a class with fewer than ``n_samples`` images is sampled with replacement. The classes
    of each batch are drawn uniformly without replacement.

    Deterministic under ``seed``: epoch ``e`` (counted by ``__iter__``, or set with
    :meth:`set_epoch`) always yields the same batches.

    Distributed training: worker ``part_index`` of ``num_parts`` samples only its shard, every
    ``num_parts``-th image of each class, so the workers' shards are disjoint; every worker yields
    ``len(labels) // (num_parts * batch size)`` batches (a synchronous job needs equal counts).
    """

    def __init__(self, labels, n_classes, n_samples, seed=0, num_parts=1, part_index=0):
        labels = np.asarray(labels).reshape(-1)
        if n_classes < 1 or n_samples < 1:
            raise ValueError("n_classes and n_samples must be >= 1")
        _check_part(num_parts, part_index)
        classes, inverse = np.unique(labels, return_inverse=True)
        members = [np.flatnonzero(inverse == c)[part_index::num_parts]
                   for c in range(len(classes))]
        self._members = [m for m in members if len(m)]
        if n_classes > len(self._members):
            raise ValueError("n_classes=%d but the labels hold only %d classes%s"
                             % (n_classes, len(self._members),
                                " in shard %d of %d" % (part_index, num_parts) if num_parts > 1
                                else ""))
        self.n_classes = int(n_classes)
        self.n_samples = int(n_samples)
        self.batch_size = self.n_classes * self.n_samples
        self._num_batches = len(labels) // (num_parts * self.batch_size)
        self._seed = seed if num_parts == 1 else [seed, part_index]
        self._epoch = 0

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    def __len__(self):
        return self._num_batches

    def __iter__(self):
        rng = np.random.default_rng(np.append(self._seed, self._epoch))
        self._epoch += 1
        passes = [rng.permutation(m) for m in self._members]
        cursors = [0] * len(self._members)
        for _ in range(self._num_batches):
            batch = []
            for c in rng.choice(len(self._members), self.n_classes, replace=False):
                members = self._members[c]
                if len(members) < self.n_samples:
                    batch.extend(rng.choice(members, self.n_samples, replace=True).tolist())
                    continue
                if cursors[c] + self.n_samples > len(members):
                    passes[c] = rng.permutation(members)
                    cursors[c] = 0
                batch.extend(passes[c][cursors[c]:cursors[c] + self.n_samples].tolist())
                cursors[c] += self.n_samples
            yield batch


class ShuffledBatchSampler(gluon.data.Sampler):
    """Ordinary shuffled batches (the last partial batch dropped), deterministic under ``seed``.

    Distributed training: every worker draws the same permutation of the epoch and takes every
    ``num_parts``-th index of it from ``part_index`` on (disjoint shards, equal batch counts)."""

    def __init__(self, length, batch_size, seed=0, num_parts=1, part_index=0):
        _check_part(num_parts, part_index)
        self._length = int(length)
        self.batch_size = int(batch_size)
        self._seed = seed
        self._epoch = 0
        self._num_parts, self._part_index = int(num_parts), int(part_index)

    def set_epoch(self, epoch):
        self._epoch = int(epoch)

    def __len__(self):
        return self._length // self._num_parts // self.batch_size

    def __iter__(self):
        rng = np.random.default_rng([self._seed, self._epoch])
        self._epoch += 1
        order = rng.permutation(self._length)[self._part_index::self._num_parts]
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size].tolist()
