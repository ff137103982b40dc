r"""Scoring a batch against reference embeddings (PML's ``loss(embeddings, labels, indices_tuple,
ref_emb, ref_labels)``): the pairs of anchors x references (:func:`reference_masks`), the online
contrastive loss over them on the host (:func:`contrastive_reference_loss`) and
:class:`HostScore`, the recorded function that carries a host loss's gradient back to the
anchors. The losses' ``score_references`` build on it, and :class:`dml.losses.memory.CrossBatchMemory`
calls those (its references are the memory)."""
import mxnet as mx
import numpy as np

from ..distances import get_distance, unit_rows
from .mining import closest_pairs


def reference_masks(labels, ref_labels, own=None, indices=None):
    """``(positive, negative)`` boolean A x M masks of anchors x references: same label, another
    label, or a pair miner's ``(a1, p, a2, n)`` (anchor rows, reference rows); never anchor i's
    own copy ``own[i]`` (-1 or None: none)."""
    labels, ref_labels = np.asarray(labels).reshape(-1), np.asarray(ref_labels).reshape(-1)
    if indices is None:
        positive = labels[:, None] == ref_labels[None, :]
        negative = ~positive
    else:
        a1, p, a2, n = (np.asarray(i, dtype=np.int64).reshape(-1) for i in indices)
        positive = np.zeros((len(labels), len(ref_labels)), dtype=bool)
        negative = np.zeros_like(positive)
        positive[a1, p] = True
        negative[a2, n] = True
    if own is not None:
        own = np.asarray(own, dtype=np.int64).reshape(-1)
        mine = own >= 0
        positive[np.flatnonzero(mine), own[mine]] = False
    return positive, negative


def contrastive_reference_loss(x, labels, refs, ref_labels, own=None, margin=1.0,
                               distance="euclidean", selector="all_positive", indices=None,
                               need_grad=False, on_no_pairs=None):
    r"""The online contrastive loss of anchors ``x`` (A x D) against fixed references ``refs`` (M x
    D, e.g. a memory, which holds the anchors too: ``own[i]`` is anchor i's row, never one of
    its pairs; None: no anchor is a reference): ``(loss, fraction, grad)``, the gradient (with
    ``need_grad``) reaching the anchors only; ``(0, 0, zeros)`` when there is no positive or no
    negative pair (and ``on_no_pairs()`` is called).

    .. math:: L = \frac{1}{2(|P| + |N|)} \Big[ \sum_{(i,j) \in P} d(x_i, r_j)^2
              + \sum_{(i,j) \in N} \max(m - d(x_i, r_j), 0)^2 \Big]

    P: every (anchor, reference) of one label (``own`` left out); N: ``all_positive`` every pair
    of two labels, ``hard_negative`` the |P| closest of them (all if fewer). ``indices``: a pair
    miner's ``(a1, p, a2, n)`` (anchor rows, reference rows) instead. The distance has
    :mod:`dml.ops.distance`'s definitions (euclidean with its zero-safe square root, squared,
    cosine ``relu(1 - cos)``); one A x M product, a few passes over A x M, a second product for
    the gradient. With references equal to a batch, the loss and fraction are the in-batch
    loss's (every unordered pair counted twice, as (i, j) and (j, i)); the gradient is half of
    it, reaching anchors only.
    """
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        nan = float("nan")
        return nan, nan, (np.full_like(x, nan) if need_grad else None)
    refs = np.ascontiguousarray(refs, dtype=x.dtype)
    labels, ref_labels = np.asarray(labels).reshape(-1), np.asarray(ref_labels).reshape(-1)
    if get_distance(distance).normalizes:
        (unit, norms), ref_unit = unit_rows(x, return_norms=True), unit_rows(refs)
        gap = 1 - unit @ ref_unit.T
        d = np.maximum(gap, 0)
    else:
        d = get_distance(distance).matrix(x, refs)
    positive, negative = reference_masks(labels, ref_labels, own, indices)
    if indices is None:
        if selector == "hard_negative":
            negative = closest_pairs(negative, d, int(positive.sum()))
        elif selector != "all_positive":
            raise ValueError("selector must be all_positive or hard_negative, not %r"
                             % (selector,))
    num_pos, num_neg = int(positive.sum()), int(negative.sum())
    if num_pos == 0 or num_neg == 0:
        if on_no_pairs is not None:
            on_no_pairs()
        return 0.0, 0.0, (np.zeros_like(x) if need_grad else None)
    num = num_pos + num_neg
    hinge = np.maximum(margin - d, 0)
    d_pos, hinge_neg = d[positive].astype(np.float64), hinge[negative].astype(np.float64)
    loss = 0.5 * (np.square(d_pos).sum() + np.square(hinge_neg).sum()) / num
    fraction = (np.count_nonzero(d_pos) + np.count_nonzero(hinge_neg)) / num
    grad = None
    if need_grad:
        slope = (positive * d - negative * hinge) / x.dtype.type(num)  # dL / dd
        if distance == "cosine":  # d = 1 - u.r where positive: dd/du = -r
            slope *= gap > 0
            d_unit = -(slope @ ref_unit)
            grad = (d_unit - unit * np.einsum("ij,ij->i", unit, d_unit)[:, None]) / norms[:, None]
        else:  # squared: dd/dx = 2 (x - r); euclidean: (x - r) / d, 0 where d == 0
            if distance == "squared":
                weight = 2 * slope
            else:
                weight = np.divide(slope, d, out=np.zeros_like(slope), where=d > 0)
            grad = x * weight.sum(1)[:, None] - weight @ refs
    return float(loss), float(fraction), grad


class HostScore(mx.autograd.Function):
    """The loss of a batch against fixed references as one recorded function: forward on the
    host (``score(x, need_grad=True)`` -> ``(loss, stat, grad)``:
    :func:`dml.ops.simop.memory_loss` or :func:`contrastive_reference_loss`), backward the
    gradient it computed, times the incoming one. Called as ``HostScore(score)(embeddings)`` ->
    ``(loss, stat)``, float64 arrays of shape (1,)."""

    def __init__(self, score):
        super().__init__()
        self._score = score
        self._grad = None

    def forward(self, embeddings):
        value, stat, self._grad = self._score(embeddings.asnumpy(), need_grad=True)
        ctx = embeddings.context
        return (mx.nd.array([value], ctx=ctx, dtype="float64"),
                mx.nd.array([stat], ctx=ctx, dtype="float64"))

    def backward(self, loss_grad, stat_grad):
        scale = loss_grad.asnumpy().reshape(-1)[0]
        return mx.nd.array(self._grad * scale, ctx=loss_grad.context, dtype=self._grad.dtype)


def host_array(a, dtype=None):
    """An NDArray or array-like as a numpy array (of ``dtype`` when given)."""
    a = a.asnumpy() if hasattr(a, "asnumpy") else np.asarray(a)
    return a if dtype is None else a.astype(dtype)


def recorded(embeddings, score, return_stat):
    """``score`` (a host loss of the anchors, see :class:`HostScore`) as the loss's output:
    ``loss`` (with gradient to ``embeddings``) and, with ``return_stat``, its statistic (no
    gradient), both of the embeddings' dtype."""
    loss, stat = HostScore(score)(embeddings)
    loss = loss.astype(embeddings.dtype)
    if not return_stat:
        return loss
    return loss, mx.nd.BlockGrad(stat.astype(embeddings.dtype))

