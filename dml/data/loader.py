"""Batches as float32 NCHW arrays: augmentation and normalization vectorized over the batch in
numpy, prefetched by worker threads so loading overlaps the network's compute."""
import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .transforms import Augment, augment_batch


def normalize_batch(images, mean, std):
    """uint8 N x H x W x C -> float32 N x C x H x W, (x / 255 - mean) / std per channel."""
    x = images.astype(np.float32) / 255.0
    x -= np.asarray(mean, dtype=np.float32)
    x /= np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


class BatchLoader:
    """Iterate ``(images, labels)`` numpy batches of ``dataset`` in the order of ``batch_sampler``;
    for a tuple dataset (:class:`PairDataset`, :class:`TripletDataset`) ``(images_1, ...,
    images_k, targets)``.

    ``augment`` (an :class:`Augment`, or None for evaluation) draws its randomness from
    ``(seed, epoch, batch number)``, so a run is reproducible whatever the number of workers.
    ``num_workers`` threads prepare up to ``2 * num_workers`` batches ahead; 0 loads in the caller.
    ``ctx``: yield ``mx.nd`` arrays on that context instead of numpy arrays (a training loop's
    own batches; the engine splits numpy batches over its devices itself).
    """

    def __init__(self, dataset, batch_sampler, mean, std, augment=None, seed=0, num_workers=2,
                 ctx=None):
        self.dataset = dataset
        self.batch_sampler = batch_sampler
        self.mean, self.std = mean, std
        self.augment = augment or Augment()
        self.seed = seed
        self.num_workers = int(num_workers)
        self.ctx = ctx
        self._epoch = 0
        self._skip = 0

    def __len__(self):
        return len(self.batch_sampler)

    def set_epoch(self, epoch, skip=0):
        """The next ``iter`` yields epoch ``epoch`` (0-based), from batch number ``skip`` on (a
        resumed run: the batches and their augmentation are those of an uninterrupted run)."""
        self._epoch = int(epoch)
        self._skip = int(skip)
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def _make(self, epoch, number, indices):
        rng = np.random.default_rng([self.seed, epoch, number])
        if self.augment.resized_crop and hasattr(self.dataset, "raw_batch"):
            images, labels = self.dataset.raw_batch(indices)  # whole images, of any sizes
        else:
            images, labels = self.dataset.batch(indices)
            if isinstance(images, list):  # a tuple dataset: one image array per tuple element
                return tuple(normalize_batch(augment_batch(part, self.augment, rng), self.mean,
                                             self.std) for part in images) + (
                    labels.astype(np.float32),)
        images = augment_batch(images, self.augment, rng)
        return normalize_batch(images, self.mean, self.std), labels.astype(np.float32)

    def __iter__(self):
        if self.ctx is None:
            yield from self._batches()
            return
        import mxnet as mx

        for batch in self._batches():
            yield tuple(mx.nd.array(part, ctx=self.ctx) for part in batch)

    def _batches(self):
        epoch = self._epoch
        self._epoch += 1
        if hasattr(self.dataset, "set_epoch"):  # tuple datasets draw fresh tuples per epoch
            self.dataset.set_epoch(epoch)
        batches = itertools.islice(enumerate(iter(self.batch_sampler)), self._skip, None)
        self._skip = 0
        if self.num_workers <= 0:
            for number, indices in batches:
                yield self._make(epoch, number, indices)
            return
        with ThreadPoolExecutor(self.num_workers) as pool:
            pending = []
            for number, indices in batches:
                pending.append(pool.submit(self._make, epoch, number, indices))
                if len(pending) > 2 * self.num_workers:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()


class SequentialBatches:
    """Batch sampler over ``range(length)`` in order, the last batch possibly short (evaluation)."""

    def __init__(self, length, batch_size):
        self.length, self.batch_size = int(length), int(batch_size)

    def __len__(self):
        return (self.length + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for start in range(0, self.length, self.batch_size):
            yield list(range(start, min(start + self.batch_size, self.length)))
