"""Triplet losses over a batch of embeddings and their labels (online mining)."""
from .base import BaseLoss, GivenOrMined, MinedTuples, batch_loss_io
from ..ops.distance import pair_distance


class _MinedTripletLoss(MinedTuples, BaseLoss):
    """A fused triplet loss that also scores a miner's triplets (``indices=``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._init_mined()


@batch_loss_io
class TripletSemiHardLoss(_MinedTripletLoss):
    r"""Semi-hard triplet loss (FaceNet; TensorFlow's ``triplet_semihard_loss``).

    For every ordered positive pair (a, p) of the batch, the negative is the closest n with
    d(a, n) > d(a, p) (semi-hard), or the farthest negative of a when none is farther:

    .. math:: L = \frac{1}{|P|} \sum_{(a, p) \in P} \max(d(a, p) - d(a, n^*(a, p)) + m, 0)

    where P holds the positive pairs whose anchor has a negative: anchors with no negative
    contribute nothing, and a batch of one class gives zero loss and zero gradient.
    Computed on the host (``batch.batch_loss``, kind ``semihard_tf``): per anchor one pass over
    its negatives with a binary search among its positives (``kernels.semihard_tf``),
    O(B^2 log P), no B x B x B tensor; the gradient flows through the chosen d(a, p), d(a, n*).

    Called as ``loss(embeddings, labels)`` it returns the batch loss as a 1-element array; with
    ``return_stat=True`` it returns ``(loss, active_fraction)``, the fraction of P with
    non-zero loss.

    """

    def hybrid_forward(self, F, embeddings, labels):
        return self._result(*self._host(F, embeddings, labels, "semihard_tf"))


class TripletMarginLoss(GivenOrMined, BaseLoss):
    r"""Triplet loss on given (anchor, positive, negative) embeddings (Schroff et al. 2015):

    .. math:: L = \frac{1}{B} \sum_i \max(d(a_i, p_i) - d(a_i, n_i) + m, 0)

    Called as ``loss(anchor, positive, negative)`` (three B x D arrays), it returns the batch loss
    as a 1-element array, plus with ``return_stat=True`` the fraction of triplets with
    non-zero loss.

    Inputs:
        - **anchor**, **positive**, **negative**: (B, D) embeddings of B triplets.

    Outputs:
        - **loss**: (1,), the batch mean (train with ``trainer.step(1)``, not the batch size);
          NaN, with a NaN gradient, when an embedding holds a NaN or an infinity. Unlike
          ``mxnet.gluon.loss.TripletLoss`` (per-sample squared distances), it takes ``distance``
          and returns the mean.
        - **fraction** (with ``return_stat=True``): (1,), no gradient.

    Called as ``loss(embeddings, labels, indices=miner(embeddings, labels))`` it scores a
    miner's triplets ``(a, p, n)`` (or a pair miner's pairs as triplets) with the same terms and
    mean (:class:`dml.losses.base.MinedTuples`), as every triplet loss does.
    """

    def hybrid_forward(self, F, anchor, positive, negative):
        per_triplet = F.relu(pair_distance(F, anchor, positive, self._distance)
                             - pair_distance(F, anchor, negative, self._distance) + self._margin)
        loss = F.mean(per_triplet, axis=0, keepdims=True)
        return self._result(loss, F.mean(per_triplet > 0, axis=0, keepdims=True),
                            F, (anchor, positive, negative))


@batch_loss_io
class TripletBatchHardLoss(_MinedTripletLoss):
    r"""Batch-hard triplet loss (Hermans et al. 2017): per anchor the farthest positive and the
    closest negative of the batch,

    .. math:: L = \frac{1}{|A|} \sum_{a \in A} \max(\max_{p} d(a, p) - \min_{n} d(a, n) + m, 0)

    over the anchors A that have a positive and a negative. Mining (``kernels.batch_hard``, one
    pass over the distances) picks indices; the gradient flows through the two chosen distances
    per anchor. The active fraction is the fraction of A with non-zero loss.

    """

    def hybrid_forward(self, F, embeddings, labels):
        return self._result(*self._host(F, embeddings, labels, "batch_hard"))


@batch_loss_io
class TripletBatchAllLoss(_MinedTripletLoss):
    r"""Batch-all triplet loss (Hermans et al. 2017): every valid triplet (a, p, n) of the batch
    (a != p of one class, n of another), averaged over the triplets with positive loss:

    .. math:: L = \frac{\sum_{(a,p,n)} \max(d(a,p) - d(a,n) + m, 0)}{\#\{(a,p,n) : d(a,p) - d(a,n) + m > 0\}}

    The active fraction is the fraction of valid triplets with positive loss (it falls as the
    embedding learns, the number to watch for this loss). For a fixed (a, p) the sum over the
    negatives depends only on how many lie below d(a,p) + m and their sum, so each anchor's
    negatives are bucketed by binary search among its sorted d(a,p) + m and prefix sums give every
    pair's sum and count, and the gradient the same way (``kernels.triplet_sums``):
    O(B^2 log P), no B x B x B tensor.

    """

    def hybrid_forward(self, F, embeddings, labels):
        return self._result(*self._host(F, embeddings, labels, "batch_all"))


from ..registry import ONLINE_TRIPLET_SELECTORS  # noqa: E402


@batch_loss_io
class OnlineTripletLoss(_MinedTripletLoss):
    r"""Online triplet loss with a triplet selector, as adambielski/siamese-triplet: for each
    positive pair a < p of the batch,

    - ``all``: every negative of a; the loss is the mean over all these triplets (zero-loss ones
      included);
    - ``hardest``: the closest negative of a, if its loss d(a,p) - d(a,n) + m is positive;
    - ``random_hard``: a random negative with positive loss;
    - ``semihard``: a random negative with 0 < loss < m, i.e. d(a,p) < d(a,n) < d(a,p) + m;

    and for the last three the mean over the selected triplets T:

    .. math:: L = \frac{1}{|T|} \sum_{(a,p,n) \in T} \max(d(a,p) - d(a,n) + m, 0)

    A batch where no triplet qualifies gives zero loss. The active fraction is the fraction of the
    positive pairs that got a triplet (for ``all``: of all triplets, those with positive loss).

    """

    def __init__(self, margin=1.0, selector="random_hard", distance="euclidean",
                 return_stat=False, return_active_fraction=None, **kwargs):
        super().__init__(margin, distance, return_stat, return_active_fraction, **kwargs)
        if selector not in ONLINE_TRIPLET_SELECTORS:
            raise ValueError("selector must be one of %s, not %r"
                             % ("|".join(ONLINE_TRIPLET_SELECTORS), selector))
        self._selector = selector

    def hybrid_forward(self, F, embeddings, labels):
        return self._result(*self._host(F, embeddings, labels, self._selector))
