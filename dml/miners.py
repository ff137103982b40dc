"""Miners: given a batch's embeddings and labels, the index tuples a loss should score, without
gradient (pytorch-metric-learning's pattern: a miner chooses, a loss consumes):

    pairs = MultiSimilarityMiner()(embeddings, labels)          # (a1, p, a2, n)
    loss = MultiSimilarityLoss()(embeddings, labels, indices=pairs)

A pair miner returns ``(a1, p, a2, n)``: the positive pairs (a1[k], p[k]) and the negative pairs
(a2[k], n[k]), int64 numpy arrays, in row-major order. Miners read the embeddings once
(``asnumpy``) and work on the host; the B x B similarity is one matrix product.
"""
import numpy as np

from .distances import unit_rows

from .ops.indices import _empty_triplets, pairs_to_triplets, triplets_to_pairs  # noqa: F401


def _host(embeddings, labels):
    x = embeddings.asnumpy() if hasattr(embeddings, "asnumpy") else np.asarray(embeddings)
    y = labels.asnumpy() if hasattr(labels, "asnumpy") else np.asarray(labels)
    return np.asarray(x, dtype=np.float64), np.asarray(y).reshape(-1)


def cosine_similarity_np(x):
    unit = unit_rows(x)
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

    @property
    def fused_epsilon(self):
        """The similarity losses' fused operator runs this miner itself, with this epsilon
        (:meth:`dml.losses.similarity._SimilarityLoss.score_references`)."""
        return self.epsilon

    def __call__(self, embeddings, labels, ref_emb=None, ref_labels=None):
        """The pairs ``(a1, p, a2, n)`` of the batch; with ``ref_emb``/``ref_labels`` (PML's
        reference set, e.g. a cross-batch memory) anchors index the batch and ``p``/``n`` the
        references, and every same-label reference is a positive (the caller removes an
        anchor's own copy)."""
        x, y = _host(embeddings, labels)
        if ref_emb is None:
            sim = cosine_similarity_np(x)
            positive, negative = pair_masks_np(y)
        else:
            refs, ref_y = _host(ref_emb, ref_labels)
            sim = unit_rows(x) @ unit_rows(refs).T
            positive = y[:, None] == ref_y[None, :]
            negative = ~positive
        return self.mine(sim, positive, negative)

    def mine(self, sim, positive, negative):
        """The pairs kept among the ``positive`` and ``negative`` masks of the similarities
        ``sim`` (anchors x references)."""
        if not positive.any() or not negative.any():
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy(), empty.copy(), empty.copy()
        hardest_positive = np.where(positive, sim, np.inf).min(axis=1, keepdims=True)
        hardest_negative = np.where(negative, sim, -np.inf).max(axis=1, keepdims=True)
        keep_negative = negative & (sim + self.epsilon > hardest_positive)
        keep_positive = positive & (sim - self.epsilon < hardest_negative)
        return masks_to_pairs(keep_positive, keep_negative)


class DistanceWeightedMiner:
    r"""Distance-weighted sampling (Wu et al. 2017), as PML 2.9's ``DistanceWeightedMiner``:
    triplets (a, p, n) whose negative is drawn with probability proportional to the inverse of the
    density of distances between random points on the unit sphere in D dimensions,

    .. math:: w_{an} \propto d^{2-D} (1 - d^2/4)^{-(D-3)/2}, \qquad d = \max(d_{an}, cutoff),

    and 0 for negatives at d >= ``nonzero_loss_cutoff`` (they would give no margin loss). For every
    class with two images or more, each of its images is the anchor of as many triplets as the
    class has images, each with a positive drawn uniformly among the class's other images.
    Distances are Euclidean between L2-normalized embeddings. ``rng``: a numpy RandomState
    (default numpy's global one, which ``dml train`` seeds).
    """

    def __init__(self, cutoff=0.5, nonzero_loss_cutoff=1.4, rng=None):
        if not (np.isfinite(cutoff) and np.isfinite(nonzero_loss_cutoff)):
            raise ValueError("cutoff and nonzero_loss_cutoff must be finite")
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)
        self.rng = rng

    def weights(self, x, labels):
        """The B x B sampling weights (rows sum to 1, or are 0 where nothing can be drawn)."""
        dim = x.shape[1]
        unit = unit_rows(x)
        dist = np.sqrt(np.maximum(2 - 2 * unit @ unit.T, 0)) + np.eye(len(x))
        dist = np.maximum(dist, self.cutoff)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_w = (2.0 - dim) * np.log(dist) - ((dim - 3) / 2.0) * np.log(1.0 - 0.25 * dist ** 2)
            finite = np.isfinite(log_w)
            w = np.exp(log_w - (np.max(log_w[finite]) if finite.any() else 0.0))
        w[~finite] = 0.0
        w *= (labels[:, None] != labels[None, :]) * (dist < self.nonzero_loss_cutoff)
        total = w.sum(axis=1, keepdims=True)
        return np.divide(w, total, out=np.zeros_like(w), where=total > 0)

    def __call__(self, embeddings, labels):
        x, y = _host(embeddings, labels)
        rng = self.rng or np.random
        w = self.weights(x, y)
        a_all, p_all, n_all = [], [], []
        for label in np.unique(y):
            members = np.flatnonzero(y == label)
            others = np.flatnonzero(y != label)
            if len(members) < 2 or not len(others):
                continue
            k = len(members)
            for a in members:
                if w[a].sum() <= 0:
                    continue
                positives = members[members != a]
                p = positives[rng.randint(0, len(positives), size=k)]
                n = rng.choice(len(y), size=k, p=w[a])
                a_all.append(np.full(k, a)), p_all.append(p), n_all.append(n)
        if not a_all:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty.copy(), empty.copy()
        return tuple(np.concatenate(v).astype(np.int64) for v in (a_all, p_all, n_all))


# ------------------------------------------------------------------------------------------------
# The selections of the fused online losses, as miners: the same kernels, index tuples out.


def _distances(x, y, distance):
    from .ops import kernels, mining

    x = np.ascontiguousarray(x)
    dist, _ = kernels.distances(x, distance)
    return dist, mining.label_codes(y)


class TripletSemiHardMiner:
    """FaceNet's / TensorFlow's semi-hard triplets (the selection of
    :class:`dml.losses.TripletSemiHardLoss`): for every ordered positive pair (a, p) whose anchor
    has a negative, the closest negative n with d(a, n) > d(a, p), else a's farthest negative.
    Returns ``(a, p, n)``."""

    def __init__(self, distance="euclidean"):
        from .ops.checks import check_distance

        self.distance = check_distance(distance)

    def __call__(self, embeddings, labels):
        from .ops import kernels

        x, y = _host(embeddings, labels)
        dist, codes = _distances(x, y, self.distance)
        offsets = kernels.pair_offsets(codes)
        if offsets[-1] == 0:
            return _empty_triplets()
        anchors, positives = kernels.positive_pairs(codes, offsets, False)
        negatives = kernels.semihard_tf(dist, codes, offsets)
        keep = negatives >= 0
        return anchors[keep], positives[keep], negatives[keep]


class BatchHardMiner:
    """Batch-hard triplets (Hermans et al. 2017; the selection of
    :class:`dml.losses.TripletBatchHardLoss`): per anchor with a positive and a negative, its
    farthest positive and its closest negative. Returns ``(a, p, n)``."""

    def __init__(self, distance="euclidean"):
        from .ops.checks import check_distance

        self.distance = check_distance(distance)

    def __call__(self, embeddings, labels):
        from .ops import kernels

        x, y = _host(embeddings, labels)
        dist, codes = _distances(x, y, self.distance)
        hardest_positive, hardest_negative = kernels.batch_hard(dist, codes)
        anchors = np.flatnonzero((hardest_positive >= 0) & (hardest_negative >= 0))
        return anchors.astype(np.int64), hardest_positive[anchors], hardest_negative[anchors]


class OnlineTripletMiner:
    """The triplets of :class:`dml.losses.OnlineTripletLoss`'s selectors, for every unordered
    positive pair a < p: ``hardest`` (a's closest negative, when its triplet loss
    d(a,p) - d(a,n) + margin is > 0), ``random_hard`` (a random negative with positive loss),
    ``semihard`` (a random negative with 0 < loss < margin), ``all`` (every negative).
    Returns ``(a, p, n)``. ``rng``: a numpy RandomState (default numpy's global one)."""

    def __init__(self, selector="random_hard", margin=0.2, distance="euclidean", rng=None):
        from .ops.checks import check_margin
        from .ops.checks import check_distance
        from .registry import ONLINE_TRIPLET_SELECTORS

        if selector not in ONLINE_TRIPLET_SELECTORS:
            raise ValueError("selector must be one of %s, not %r"
                             % ("|".join(ONLINE_TRIPLET_SELECTORS), selector))
        self.selector, self.margin = selector, check_margin(margin)
        self.distance, self.rng = check_distance(distance), rng

    def __call__(self, embeddings, labels):
        from .ops import kernels, mining

        x, y = _host(embeddings, labels)
        dist, codes = _distances(x, y, self.distance)
        offsets = kernels.pair_offsets(codes, unordered=True)
        if offsets[-1] == 0:
            return _empty_triplets()
        anchors, positives = kernels.positive_pairs(codes, offsets, True)
        if self.selector == "all":
            negative = codes[None, :] != codes[anchors][:, None]
            pair, n = np.nonzero(negative)
            return anchors[pair], positives[pair], n.astype(np.int64)
        negatives = mining.choose_negatives(dist, codes, offsets, anchors, positives,
                                            self.selector, self.margin, self.rng)
        keep = negatives >= 0
        return anchors[keep], positives[keep], negatives[keep]


class HardNegativePairMiner:
    """The pairs of :class:`dml.losses.OnlineContrastiveLoss`'s ``hard_negative`` selector: every
    positive pair a < b and as many of the closest negative pairs a < b (all of them when there
    are fewer). Returns ``(a1, p, a2, n)``."""

    def __init__(self, distance="euclidean"):
        from .ops.checks import check_distance

        self.distance = check_distance(distance)

    def __call__(self, embeddings, labels):
        from .ops import mining

        x, y = _host(embeddings, labels)
        dist, codes = _distances(x, y, self.distance)
        positive, negative = mining.select_pairs(dist, codes, "hard_negative")
        return masks_to_pairs(positive, negative)


