"""What every dml loss shares: a margin > 0, a distance, and the optional second output."""
import itertools
import math

from mxnet import gluon

from ..ops.checks import check_distance, check_margin  # noqa: F401  (dml.losses.base's names)
from ..ops.indices import GraphOf, _as_arrays, pairs_to_triplets, triplets_to_pairs


def propagate_non_finite(F, value, *inputs):
    r"""``value`` unchanged, unless an input holds a NaN or an infinity: then NaN, and so is its
    gradient.

    .. math:: value \cdot (1 + \mathrm{stop\_grad}(\textstyle\sum_k \sum x_k \cdot 0))

    ``x * 0`` is 0 for every finite x and NaN for NaN and +-inf, so the factor is exactly 1 on
    finite inputs (the value and gradient are bit-identical) and NaN otherwise. Why: ``relu``,
    ``max`` and the host kernels' ``not d > 0`` turn a NaN distance into 0, and a diverged
    network would then report a finite loss (0.2 for NaN embeddings) and train on. One pass over
    the B x D inputs, none over B x B.
    """
    poison = None
    for x in inputs:
        term = F.sum(x * 0)
        poison = term if poison is None else poison + term
    return F.broadcast_mul(value, 1 + F.BlockGrad(poison))


_instances = itertools.count()

_BATCH_IO = """
    Inputs:
        - **embeddings**: (B, D) embeddings of the batch.
        - **labels**: (B,) their class labels.

    Outputs:
        - **loss**: (1,), the batch mean (train with ``trainer.step(1)``, not the batch size);
          NaN, with a NaN gradient, when an embedding holds a NaN or an infinity.
        - **fraction** (with ``return_stat=True``): (1,), no gradient.
"""


def batch_loss_io(cls):
    """Class decorator: the losses called as ``loss(embeddings, labels)`` end their docstring
    with the same Inputs/Outputs section (MXNet's form), written once here."""
    if "**embeddings**" not in (cls.__doc__ or ""):
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + _BATCH_IO
    return cls


class BaseLoss(gluon.loss.Loss):
    """Base of the dml losses: ``margin`` (> 0, else ``ValueError``), ``distance`` (a name,
    'euclidean'|'squared'|'cosine', or a :class:`dml.distances.Distance`) and ``return_stat``:
    when True a loss returns ``(loss, fraction)``, else the loss alone (``return_stat``, as every
    dml loss names it; ``return_active_fraction``, its older name, is still accepted)."""

    def __init__(self, margin=1.0, distance="euclidean", return_stat=False,
                 return_active_fraction=None, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self._margin = check_margin(margin)
        self._distance = check_distance(distance)
        self.return_stat = bool(return_stat if return_active_fraction is None
                                else return_active_fraction)
        self._warn_key = "%s-%d" % (type(self).__name__, next(_instances))

    def _host(self, F, embeddings, labels, kind):
        """``(loss, fraction)`` of ``kind`` through the fused host operator
        (:func:`dml.ops.batch.host_loss`), counting this instance's no-tuple warnings."""
        from ..ops.batch import host_loss

        return host_loss(F, embeddings, labels, kind, self._margin, self._distance,
                         self._warn_key)

    def _result(self, loss, fraction, F=None, inputs=()):
        """``loss`` (and ``fraction``), both NaN when ``inputs`` hold a NaN or an infinity (see
        :func:`propagate_non_finite`; the host operator does the same by itself)."""
        if inputs:
            loss = propagate_non_finite(F, loss, *inputs)
            fraction = propagate_non_finite(F, fraction, *inputs)
        return (loss, fraction) if self.return_stat else loss


def take_pairs(F, matrix, rows, cols):
    """``matrix[rows[k], cols[k]]`` of a square matrix for 1-D index arrays (K,), through
    ``take`` on the flattened matrix: O(K) memory, and the picks carry the gradient (an index
    of -1, an empty tuple's placeholder, picks an arbitrary entry: mask it)."""
    side = F.sum(F.ones_like(F.slice_axis(matrix, axis=1, begin=0, end=1)))  # B, as an array
    index = F.broadcast_add(F.broadcast_mul(rows.reshape((-1,)), side), cols.reshape((-1,)))
    return F.take(F.reshape(matrix, (-1,)), index, mode="clip")


class MinedTuples:
    """Mixin of the fused batch losses: ``loss(embeddings, labels, indices=miner(embeddings,
    labels))`` scores a miner's tuples (:mod:`dml.miners`) instead of the loss's own selection.
    Triplet losses take ``(a, p, n)`` (a pair miner's pairs become every positive pair with
    every negative pair of its anchor, PML's ``convert_to_triplets``) and score
    :meth:`_triplet_loss`; the contrastive loss takes ``(a1, p, a2, n)`` (a triplet miner's
    triplets become their pairs) and scores :meth:`_pair_loss`. Without ``indices`` the fused
    host operator runs, as fast as before."""

    takes = "triplets"

    def _init_mined(self):
        with self.name_scope():
            if self.takes == "triplets":
                self.mined = GraphOf(lambda F, x, y, a, p, n: self._triplet_loss(F, x, y, a, p, n))
            else:
                self.mined = GraphOf(lambda F, x, y, a1, p, a2, n: self._pair_loss(F, x, y, a1, p,
                                                                                   a2, n))

    def __call__(self, embeddings, labels, indices=None, ref_emb=None, ref_labels=None):
        if ref_emb is not None:
            if not getattr(self, "scores_references", False):
                raise ValueError("%s scores the tuples of a batch; reference embeddings "
                                 "(ref_emb) are for the pair losses" % type(self).__name__)
            return self.score_references(embeddings, labels, ref_emb, ref_labels, indices)
        if indices is None:
            return super().__call__(embeddings, labels)
        if len(indices) not in (3, 4):
            raise ValueError("indices must be a miner's triplets (a, p, n) or pairs (a1, p, a2, "
                             "n), not %d arrays" % len(indices))
        if self.takes == "triplets":
            tuples = _as_arrays(pairs_to_triplets(indices), embeddings, count=3)
        else:
            tuples = _as_arrays(triplets_to_pairs(indices), embeddings)
        return self.mined(embeddings, labels, *tuples)

    def _triplet_loss(self, F, x, y, a, p, n):
        r"""The mean over the given triplets of :math:`\max(d(a,p) - d(a,n) + m, 0)`; the
        fraction is the share of them with positive loss."""
        from ..ops.distance import pairwise_distance

        d = pairwise_distance(F, x, self._distance)
        valid = a >= 0
        per = F.relu(take_pairs(F, d, a, p) - take_pairs(F, d, a, n) + self._margin) * valid
        count = F.maximum(F.sum(valid), 1)
        return self._result((F.sum(per) / count).reshape((1,)),
                            F.BlockGrad(F.sum(per > 0) / count).reshape((1,)), F, (x, y))

    def _pair_loss(self, F, x, y, a1, p, a2, n):
        r"""Hadsell's halved terms over the given pairs, :math:`\frac{1}{2(|P| + |N|)}
        [\sum_P d^2 + \sum_N \max(m - d, 0)^2]`; the fraction is the share of non-zero
        terms."""
        from ..ops.distance import pairwise_distance

        d = pairwise_distance(F, x, self._distance)
        pos_valid, neg_valid = a1 >= 0, a2 >= 0
        pos = 0.5 * F.square(take_pairs(F, d, a1, p)) * pos_valid
        neg = 0.5 * F.square(F.relu(self._margin - take_pairs(F, d, a2, n))) * neg_valid
        count = F.maximum(F.sum(pos_valid) + F.sum(neg_valid), 1)
        active = F.sum((pos > 0) * pos_valid) + F.sum((neg > 0) * neg_valid)
        return self._result(((F.sum(pos) + F.sum(neg)) / count).reshape((1,)),
                            F.BlockGrad(active / count).reshape((1,)), F, (x, y))


class GivenOrMined(MinedTuples):
    """Mixin of the losses on given tuples (:class:`~dml.losses.ContrastiveLoss`'s pairs,
    :class:`~dml.losses.TripletMarginLoss`'s triplets): called with the tuples' embeddings they
    score those; called as ``loss(embeddings, labels, indices=miner(embeddings, labels))`` they
    score a miner's tuples as the fused losses do (:class:`MinedTuples`)."""

    def __init__(self, margin=1.0, distance="euclidean", return_stat=False,
                 return_active_fraction=None, **kwargs):
        super().__init__(margin, distance, return_stat, return_active_fraction, **kwargs)
        self._init_mined()

    def __call__(self, *args, indices=None, ref_emb=None, ref_labels=None):
        if indices is None and ref_emb is None:
            return BaseLoss.__call__(self, *args)  # the given tuples' embeddings
        return MinedTuples.__call__(self, *args, indices=indices, ref_emb=ref_emb,
                                    ref_labels=ref_labels)  # (embeddings, labels)
