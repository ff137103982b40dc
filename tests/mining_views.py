"""Dense B x B views of the fused kernels' selections (masks and per-pair matrices), moved here
from dml.losses.mining: only the tests use them, to compare the kernels with brute force."""
import numpy as np

from dml.losses import kernels
from dml.losses.mining import (NEGATIVE_SELECTORS, anchor_negative_mask, anchor_positive_mask,
                               choose_negatives, label_codes)


def candidate_pairs(labels, unordered=False):
    """Positive pairs whose anchor has a negative: those that can form a triplet."""
    negative = anchor_negative_mask(labels)
    return anchor_positive_mask(labels, unordered) & negative.any(axis=1)[:, None]


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
