"""Mining: selections over a distance matrix, shared by every online loss (numpy in, numpy out).

Mining chooses tuples and needs no gradient, so it runs on the host, in the compiled kernels of
:mod:`dml.ops.kernels` (one pass over each anchor's B distances plus a binary search among its
positives: O(B^2 log P) time, no B x B x B array). The losses call these kernels through one
custom operator (:mod:`dml.ops.batch`); the functions here are the same selections as plain
numpy functions with B x B outputs, for users and tests.

Pairs are *ordered* (every a != p of a class) for the FaceNet/TensorFlow-style losses and
*unordered* (a < p, the anchor the lower index) for the adambielski/siamese-triplet selectors.
"""
import logging

import numpy as np

from . import kernels

log = logging.getLogger("dml.losses")

NEGATIVE_SELECTORS = ("semihard_tf", "hardest", "random_hard", "semihard")
from ..registry import PAIR_SELECTORS  # noqa: E402


def label_codes(labels):
    """The labels as integers 0..C-1 (the kernels' ``codes``)."""
    return np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1].astype(np.int64)


def anchor_positive_mask(labels, unordered=False):
    """[a, p] is True when a != p (a < p if ``unordered``) and labels[a] == labels[p]."""
    labels = np.asarray(labels).reshape(-1)
    same = labels[:, None] == labels[None, :]
    return np.triu(same, 1) if unordered else same & ~np.eye(len(labels), dtype=bool)


def anchor_negative_mask(labels):
    """[a, n] is True when labels[a] != labels[n]."""
    labels = np.asarray(labels).reshape(-1)
    return labels[:, None] != labels[None, :]


def choose_negatives(dist, codes, offsets, anchors, positives, selector, margin=1.0, rng=None):
    """The kernel-level form of :func:`select_negatives`: one negative per listed pair (-1: none)."""
    if selector == "semihard_tf":
        return kernels.semihard_tf(dist, codes, offsets)
    if selector == "hardest":
        closest = kernels.batch_hard(dist, codes)[1][anchors]
        keep = dist[anchors, positives] - dist[anchors, closest] + margin > 0
        return np.where(keep, closest, -1)
    rng = np.random if rng is None else rng
    uniforms = rng.random_sample(len(anchors))
    return kernels.random_negatives(dist, codes, offsets, float(margin), selector == "semihard",
                                    uniforms)


def select_pairs(dist, labels, selector):
    """Pairs for the online contrastive loss, as B x B masks over a < b:

    - ``all_positive``: every positive pair and every negative pair;
    - ``hard_negative``: every positive pair and the closest negative pairs, as many as there are
      positive pairs (all negative pairs if there are fewer).
    Returns ``(positive_pairs, negative_pairs)``.
    """
    dist = np.asarray(dist)
    positive = anchor_positive_mask(labels, unordered=True)
    negative = np.triu(anchor_negative_mask(labels), 1)
    if selector == "all_positive":
        return positive, negative
    if selector != "hard_negative":
        raise ValueError("pair selector must be one of %s, not %r" % (", ".join(PAIR_SELECTORS), selector))
    return positive, closest_pairs(negative, dist, int(positive.sum()))


def closest_pairs(mask, dist, keep):
    """The ``keep`` entries of the boolean ``mask`` with the smallest ``dist`` (same shape), as a
    mask; ``mask`` itself when it holds no more than ``keep``. The hard-negative selection of the
    contrastive loss, in a batch (:func:`select_pairs`) and against a memory."""
    flat = np.flatnonzero(mask)
    if keep >= len(flat):
        return mask
    chosen = np.zeros_like(mask)
    if keep:
        nearest = np.argpartition(np.asarray(dist).reshape(-1)[flat], keep)[:keep]
        chosen.reshape(-1)[flat[nearest]] = True
    return chosen


# ------------------------------------------------------------------------------------------------
# A batch that cannot form a single tuple (one class, or every sample its own class) gives a zero
# loss; it is logged, not raised, because it is a property of the data, not a bug.



class NoTupleWarnings:
    """Counts the batches of one loss that formed no tuple (zero loss, zero gradient) and logs
    the 1st, 10th, 100th, ... of them."""

    def __init__(self):
        self.count = 0

    def warn(self, labels, what="triplet"):
        labels = np.asarray(labels).reshape(-1)
        self.count += 1
        if str(self.count).rstrip("0") == "1":  # the 1st, 10th, 100th, ...
            log.warning("a batch of %d samples from %d class(es) forms no %s: its loss is 0 and it "
                        "trains nothing (%d such batches so far); online losses need batches of "
                        ">= 2 classes with >= 2 samples of a class, e.g. n_classes=2+ "
                        "n_samples=2+", len(labels), len(np.unique(labels)), what, self.count)


_counters = {}


def no_tuple_warnings(key):
    """The :class:`NoTupleWarnings` of the loss instance ``key`` (each dml loss has its own, so
    two losses, or two runs in one process, never share a count)."""
    return _counters.setdefault(key, NoTupleWarnings())
