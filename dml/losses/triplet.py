"""Triplet losses over a batch of embeddings and their labels (online mining)."""
from mxnet import gluon

from . import mining  # noqa: F401  (registers the mining custom operators)
from .distance import check_distance, pairwise_distance


def _check_margin(margin):
    if not margin > 0:
        raise ValueError("margin must be > 0, not %r" % (margin,))
    return float(margin)


class TripletSemiHardLoss(gluon.loss.Loss):
    r"""Semi-hard triplet loss (FaceNet; TensorFlow's ``triplet_semihard_loss``).

    For every ordered positive pair (a, p) of the batch, the negative is the closest n with
    d(a, n) > d(a, p) (semi-hard), or the farthest negative of a when none is farther:

    .. math:: L = \frac{1}{|P|} \sum_{(a, p) \in P} \max(d(a, p) - d(a, n^*(a, p)) + m, 0)

    where P holds the positive pairs whose anchor has a negative: anchors with no negative
    contribute nothing, and a batch of one class gives zero loss and zero gradient.
    Mining (``mining.semihard_negatives``) selects indices without gradient; the loss gathers the
    differentiable d(a, p), d(a, n*) from one B x B distance matrix (no B x B x B tensor).

    Called as ``loss(embeddings, labels)`` it returns the batch loss as a 1-element array; with
    ``return_active_fraction=True`` it returns ``(loss, active_fraction)``, the fraction of P with
    non-zero loss.
    """

    def __init__(self, margin=1.0, distance="euclidean", return_active_fraction=False, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self._margin = _check_margin(margin)
        self._distance = check_distance(distance)
        self._return_active_fraction = return_active_fraction

    def hybrid_forward(self, F, embeddings, labels):
        dist = pairwise_distance(F, embeddings, self._distance)
        negative_index, valid = F.Custom(
            F.BlockGrad(dist), F.BlockGrad(labels), op_type="dml_semihard_negatives"
        )
        d_an = F.take(dist.reshape((-1,)), negative_index)
        per_pair = F.relu(dist - d_an + self._margin) * valid
        num_pairs = F.maximum(F.sum(valid), 1)
        loss = F.sum(per_pair) / num_pairs
        if self._return_active_fraction:
            return loss, F.sum(per_pair > 0) / num_pairs
        return loss
