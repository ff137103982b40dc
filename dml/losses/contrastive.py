"""Contrastive losses: on given pairs (siamese) and on every pair of a batch (online)."""
import numpy as np

from ..ops import mining
from .base import BaseLoss, GivenOrMined, MinedTuples, batch_loss_io
from ..ops.distance import pair_distance
from ..ops.references import contrastive_reference_loss, host_array, recorded

PAIR_SELECTORS = mining.PAIR_SELECTORS


class ContrastiveLoss(GivenOrMined, BaseLoss):
    r"""Contrastive loss (Hadsell, Chopra and LeCun 2006) on pairs of embeddings:

    .. math:: L = \frac{1}{2B} \sum_i \left[ y_i d_i^2 + (1 - y_i) \max(m - d_i, 0)^2 \right]

    with d_i = d(x1_i, x2_i) and y_i = 1 when the pair is of one class, 0 otherwise. Called as
    ``loss(x1, x2, y)``; returns the batch loss as a 1-element array, and with
    ``return_stat=True`` also the fraction of pairs with non-zero loss.

    Inputs:
        - **x1**, **x2**: (B, D) embeddings of B pairs.
        - **y**: (B,) 1 for a pair of one class, 0 otherwise.

    Outputs:
        - **loss**: (1,), the batch mean (train with ``trainer.step(1)``, not the batch size);
          NaN, with a NaN gradient, when an embedding holds a NaN or an infinity.
        - **fraction** (with ``return_stat=True``): (1,), no gradient.

    Called as ``loss(embeddings, labels, indices=miner(embeddings, labels))`` it scores a
    miner's pairs ``(a1, p, a2, n)`` (or a triplet miner's triplets as pairs) with the same terms
    and mean (:class:`dml.losses.base.MinedTuples`), as every pair loss does.
    """

    takes = "pairs"

    def hybrid_forward(self, F, x1, x2, y):
        d = pair_distance(F, x1, x2, self._distance)
        y = y.reshape((-1,))
        per_pair = 0.5 * (y * F.square(d) + (1 - y) * F.square(F.relu(self._margin - d)))
        return self._result(F.mean(per_pair, axis=0, keepdims=True),
                            F.mean(per_pair > 0, axis=0, keepdims=True), F, (x1, x2))


@batch_loss_io
class OnlineContrastiveLoss(MinedTuples, BaseLoss):
    r"""Contrastive loss over pairs selected within a batch (adambielski/siamese-triplet), with
    the same halved Hadsell terms as :class:`ContrastiveLoss`:

    .. math:: L = \frac{1}{2(|P| + |N|)} \left[ \sum_{(a,b) \in P} d(a,b)^2
              + \sum_{(a,b) \in N} \max(m - d(a,b), 0)^2 \right]

    ``pair_selector``: ``all_positive`` takes every positive pair P and every negative pair N of
    the batch (a < b); ``hard_negative`` takes every positive pair and the |P| closest negative
    pairs. A batch without both a positive and a negative pair gives zero loss (and a logged
    warning). Called as ``loss(embeddings, labels)``; the active fraction is the fraction of the
    selected pairs with non-zero loss. ``loss(embeddings, labels, indices=(a1, p, a2, n))``
    scores a miner's pairs with the same terms and reduction (:class:`dml.losses.base.MinedTuples`).

    """

    takes = "pairs"  # a miner's pairs (indices=), or a triplet miner's as pairs

    def __init__(self, margin=1.0, pair_selector="all_positive", distance="euclidean",
                 return_stat=False, return_active_fraction=None, **kwargs):
        super().__init__(margin, distance, return_stat, return_active_fraction, **kwargs)
        self._init_mined()
        if pair_selector not in PAIR_SELECTORS:
            raise ValueError("pair_selector must be one of %s, not %r"
                             % ("|".join(PAIR_SELECTORS), pair_selector))
        self._selector = pair_selector

    scores_references = True  # score_references below: CrossBatchMemory can wrap it

    def hybrid_forward(self, F, embeddings, labels):
        return self._result(*self._host(F, embeddings, labels, self._selector))

    def score_references(self, embeddings, labels, ref_emb, ref_labels, indices=None, own=None,
                         miner=None):
        """The loss of ``embeddings`` (A x D anchors, with gradient) against fixed reference
        embeddings ``ref_emb`` (M x D) and ``ref_labels``, PML's ``loss(embeddings, labels,
        indices_tuple, ref_emb, ref_labels)``: every anchor x reference pair of one label and
        of two labels (this loss's selector keeps the negatives), or ``indices``, a pair
        miner's ``(a1, p, a2, n)`` of anchor rows and reference rows, or the pairs ``miner``
        mines (called as ``miner(embeddings, labels, ref_emb, ref_labels)``); never anchor i's
        own copy ``own[i]`` (a memory holds the anchors too). The same terms, reduction and
        distance as in a batch (:func:`dml.ops.references.contrastive_reference_loss`);
        returns what the loss returns."""
        x = host_array(embeddings)
        y = host_array(labels, np.float64).reshape(-1)
        refs, ref_y = host_array(ref_emb), host_array(ref_labels, np.float64).reshape(-1)
        if miner is not None and indices is None:
            indices = miner(x, y, refs, ref_y)
        warnings = mining.no_tuple_warnings(self._warn_key)

        def score(z, need_grad):
            return contrastive_reference_loss(
                z, y, refs, ref_y, own, self._margin, self._distance, self._selector, indices,
                need_grad, on_no_pairs=lambda: warnings.warn(
                    y, "positive and negative pair with the references"))
        return recorded(embeddings, score, self.return_stat)
