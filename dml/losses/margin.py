r"""Margin loss (Wu et al., "Sampling Matters in Deep Embedding Learning", ICCV 2017), as
pytorch-metric-learning 2.9's ``MarginLoss``, to be paired with
:class:`dml.miners.DistanceWeightedMiner` (the paper's sampling).

On Euclidean distances d of L2-normalized embeddings, for each triplet (a, p, n):

.. math:: \ell = [d_{ap} - \beta + m]_+ + [\beta - d_{an} + m]_+, \qquad
          L = \frac{\sum \ell}{\#\{\text{terms} > 0\}}

(PML's ``DivisorReducer``: the sum over triplets divided by the number of positive pair terms and
negative pair terms that are > 0; 0 when none is). ``margin`` m = 0.2, ``beta`` = 1.2, learnable
with ``learn_beta=True`` (the paper; then ``beta`` is this block's parameter), ``nu`` = 0 weighs the
beta regularizer nu * beta / count. Without ``indices`` every triplet of the batch counts, computed
in B x B passes (each (a, p) term appears once per negative of a, each (a, n) term once per
positive of a) instead of a B x B x B tensor.
"""
import math

from mxnet import gluon

from .base import batch_loss_io, propagate_non_finite
from ..distances import NORM_EPS, safe_sqrt
from ..ops.indices import GraphOf, _as_arrays, pairs_to_triplets
from .similarity import negative_mask, positive_mask


def gather_pairs(F, matrix, rows, cols):
    """``matrix[rows[k], cols[k]]`` for 1-D index arrays (K,): one-hot products, so the picks
    stay in the graph and carry the gradient (an index of -1 picks 0)."""
    n = F.contrib.arange_like(matrix, axis=0)
    pick_rows = F.broadcast_equal(rows.reshape((-1, 1)), n.reshape((1, -1)))  # K x B
    pick_cols = F.broadcast_equal(cols.reshape((-1, 1)), n.reshape((1, -1)))
    return F.sum(F.dot(pick_rows, matrix) * pick_cols, axis=1)


@batch_loss_io
class MarginLoss(gluon.HybridBlock):
    """See the module docstring; ``loss(embeddings, labels, indices=(a, p, n))`` scores a miner's
    triplets (a pair miner's pairs become triplets: PML's ``convert_to_triplets``), ``return_stat`` adds the fraction of the pair terms that are > 0 ("active")."""

    def __init__(self, margin=0.2, beta=1.2, learn_beta=False, nu=0.0, return_stat=False,
                 **kwargs):
        super().__init__(**kwargs)
        if not (margin >= 0 and math.isfinite(margin)):
            raise ValueError("margin must be a finite number >= 0, not %r" % (margin,))
        if not math.isfinite(beta) or not (nu >= 0 and math.isfinite(nu)):
            raise ValueError("beta must be finite and nu finite and >= 0")
        self._margin, self._nu, self.return_stat = float(margin), float(nu), return_stat
        import mxnet as mx

        self._beta_value, self._learn_beta = float(beta), bool(learn_beta)
        with self.name_scope():
            if learn_beta:  # a parameter (initialize the loss, and train it with the network)
                self.beta = self.params.get("beta", shape=(1,), init=mx.init.Constant(self._beta_value))
            self.mined = GraphOf(lambda F, x, y, beta, a, p, n: self._forward(F, x, y, beta,
                                                                             (a, p, n)))

    def hybrid_forward(self, F, embeddings, labels, beta=None):
        """Every triplet of the batch, through the fused host operator
        (:mod:`dml.ops.simop`, kind ``margin``; a learnable beta is its third input and gets
        its gradient); a miner's triplets score with :meth:`_forward`, the same formula in MXNet
        operators."""
        from ..ops.simop import host_similarity

        loss, stat = host_similarity(F, embeddings, labels, "margin", dict(
            margin=self._margin, beta=self._beta_value, nu=self._nu), beta=beta)
        return (loss, stat) if self.return_stat else loss

    def all_triplets_in_operators(self, F, embeddings, labels, beta=None):
        """The same loss over every triplet in MXNet operators (B x B passes): the reference the
        tests hold the fused operator to."""
        if beta is None:  # fixed: a constant of the graph
            beta = F.ones_like(F.sum(embeddings, axis=(0, 1), keepdims=True).reshape((1,)))
            beta = F.BlockGrad(beta) * self._beta_value
        return self._forward(F, embeddings, labels, beta, None)

    def _beta_input(self, like):
        import mxnet as mx

        if self._learn_beta:
            return self.beta.data(like.context)
        return mx.nd.array([self._beta_value], ctx=like.context, dtype=like.dtype)

    def _distances(self, F, embeddings):
        unit = F.L2Normalization(embeddings, mode="instance", eps=NORM_EPS)
        gram = F.dot(unit, unit, transpose_b=True)
        return safe_sqrt(F, F.relu(2 - 2 * gram)), gram

    def _forward(self, F, embeddings, labels, beta, triplets):
        d, gram = self._distances(F, embeddings)
        m = self._margin
        if triplets is None:
            pos, neg = positive_mask(F, labels, gram), negative_mask(F, labels, gram)
            pos_terms = F.relu(F.broadcast_sub(d, beta) + m) * pos
            neg_terms = F.relu(F.broadcast_sub(beta, d) + m) * neg
            # each (a, p) term counts once per negative of a, each (a, n) once per positive of a
            per_neg = F.sum(neg, axis=1, keepdims=True)
            per_pos = F.sum(pos, axis=1, keepdims=True)
            bm = F.broadcast_mul
            total = F.sum(bm(pos_terms, per_neg)) + F.sum(bm(neg_terms, per_pos))
            active = F.sum(bm(pos_terms > 0, per_neg)) + F.sum(bm(neg_terms > 0, per_pos))
            triplet_count = F.sum(bm(pos, per_neg))
            count = 2 * triplet_count
        else:
            a, p, n = triplets
            d_ap, d_an = gather_pairs(F, d, a, p), gather_pairs(F, d, a, n)
            valid = F.broadcast_greater_equal(a, F.zeros_like(a))  # an empty tuple is one -1
            pos_terms = F.relu(F.broadcast_sub(d_ap, beta) + m) * valid
            neg_terms = F.relu(F.broadcast_sub(beta, d_an) + m) * valid
            total = F.sum(pos_terms) + F.sum(neg_terms)
            active = F.sum(pos_terms > 0) + F.sum(neg_terms > 0)
            count = 2 * F.sum(valid)
            triplet_count = F.sum(valid)
        loss = total / F.maximum(active, 1)
        if self._nu:
            loss = loss + self._nu * F.sum(beta) * (triplet_count > 0) / F.maximum(active, 1)
        loss = propagate_non_finite(F, loss.reshape((1,)), embeddings, labels)
        if self.return_stat:
            fraction = F.BlockGrad(active / F.maximum(count, 1)).reshape((1,))
            return loss, propagate_non_finite(F, fraction, embeddings)
        return loss

    def __call__(self, embeddings, labels, indices=None):
        if indices is None:
            return super().__call__(embeddings, labels)
        if len(indices) not in (3, 4):
            raise ValueError("indices must be the triplets (a, p, n) of a triplet miner or the "
                             "pairs (a1, p, a2, n) of a pair miner, not %d arrays" % len(indices))
        return self.mined(embeddings, labels, self._beta_input(embeddings),
                          *_as_arrays(pairs_to_triplets(indices), embeddings, count=3))

