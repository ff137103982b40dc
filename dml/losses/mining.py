"""Mining: selections over a distance matrix, shared by every online loss (numpy in, numpy out).

Mining chooses tuples and needs no gradient, so it runs on the host, in the compiled kernels of
:mod:`dml.losses.kernels` (one pass over each anchor's B distances plus a binary search among its
positives: O(B^2 log P) time, no B x B x B array). The losses call these kernels through one
custom operator (:mod:`dml.losses.batch`); the functions here are the same selections as plain
numpy functions with B x B outputs, for users and tests.

Pairs are *ordered* (every a != p of a class) for the FaceNet/TensorFlow-style losses and
*unordered* (a < p, the anchor the lower index) for the adambielski/siamese-triplet selectors.
"""
import logging

import numpy as np

from . import kernels

log = logging.getLogger("dml.losses")

NEGATIVE_SELECTORS = ("semihard_tf", "hardest", "random_hard", "semihard")
PAIR_SELECTORS = ("all_positive", "hard_negative")


def label_codes(labels):
    """The labels as integers 0..C-1 (the kernels' ``codes``)."""
    return np.unique(np.asarray(labels).reshape(-1), return_inverse=True)[1].astype(np.int64)


def anchor_positive_mask(labels, unordered=False):
    """[a, p] is True when a != p (a < p if ``unordered``) and labels[a] == labels[p]."""
    labels = np.asarray(labels).reshape(-1)
    same = labels[:, None] == labels[None, :]
    return np.triu(same, 1) if unordered else same & ~np.eye(len(labels), dtype=bool)


def candidate_pairs(labels, unordered=False):
    """Positive pairs whose anchor has a negative: those that can form a triplet."""
    negative = anchor_negative_mask(labels)
    return anchor_positive_mask(labels, unordered) & negative.any(axis=1)[:, None]


def anchor_negative_mask(labels):
    """[a, n] is True when labels[a] != labels[n]."""
    labels = np.asarray(labels).reshape(-1)
    return labels[:, None] != labels[None, :]


def _pairs(labels, unordered):
    """codes, offsets and the (anchor, positive) arrays of the candidate pairs."""
    codes = label_codes(labels)
    offsets = kernels.pair_offsets(codes, unordered)
    return (codes, offsets) + kernels.positive_pairs(codes, offsets, unordered)


def _scatter(shape, anchors, positives, values, fill):
    out = np.full(shape, fill, dtype=np.asarray(values).dtype)
    out[anchors, positives] = values
    return out


def semihard_negatives(dist, labels):
    """FaceNet / TensorFlow semi-hard negative for every ordered positive pair.

    For each anchor a and positive p, the chosen negative n is the closest negative with
    d(a, n) > d(a, p); when no negative is farther than the positive, the farthest negative of a.

    Returns ``(negative, valid)``, both B x B: ``negative[a, p]`` the column of the chosen negative,
    ``valid[a, p]`` True for positive pairs whose anchor has at least one negative.
    """
    return select_negatives(dist, labels, "semihard_tf")


def select_negatives(dist, labels, selector, margin=1.0, rng=None):
    """One negative per positive pair, by ``selector``:

    - ``semihard_tf`` (ordered pairs): see :func:`semihard_negatives`;
    - ``hardest`` (a < p): the closest negative of a, kept when d(a,p) - d(a,n) + m > 0;
    - ``random_hard`` (a < p): a uniformly random negative with d(a,p) - d(a,n) + m > 0;
    - ``semihard`` (a < p): a uniformly random negative with 0 < d(a,p) - d(a,n) + m < m,
      i.e. d(a,p) < d(a,n) < d(a,p) + m (adambielski/siamese-triplet's semi-hard selector).

    Returns ``(negative, valid)`` as :func:`semihard_negatives` (negative is 0 where not valid);
    pairs with no allowed negative are not valid.
    """
    if selector not in NEGATIVE_SELECTORS:
        raise ValueError("selector must be one of %s, not %r" % (", ".join(NEGATIVE_SELECTORS), selector))
    dist = np.ascontiguousarray(dist, dtype=np.float64)
    codes, offsets, anchors, positives = _pairs(labels, unordered=selector != "semihard_tf")
    negatives = choose_negatives(dist, codes, offsets, anchors, positives, selector, margin, rng)
    valid = negatives >= 0
    chosen = _scatter(dist.shape, anchors[valid], positives[valid], negatives[valid], 0)
    return chosen, _scatter(dist.shape, anchors[valid], positives[valid], True, False)


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


def batch_hard(dist, labels):
    """Per anchor: the farthest positive and the closest negative (batch-hard mining).
    Returns ``(positive, negative, valid)``, each of length B; ``valid`` marks anchors with both."""
    positive, negative = kernels.batch_hard(np.ascontiguousarray(dist), label_codes(labels))
    valid = (positive >= 0) & (negative >= 0)
    return np.maximum(positive, 0), np.maximum(negative, 0), valid


def triplet_sums(dist, labels, margin, unordered=False):
    """For every ordered positive pair (a, p) (only a < p if ``unordered``), over all negatives n
    of a:

    - ``sums[a, p]  = sum_n relu(d(a,p) - d(a,n) + m)``
    - ``active[a, p] = #{n : d(a,p) - d(a,n) + m > 0}``
    - ``total[a, p]  = #{n}``

    (see ``kernels.triplet_sums``: sorted reaches and bucketed prefix sums, O(B^2 log P)).
    """
    dist = np.ascontiguousarray(dist, dtype=np.float64)
    codes, offsets, anchors, positives = _pairs(labels, unordered)
    sums, active = kernels.triplet_sums(dist, codes, offsets, float(margin), unordered)
    num_negatives = len(codes) - np.bincount(codes)[codes]
    return (_scatter(dist.shape, anchors, positives, sums, 0.0),
            _scatter(dist.shape, anchors, positives, active, 0),
            _scatter(dist.shape, anchors, positives, num_negatives[anchors], 0))


def triplet_sums_grad(dist, labels, margin, grad_sums, unordered=False, active=None):
    """Gradient of ``sum(grad_sums * sums)`` with respect to ``dist`` (see :func:`triplet_sums`):
    d/d d(a,p) = g[a,p] * active[a,p]; d/d d(a,n) = -sum of g[a,p] over the positives p with
    d(a,p) + m > d(a,n). ``active``: the forward pass's B x B counts, if at hand."""
    dist = np.ascontiguousarray(dist, dtype=np.float64)
    codes, offsets, anchors, positives = _pairs(labels, unordered)
    if active is None:
        counts = kernels.triplet_sums(dist, codes, offsets, float(margin), unordered)[1]
    else:
        counts = np.asarray(active)[anchors, positives].astype(np.int64)
    weights = np.asarray(grad_sums, dtype=np.float64)[anchors, positives]
    grad = np.zeros_like(dist)
    kernels.triplet_sums_grad(dist, codes, offsets, float(margin), unordered, weights, counts, grad)
    return grad


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
    keep = int(positive.sum())
    flat_neg = np.flatnonzero(negative)
    if keep < len(flat_neg):
        closest = flat_neg[np.argpartition(dist.reshape(-1)[flat_neg], keep)[:keep]] if keep else flat_neg[:0]
        negative = np.zeros_like(negative)
        negative.reshape(-1)[closest] = True
    return positive, negative


# ------------------------------------------------------------------------------------------------
# A batch that cannot form a single tuple (one class, or every sample its own class) gives a zero
# loss; it is logged, not raised, because it is a property of the data, not a bug.

_degenerate_batches = {"count": 0}


def reset_warnings():
    """Start counting degenerate batches afresh (the engine does at the start of every run)."""
    _degenerate_batches["count"] = 0


def warn_no_tuples(labels, what="triplet"):
    """Log (the 1st, 10th, 100th, ... time) that a batch formed no tuple and so gave a zero loss."""
    labels = np.asarray(labels).reshape(-1)
    _degenerate_batches["count"] += 1
    count = _degenerate_batches["count"]
    if str(count).rstrip("0") == "1":  # the 1st, 10th, 100th, ...
        log.warning("a batch of %d samples from %d class(es) forms no %s: its loss is 0 and it "
                    "trains nothing (%d such batches so far); online losses need batches of >= 2 "
                    "classes with >= 2 samples of a class, e.g. --n-classes 2+ --n-samples 2+",
                    len(labels), len(np.unique(labels)), what, count)
