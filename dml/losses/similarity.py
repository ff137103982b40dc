r"""Pair losses on cosine similarity over every pair of a batch, as pytorch-metric-learning 2.9
defines them (names, defaults, reductions): multi-similarity, circle, supervised-contrastive and
NT-Xent. Written with ``F`` ops only, so they hybridize.

For a batch x (B x D), :math:`s_{ij} = \hat x_i \cdot \hat x_j` (the rows L2-normalized); the
positive pairs of anchor i are the j != i of its class (:func:`positive_mask`), its negatives the
j of other classes (:func:`negative_mask`). Each loss also takes ``indices=(a1, p, a2, n)``, the
pairs a miner chose (:mod:`dml.miners`): then only those pairs count.

A row's masked log-sum-exp (:func:`masked_logsumexp`) is PML's ``lmu.logsumexp``: over the kept
entries of the row (and a 0 entry with ``add_one``), 0 for a row that keeps none.
"""
import math

import numpy as np
from mxnet import gluon

from ..distances import NORM_EPS, diagonal_mask, unit_rows
from .base import batch_loss_io, propagate_non_finite
from ..ops.indices import GraphOf, _as_arrays, triplets_to_pairs  # noqa: F401  (GraphOf: where it was)

_BIG = 1e30


def check_positive(name, value):
    """``value`` as a float, or a ``ValueError`` unless it is a finite number > 0."""
    if not (value > 0 and math.isfinite(value)):
        raise ValueError("%s must be a finite number > 0, not %r" % (name, value))
    return float(value)


def cosine_similarity(F, x):
    """The B x B matrix of cosine similarities of the rows of ``x``."""
    unit = F.L2Normalization(x, mode="instance", eps=NORM_EPS)
    return F.dot(unit, unit, transpose_b=True)


def same_label_mask(F, labels, square):
    """1 where labels[i] == labels[j] (the diagonal included)."""
    labels = labels.reshape((-1,))
    return F.broadcast_equal(labels.reshape((-1, 1)), labels.reshape((1, -1)))


def positive_mask(F, labels, square):
    """1 where j != i shares i's label: the positive pairs (a, p)."""
    return same_label_mask(F, labels, square) * (1 - diagonal_mask(F, square))


def negative_mask(F, labels, square):
    """1 where j's label differs from i's: the negative pairs (a, n)."""
    return 1 - same_label_mask(F, labels, square)


def pair_mask(F, anchors, others, square):
    """The B x B 0/1 mask of the pairs ``(anchors[k], others[k])`` (1-D index arrays): a one-hot
    product, so a miner's pairs select entries of the similarity matrix inside the graph."""
    n = F.contrib.arange_like(square, axis=0)
    rows = F.broadcast_equal(anchors.reshape((-1, 1)), n.reshape((1, -1)))  # K x B
    cols = F.broadcast_equal(others.reshape((-1, 1)), n.reshape((1, -1)))
    return F.clip(F.dot(rows, cols, transpose_a=True), 0, 1)


def masked_logsumexp(F, x, mask, add_one=False):
    r"""Row-wise :math:`\log(\mathbb{1}_{add\_one} + \sum_{j: mask_{ij}} e^{x_{ij}})`, shape
    (B, 1); 0 for a row with no kept entry. Stable: the row's largest kept value (or 0 with
    ``add_one``) is taken out first, and masked entries never reach ``exp``."""
    any_kept = F.max(mask, axis=1, keepdims=True)
    top = F.max(x * mask - _BIG * (1 - mask), axis=1, keepdims=True) * any_kept
    if add_one:
        top = F.maximum(top, 0)
    top = F.BlockGrad(top)
    terms = F.exp(F.broadcast_sub(x, top) * mask) * mask
    total = F.sum(terms, axis=1, keepdims=True)
    if add_one:
        total = total + F.exp(-top)
    else:
        total = total + (1 - any_kept)  # log(1) = 0 for an empty row, with a finite gradient
    return top + F.log(total)


def _masks(F, sim, labels, indices):
    """(positive, negative) masks: every pair of the batch, or the miner's ``indices``."""
    if indices is None:
        return positive_mask(F, labels, sim), negative_mask(F, labels, sim)
    a1, p, a2, n = indices
    return pair_mask(F, a1, p, sim), pair_mask(F, a2, n, sim)


def _enough_pairs(F, pos, neg):
    """PML returns a zero loss unless there are at least 2 positive or 2 negative pairs."""
    return ((F.sum(pos) > 1) + (F.sum(neg) > 1)) > 0


def similarity_gap(F, sim, pos, neg):
    """Mean positive-pair similarity minus mean negative-pair similarity (the statistic logged as
    ``train/similarity_gap``; no gradient)."""
    sim = F.BlockGrad(sim)
    mean_pos = F.sum(sim * pos) / F.maximum(F.sum(pos), 1)
    mean_neg = F.sum(sim * neg) / F.maximum(F.sum(neg), 1)
    return (mean_pos - mean_neg).reshape((1,))


class _SimilarityLoss(gluon.loss.Loss):
    """Base of the similarity losses: ``return_stat`` adds the similarity gap as a second
    output; ``loss(embeddings, labels, indices=(a1, p, a2, n))`` restricts the pairs."""

    def __init__(self, return_stat=False, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self.return_stat = return_stat
        with self.name_scope():
            self.mined = GraphOf(lambda F, x, y, a1, p, a2, n: self._forward(F, x, y,
                                                                            (a1, p, a2, n)))

    kind = None  # the fused host operator's name of the loss (dml.ops.simop)
    scores_references = True  # score_references below: CrossBatchMemory can wrap it

    def host_params(self):
        """The loss's parameters, as the fused host operator takes them."""
        raise NotImplementedError

    def hybrid_forward(self, F, embeddings, labels):
        """Every pair of the batch, through the fused host operator (one B x B pass on the host,
        :mod:`dml.ops.simop`); ``indices`` and the cross-batch memory score with
        :meth:`_forward` and :meth:`score`, the same formulas in MXNet operators."""
        return self._host(F, embeddings, labels)

    def score_references(self, embeddings, labels, ref_emb, ref_labels, indices=None, own=None,
                         miner=None):
        """The loss of ``embeddings`` (A x D anchors, with gradient) against fixed reference
        embeddings ``ref_emb`` (M x D) and ``ref_labels``, PML's ``loss(embeddings, labels,
        indices_tuple, ref_emb, ref_labels)``: the anchors x references similarities, every
        pair of one label a positive and of two labels a negative, or ``indices``, a pair
        miner's ``(a1, p, a2, n)`` of anchor rows and reference rows, or the pairs ``miner``
        keeps (called as ``miner(embeddings, labels, ref_emb, ref_labels)``); never anchor i's
        own copy ``own[i]`` (a memory holds the anchors too). Every pair, and the
        multi-similarity miner's, go through the fused host operator
        (:func:`dml.ops.simop.memory_loss`: one A x M product and one pass); other pairs
        through :meth:`score` in MXNet operators. Returns what the loss returns."""
        from mxnet import nd

        from ..ops.references import host_array, recorded, reference_masks
        from ..ops.simop import memory_loss

        x = host_array(embeddings)
        y = host_array(labels, np.float64).reshape(-1)
        refs, ref_y = host_array(ref_emb), host_array(ref_labels, np.float64).reshape(-1)
        own = np.full(len(x), -1, np.int64) if own is None else np.asarray(own, np.int64)
        epsilon = getattr(miner, "fused_epsilon", None)  # a miner the operator runs itself
        if miner is not None and epsilon is None and indices is None:
            indices = miner(x, y, refs, ref_y)
        if indices is None:
            return recorded(embeddings, lambda z, need_grad: memory_loss(
                z, y, refs, ref_y, own, self.kind, self.host_params(), epsilon,
                need_grad=need_grad), self.return_stat)
        ctx, dtype = embeddings.context, embeddings.dtype
        pos, neg = reference_masks(y, ref_y, own, indices)
        unit = nd.L2Normalization(embeddings, mode="instance", eps=NORM_EPS)
        ref_unit = nd.array(unit_rows(refs.astype(np.float64)), ctx=ctx, dtype=dtype)
        sim = nd.dot(unit, ref_unit, transpose_b=True)
        return self.score(nd, sim, nd.array(pos, ctx=ctx, dtype=dtype),
                          nd.array(neg, ctx=ctx, dtype=dtype), embeddings, labels)

    def _host(self, F, embeddings, labels, mine_epsilon=None):
        from ..ops.simop import host_similarity

        loss, stat = host_similarity(F, embeddings, labels, self.kind, self.host_params(),
                                     mine_epsilon=mine_epsilon)
        return (loss, stat) if self.return_stat else loss

    def mined_by_multi_similarity(self, embeddings, labels, epsilon):
        """The loss on the pairs :class:`dml.miners.MultiSimilarityMiner` (``epsilon``) keeps,
        mined inside the fused operator (the same rule, without the B x B masks)."""
        import mxnet as mx

        return self._host(mx.nd, embeddings, labels, mine_epsilon=epsilon)

    def _forward(self, F, embeddings, labels, indices):
        sim = cosine_similarity(F, embeddings)
        pos, neg = _masks(F, sim, labels, indices)
        # (labels too: with a miner's pairs they are otherwise unused, and they are finite)
        return self.score(F, sim, pos, neg, embeddings, labels)

    def score(self, F, sim, pos, neg, *inputs):
        """The loss (and with ``return_stat`` the similarity gap) of the similarities ``sim``
        (anchors x references) over the positive and negative pair masks: what
        :class:`dml.losses.CrossBatchMemory` scores a batch against its memory with. NaN when
        ``inputs`` hold a NaN or an infinity."""
        loss = self._loss(F, sim, pos, neg) * _enough_pairs(F, pos, neg)
        loss = propagate_non_finite(F, loss.reshape((1,)), *inputs)
        if self.return_stat:
            return loss, propagate_non_finite(F, similarity_gap(F, sim, pos, neg), inputs[0])
        return loss

    def __call__(self, embeddings, labels, indices=None, ref_emb=None, ref_labels=None):
        """``indices``: a pair miner's ``(a1, p, a2, n)``, or a triplet miner's ``(a, p, n)``
        scored as its pairs (a, p) and (a, n) (PML's ``convert_to_pairs``). ``ref_emb`` and
        ``ref_labels``: score the batch against these references instead of itself
        (:meth:`score_references`; ``indices`` then pair anchor rows with reference rows)."""
        if ref_emb is not None:
            return self.score_references(embeddings, labels, ref_emb, ref_labels, indices)
        if indices is None:
            return super().__call__(embeddings, labels)
        if len(indices) not in (3, 4):
            raise ValueError("indices must be the pairs (a1, p, a2, n) of a pair miner or the "
                             "triplets (a, p, n) of a triplet miner, not %d arrays" % len(indices))
        return self.mined(embeddings, labels, *_as_arrays(triplets_to_pairs(indices), embeddings))

    def _loss(self, F, sim, pos, neg):
        raise NotImplementedError


@batch_loss_io
class MultiSimilarityLoss(_SimilarityLoss):
    r"""Multi-similarity loss (Wang et al., CVPR 2019), as PML 2.9's ``MultiSimilarityLoss``:

    .. math:: L = \frac{1}{B} \sum_i \Big[ \frac{1}{\alpha}
              \log\big(1 + \sum_{p \in P_i} e^{-\alpha (s_{ip} - base)}\big)
              + \frac{1}{\beta} \log\big(1 + \sum_{n \in N_i} e^{\beta (s_{in} - base)}\big) \Big]

    the mean over every anchor of the batch (PML's ``MeanReducer``; an anchor without positives
    or negatives contributes 0 for that term). Paired in the paper with
    :class:`dml.miners.MultiSimilarityMiner` (``indices=``).
    """

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, **kwargs):
        super().__init__(**kwargs)
        self._alpha, self._beta = check_positive("alpha", alpha), check_positive("beta", beta)
        if not math.isfinite(base):
            raise ValueError("base must be finite, not %r" % (base,))
        self._base = float(base)

    kind = "multi_similarity"

    def host_params(self):
        return dict(alpha=self._alpha, beta=self._beta, base=self._base)

    def _loss(self, F, sim, pos, neg):
        pos_term = masked_logsumexp(F, -self._alpha * (sim - self._base), pos, add_one=True)
        neg_term = masked_logsumexp(F, self._beta * (sim - self._base), neg, add_one=True)
        return F.mean(pos_term / self._alpha + neg_term / self._beta)


@batch_loss_io
class CircleLoss(_SimilarityLoss):
    r"""Circle loss (Sun et al., CVPR 2020), as PML 2.9's ``CircleLoss``: with
    :math:`O_p = 1 + m`, :math:`O_n = -m`, :math:`\Delta_p = 1 - m`, :math:`\Delta_n = m` and the
    weights :math:`\alpha_p = [O_p - s_p]_+`, :math:`\alpha_n = [s_n - O_n]_+` (no gradient),

    .. math:: L_i = \mathrm{softplus}\Big(\log \sum_{p \in P_i} e^{-\gamma \alpha_p (s_{ip} -
              \Delta_p)} + \log \sum_{n \in N_i} e^{\gamma \alpha_n (s_{in} - \Delta_n)}\Big)

    averaged over the anchors that have both a positive and a negative (PML's
    ``AvgNonZeroReducer``: the others are 0, and softplus is > 0).
    """

    def __init__(self, m=0.4, gamma=80.0, **kwargs):
        super().__init__(**kwargs)
        if not (0 < m < 1):
            raise ValueError("m must be between 0 and 1, not %r" % (m,))
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError("gamma must be a finite number > 0, not %r" % (gamma,))
        self._m, self._gamma = float(m), float(gamma)

    kind = "circle"

    def host_params(self):
        return dict(m=self._m, gamma=self._gamma)

    def _loss(self, F, sim, pos, neg):
        m, gamma = self._m, self._gamma
        alpha_p = F.BlockGrad(F.relu(1 + m - sim))
        alpha_n = F.BlockGrad(F.relu(sim + m))
        logit_p = -gamma * alpha_p * (sim - (1 - m))
        logit_n = gamma * alpha_n * (sim - m)
        per_anchor = F.Activation(masked_logsumexp(F, logit_p, pos)
                                  + masked_logsumexp(F, logit_n, neg), act_type="softrelu")
        valid = F.max(pos, axis=1, keepdims=True) * F.max(neg, axis=1, keepdims=True)
        return F.sum(per_anchor * valid) / F.maximum(F.sum(valid), 1)


@batch_loss_io
class SupConLoss(_SimilarityLoss):
    r"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), as PML 2.9's ``SupConLoss``:

    .. math:: L_i = -\frac{1}{|P_i|} \sum_{p \in P_i} \Big( \frac{s_{ip}}{\tau}
              - \log \sum_{j \in P_i \cup N_i} e^{s_{ij} / \tau} \Big)

    averaged over the anchors that have a positive (PML's ``AvgNonZeroReducer``); 0 when the
    batch has no positive or no negative pair.
    """

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(**kwargs)
        self._temperature = check_positive("temperature", temperature)

    kind = "supcon"

    def host_params(self):
        return dict(temperature=self._temperature)

    def _loss(self, F, sim, pos, neg):
        logits = sim / self._temperature
        log_prob = F.broadcast_sub(logits, masked_logsumexp(F, logits, F.clip(pos + neg, 0, 1)))
        n_pos = F.sum(pos, axis=1, keepdims=True)
        per_anchor = -F.sum(pos * log_prob, axis=1, keepdims=True) / F.maximum(n_pos, 1)
        has_pos = n_pos > 0
        both = (F.sum(pos) > 0) * (F.sum(neg) > 0)
        return F.sum(per_anchor * has_pos) / F.maximum(F.sum(has_pos), 1) * both


@batch_loss_io
class NTXentLoss(_SimilarityLoss):
    r"""NT-Xent with labels (the normalized temperature-scaled cross-entropy of SimCLR; Khosla
    et al. 2020's "SupCon-out" form), as PML 2.9's ``NTXentLoss``: for each positive pair (a, p),

    .. math:: \ell_{ap} = -\log \frac{e^{s_{ap}/\tau}}{e^{s_{ap}/\tau}
              + \sum_{n \in N_a} e^{s_{an}/\tau}}

    averaged over the positive pairs (PML's ``MeanReducer`` of per-pair losses); 0 when the batch
    has no positive or no negative pair.
    """

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(**kwargs)
        self._temperature = check_positive("temperature", temperature)

    kind = "ntxent"

    def host_params(self):
        return dict(temperature=self._temperature)

    def _loss(self, F, sim, pos, neg):
        logits = sim / self._temperature
        # log(e^{s_ap} + sum_n e^{s_an}) = logaddexp(s_ap, lse_n(a))
        neg_lse = masked_logsumexp(F, logits, neg)  # B x 1; 0 for an anchor without negatives
        has_neg = F.max(neg, axis=1, keepdims=True)
        top = F.BlockGrad(F.broadcast_maximum(logits, neg_lse))
        denominator = top + F.log(F.exp(logits - top)
                                  + F.broadcast_mul(F.exp(F.broadcast_sub(neg_lse, top)), has_neg))
        per_pair = (denominator - logits) * pos
        both = (F.sum(pos) > 0) * (F.sum(neg) > 0)
        return F.sum(per_pair) / F.maximum(F.sum(pos), 1) * both


@batch_loss_io
class GeneralizedLiftedStructureLoss(_SimilarityLoss):
    r"""Generalized lifted-structure loss (Oh Song et al., CVPR 2016; Hermans et al. 2017's
    generalization), as PML 2.9's ``GeneralizedLiftedStructureLoss`` on the Euclidean distance
    d of L2-normalized embeddings:

    .. math:: L = \frac{1}{B} \sum_i \Big[ \log \sum_{p \in P_i} e^{d_{ip} - m_+}
              + \log \sum_{n \in N_i} e^{m_- - d_{in}} \Big]_+

    (``neg_margin`` m- = 1, ``pos_margin`` m+ = 0; a term over no pair is 0).
    """

    def __init__(self, neg_margin=1.0, pos_margin=0.0, **kwargs):
        super().__init__(**kwargs)
        if not (math.isfinite(neg_margin) and math.isfinite(pos_margin)):
            raise ValueError("neg_margin and pos_margin must be finite")
        self._neg_margin, self._pos_margin = float(neg_margin), float(pos_margin)

    kind = "lifted"

    def host_params(self):
        return dict(neg_margin=self._neg_margin, pos_margin=self._pos_margin)

    def _loss(self, F, sim, pos, neg):
        from ..ops.distance import safe_sqrt

        dist = safe_sqrt(F, F.relu(2 - 2 * sim))  # ||a - b|| = sqrt(2 - 2 a.b) for unit vectors
        pos_term = masked_logsumexp(F, dist - self._pos_margin, pos)
        neg_term = masked_logsumexp(F, self._neg_margin - dist, neg)
        return F.mean(F.relu(pos_term + neg_term))


def first_two_of_each_class(F, labels, square):
    """(anchor, positive) B x 1 masks: the first and the second image of each class in batch
    order (PML's ``convert_to_pos_pairs_with_unique_labels``: one positive pair per label)."""
    same = same_label_mask(F, labels, square)
    n = F.contrib.arange_like(square, axis=0)
    earlier = F.broadcast_lesser(n.reshape((1, -1)), n.reshape((-1, 1)))  # [i, j] = j < i
    rank = F.sum(same * earlier, axis=1, keepdims=True)  # earlier images of i's class
    count = F.sum(same, axis=1, keepdims=True)
    return (rank == 0) * (count > 1), rank == 1


@batch_loss_io
class NPairsLoss(_SimilarityLoss):
    r"""N-pair loss (Sohn, NeurIPS 2016), as PML 2.9's ``NPairsLoss``: one (anchor, positive)
    pair per class of the batch, the first two images of the class; each anchor is classified
    among all the positives by cosine similarity,

    .. math:: L = \frac{1}{N} \sum_{k} -\log \frac{e^{s(a_k, p_k)}}{\sum_{l} e^{s(a_k, p_l)}}

    over the N classes with at least two images (0 when there are none).
    """

    kind = "npairs"

    def host_params(self):
        return {}

    def _loss(self, F, sim, pos, neg):
        raise NotImplementedError  # (hybrid_forward below picks the pairs itself)

    def _forward(self, F, embeddings, labels, indices):
        sim = cosine_similarity(F, embeddings)
        anchors, positives = first_two_of_each_class(F, labels, sim)
        same = same_label_mask(F, labels, sim)
        columns = F.broadcast_mul(F.ones_like(sim), positives.reshape((1, -1)))  # j a positive
        target = F.sum(sim * same * columns, axis=1, keepdims=True)  # s(a_k, p_k)
        per_anchor = (masked_logsumexp(F, sim, columns) - target) * anchors
        loss = F.sum(per_anchor) / F.maximum(F.sum(anchors), 1)
        loss = propagate_non_finite(F, loss.reshape((1,)), embeddings, labels)
        if self.return_stat:
            pos, neg = positive_mask(F, labels, sim), negative_mask(F, labels, sim)
            return loss, propagate_non_finite(F, similarity_gap(F, sim, pos, neg), embeddings)
        return loss

    scores_references = False  # one (anchor, positive) pair per class of the batch itself

    def __call__(self, embeddings, labels, indices=None, ref_emb=None, ref_labels=None):
        if indices is not None or ref_emb is not None:
            raise ValueError("NPairsLoss picks its own pairs (one per class of the batch); it "
                             "takes no indices and no reference embeddings")
        return super().__call__(embeddings, labels)
