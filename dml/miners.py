"""Miners: given a batch's embeddings and labels, the index tuples a loss should score, without
gradient (pytorch-metric-learning's pattern: a miner chooses, a loss consumes):

    pairs = MultiSimilarityMiner()(embeddings, labels)          # (a1, p, a2, n)
    loss = MultiSimilarityLoss()(embeddings, labels, indices=pairs)

A pair miner returns ``(a1, p, a2, n)``: the positive pairs (a1[k], p[k]) and the negative pairs
(a2[k], n[k]), int64 numpy arrays, in row-major order. Miners read the embeddings once
(``asnumpy``) and work on the host; the B x B similarity is one matrix product.
"""
import numpy as np


def _host(embeddings, labels):
    x = embeddings.asnumpy() if hasattr(embeddings, "asnumpy") else np.asarray(embeddings)
    y = labels.asnumpy() if hasattr(labels, "asnumpy") else np.asarray(labels)
    return np.asarray(x, dtype=np.float64), np.asarray(y).reshape(-1)


def cosine_similarity_np(x):
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return unit @ unit.T


def pair_masks_np(labels):
    """(positive, negative) boolean B x B masks: same label off the diagonal, other label."""
    same = labels[:, None] == labels[None, :]
    positive = same & ~np.eye(len(labels), dtype=bool)
    return positive, ~same


def masks_to_pairs(positive, negative):
    a1, p = np.nonzero(positive)
    a2, n = np.nonzero(negative)
    return a1.astype(np.int64), p.astype(np.int64), a2.astype(np.int64), n.astype(np.int64)


class MultiSimilarityMiner:
    r"""The pair mining of the multi-similarity paper (Wang et al. 2019), as PML 2.9's
    ``MultiSimilarityMiner`` on cosine similarity s:

    - a negative pair (a, n) is kept when :math:`s_{an} + \epsilon > \min_{p} s_{ap}`,
    - a positive pair (a, p) is kept when :math:`s_{ap} - \epsilon < \max_{n} s_{an}`,

    so an anchor without positives keeps no negatives and one without negatives no positives.
    """

    def __init__(self, epsilon=0.1):
        if not np.isfinite(epsilon):
            raise ValueError("epsilon must be finite, not %r" % (epsilon,))
        self.epsilon = float(epsilon)

    def __call__(self, embeddings, labels):
        x, y = _host(embeddings, labels)
        sim = cosine_similarity_np(x)
        positive, negative = pair_masks_np(y)
        if not positive.any() or not negative.any():
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy(), empty.copy(), empty.copy()
        hardest_positive = np.where(positive, sim, np.inf).min(axis=1, keepdims=True)
        hardest_negative = np.where(negative, sim, -np.inf).max(axis=1, keepdims=True)
        keep_negative = negative & (sim + self.epsilon > hardest_positive)
        keep_positive = positive & (sim - self.epsilon < hardest_negative)
        return masks_to_pairs(keep_positive, keep_negative)
