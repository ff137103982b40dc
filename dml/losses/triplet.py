"""Triplet losses over a batch of embeddings and their labels (online mining)."""
from . import mining  # noqa: F401  (registers the mining custom operators)
from .base import MarginLoss
from .distance import pair_distance, pairwise_distance


def _chosen_negative_terms(F, dist, labels, selector, margin):
    """relu(d(a,p) - d(a,n*) + m) for the negative n* that ``selector`` picks for each positive
    pair (0 where it picks none), the mask of pairs that got one, and the candidate pairs."""
    negative_index, valid, candidates = F.Custom(
        F.BlockGrad(dist), F.BlockGrad(labels), op_type="dml_select_negatives",
        selector=selector, margin=margin)
    d_an = F.take(dist.reshape((-1,)), negative_index)
    return F.relu(dist - d_an + margin) * valid, valid, candidates


def _all_triplet_sums(F, dist, labels, margin, unordered):
    """Over every triplet (a, p, n) (a < p if ``unordered``): the summed loss, the number with
    positive loss and the number of triplets (``mining.triplet_sums``)."""
    sums, active, total = F.Custom(dist, F.BlockGrad(labels), op_type="dml_triplet_sums",
                                   margin=margin, unordered=unordered)
    return F.sum(sums), F.sum(F.BlockGrad(active)), F.sum(F.BlockGrad(total))


class TripletSemiHardLoss(MarginLoss):
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

    def hybrid_forward(self, F, embeddings, labels):
        dist = pairwise_distance(F, embeddings, self._distance)
        per_pair, valid, _ = _chosen_negative_terms(F, dist, labels, "semihard_tf", self._margin)
        num_pairs = F.maximum(F.sum(valid), 1)
        return self._result(F.sum(per_pair) / num_pairs, F.sum(per_pair > 0) / num_pairs)


class TripletLoss(MarginLoss):
    r"""Triplet loss on given (anchor, positive, negative) embeddings (Schroff et al. 2015):

    .. math:: L = \frac{1}{B} \sum_i \max(d(a_i, p_i) - d(a_i, n_i) + m, 0)

    Called as ``loss(anchor, positive, negative)`` (three B x D arrays), it returns the batch loss
    as a 1-element array, plus with ``return_active_fraction=True`` the fraction of triplets with
    non-zero loss.
    """

    def hybrid_forward(self, F, anchor, positive, negative):
        per_triplet = F.relu(pair_distance(F, anchor, positive, self._distance)
                             - pair_distance(F, anchor, negative, self._distance) + self._margin)
        loss = F.mean(per_triplet, axis=0, keepdims=True)
        return self._result(loss, F.mean(per_triplet > 0, axis=0, keepdims=True))


class TripletBatchHardLoss(MarginLoss):
    r"""Batch-hard triplet loss (Hermans et al. 2017): per anchor the farthest positive and the
    closest negative of the batch,

    .. math:: L = \frac{1}{|A|} \sum_{a \in A} \max(\max_{p} d(a, p) - \min_{n} d(a, n) + m, 0)

    over the anchors A that have a positive and a negative. Mining (``mining.batch_hard``) picks
    indices; the loss gathers the two differentiable distances per anchor. The active fraction is
    the fraction of A with non-zero loss.
    """

    def hybrid_forward(self, F, embeddings, labels):
        dist = pairwise_distance(F, embeddings, self._distance)
        pos_index, neg_index, valid = F.Custom(F.BlockGrad(dist), F.BlockGrad(labels),
                                               op_type="dml_batch_hard")
        flat = dist.reshape((-1,))
        per_anchor = F.relu(F.take(flat, pos_index) - F.take(flat, neg_index) + self._margin) * valid
        num_anchors = F.maximum(F.sum(valid), 1)
        return self._result(F.sum(per_anchor) / num_anchors, F.sum(per_anchor > 0) / num_anchors)


class TripletBatchAllLoss(MarginLoss):
    r"""Batch-all triplet loss (Hermans et al. 2017): every valid triplet (a, p, n) of the batch
    (a != p of one class, n of another), averaged over the triplets with positive loss:

    .. math:: L = \frac{\sum_{(a,p,n)} \max(d(a,p) - d(a,n) + m, 0)}{\#\{(a,p,n) : d(a,p) - d(a,n) + m > 0\}}

    The active fraction is the fraction of valid triplets with positive loss (it falls as the
    embedding learns, the number to watch for this loss). Computed from each anchor's sorted
    negative distances and their prefix sums (``mining.triplet_sums``): O(B^2 log B), no
    B x B x B tensor.
    """

    def hybrid_forward(self, F, embeddings, labels):
        dist = pairwise_distance(F, embeddings, self._distance)
        loss_sum, active, total = _all_triplet_sums(F, dist, labels, self._margin, unordered=False)
        return self._result(loss_sum / F.maximum(active, 1), active / F.maximum(total, 1))


ONLINE_TRIPLET_SELECTORS = ("all", "hardest", "random_hard", "semihard")


class OnlineTripletLoss(MarginLoss):
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
                 return_active_fraction=False, **kwargs):
        super().__init__(margin, distance, return_active_fraction, **kwargs)
        if selector not in ONLINE_TRIPLET_SELECTORS:
            raise ValueError("selector must be one of %s, not %r"
                             % ("|".join(ONLINE_TRIPLET_SELECTORS), selector))
        self._selector = selector

    def hybrid_forward(self, F, embeddings, labels):
        dist = pairwise_distance(F, embeddings, self._distance)
        if self._selector == "all":
            loss_sum, active, total = _all_triplet_sums(F, dist, labels, self._margin, unordered=True)
            num = F.maximum(total, 1)
            return self._result(loss_sum / num, active / num)
        per_pair, valid, candidates = _chosen_negative_terms(F, dist, labels, self._selector,
                                                             self._margin)
        loss = F.sum(per_pair) / F.maximum(F.sum(valid), 1)
        return self._result(loss, F.sum(valid) / F.maximum(F.sum(candidates), 1))
