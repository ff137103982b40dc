"""Mining: masks and index selections over a distance matrix, shared by every online loss.

Mining chooses tuples and needs no gradient, so it runs on the host in numpy (whose sorts are an
order of magnitude faster than MXNet's CPU kernels in this build) and hands back *indices* or
masks; the losses then gather the differentiable distances they need with ``F.take``. Each
selection is a plain numpy function and, for the losses, an MXNet custom operator
(``F.Custom(dist, labels, op_type='dml_...')``) so a loss stays hybridizable and runs on any
context: an operator copies the distance matrix to the host and its outputs back to the distance
matrix's context. Nothing here loops over the batch in Python or builds a B x B x B array.

Pairs are *ordered* (every a != p of a class) for the FaceNet/TensorFlow-style losses and
*unordered* (a < p, the anchor the lower index) for the adambielski/siamese-triplet selectors.
"""
import logging

import mxnet as mx
import numpy as np

log = logging.getLogger("dml.losses")

NEGATIVE_SELECTORS = ("semihard_tf", "hardest", "random_hard", "semihard")
PAIR_SELECTORS = ("all_positive", "hard_negative")


def anchor_positive_mask(labels, unordered=False):
    """[a, p] is True when a != p (a < p if ``unordered``) and labels[a] == labels[p]."""
    labels = np.asarray(labels).reshape(-1)
    same = labels[:, None] == labels[None, :]
    return np.triu(same, 1) if unordered else same & ~np.eye(len(labels), dtype=bool)


def candidate_pairs(labels, unordered=False):
    """Positive pairs whose anchor has a negative: those that can form a triplet."""
    negative = anchor_negative_mask(labels)
    return anchor_positive_mask(labels, unordered) & negative.any(axis=1)[:, None]


def anchor_negative_mask(labels):
    """[a, n] is True when labels[a] != labels[n]."""
    labels = np.asarray(labels).reshape(-1)
    return labels[:, None] != labels[None, :]


def count_below(values, queries, inclusive, return_order=False):
    """Row-wise counts: ``out[r, q] = #{k : values[r, k] < queries[r, q]}`` (``<=`` when
    ``inclusive``), for B x K ``values`` and B x Q ``queries``; +inf values never count.

    One stable argsort of the B x (K + Q) concatenation: on ties the stable sort keeps whichever
    half comes first in front, so values go first for ``<=`` and queries first for ``<``. The
    count for a query is its sorted position minus the queries before it. With ``return_order``
    also returns each row's value columns in ascending order (B x K).
    """
    values = np.asarray(values)
    queries = np.asarray(queries)
    batch, k = values.shape
    q = queries.shape[1]
    if inclusive:
        perm = np.argsort(np.concatenate([values, queries], axis=1), axis=1, kind="stable")
        is_query = perm >= k
        query_col, value_col = perm - k, perm
    else:
        perm = np.argsort(np.concatenate([queries, values], axis=1), axis=1, kind="stable")
        is_query = perm < q
        query_col, value_col = perm, perm - q
    queries_before = np.cumsum(is_query, axis=1) - is_query
    values_before = np.arange(k + q)[None, :] - queries_before
    rows, positions = np.nonzero(is_query)
    counts = np.empty((batch, q), dtype=np.int64)
    counts[rows, query_col[rows, positions]] = values_before[rows, positions]
    if return_order:
        return counts, value_col[~is_query].reshape(batch, k)
    return counts


def _sorted_negatives(dist, negative):
    """Each anchor's negative distances with non-negatives pushed to +inf."""
    return np.where(negative, dist, np.inf)


def semihard_negatives(dist, labels):
    """FaceNet / TensorFlow semi-hard negative for every ordered positive pair.

    For each anchor a and positive p, the chosen negative n is the closest negative with
    d(a, n) > d(a, p); when no negative is farther than the positive, the farthest negative of a.

    Returns ``(negative, valid)``, both B x B: ``negative[a, p]`` the column of the chosen negative,
    ``valid[a, p]`` True for positive pairs whose anchor has at least one negative.
    """
    return select_negatives(dist, labels, "semihard_tf")


def select_negatives(dist, labels, selector, margin=1.0, rng=None):
    """One negative per positive pair, by ``selector``:

    - ``semihard_tf`` (ordered pairs): see :func:`semihard_negatives`;
    - ``hardest`` (a < p): the closest negative of a, kept when d(a,p) - d(a,n) + m > 0;
    - ``random_hard`` (a < p): a uniformly random negative with d(a,p) - d(a,n) + m > 0;
    - ``semihard`` (a < p): a uniformly random negative with 0 < d(a,p) - d(a,n) + m < m,
      i.e. d(a,p) < d(a,n) < d(a,p) + m (adambielski/siamese-triplet's semi-hard selector).

    Returns ``(negative, valid)`` as :func:`semihard_negatives`; pairs with no allowed negative are
    not valid.
    """
    dist = np.asarray(dist, dtype=np.float64)
    rng = np.random if rng is None else rng
    negative = anchor_negative_mask(labels)
    num_negatives = negative.sum(axis=1)
    positive = candidate_pairs(labels, unordered=selector != "semihard_tf")
    neg_dist = _sorted_negatives(dist, negative)
    if selector == "hardest":
        closest = np.argmin(neg_dist, axis=1)
        chosen = np.broadcast_to(closest[:, None], dist.shape).copy()
        valid = positive & (dist - neg_dist[np.arange(len(dist)), closest][:, None] + margin > 0)
        return chosen, valid
    if selector == "semihard_tf":
        not_farther, order = count_below(neg_dist, dist, inclusive=True, return_order=True)
        farthest = np.maximum(num_negatives - 1, 0)[:, None]
        rank = np.where(not_farther < num_negatives[:, None], not_farther, farthest)
        return np.take_along_axis(order, rank, axis=1), positive
    if selector not in ("random_hard", "semihard"):
        raise ValueError("selector must be one of %s, not %r" % (", ".join(NEGATIVE_SELECTORS), selector))
    # sorted positions [low, high) hold the allowed negatives of each (a, p)
    high, order = count_below(neg_dist, dist + margin, inclusive=False, return_order=True)
    low = count_below(neg_dist, dist, inclusive=True) if selector == "semihard" else np.zeros_like(high)
    valid = positive & (high > low)
    rank = low + np.floor(rng.random_sample(dist.shape) * np.maximum(high - low, 1)).astype(np.int64)
    rank = np.minimum(rank, dist.shape[1] - 1)
    return np.take_along_axis(order, rank, axis=1), valid


def batch_hard(dist, labels):
    """Per anchor: the farthest positive and the closest negative (batch-hard mining).
    Returns ``(positive, negative, valid)``, each of length B; ``valid`` marks anchors with both."""
    dist = np.asarray(dist)
    positive = anchor_positive_mask(labels)
    negative = anchor_negative_mask(labels)
    hardest_positive = np.argmax(np.where(positive, dist, -np.inf), axis=1)
    hardest_negative = np.argmin(np.where(negative, dist, np.inf), axis=1)
    return hardest_positive, hardest_negative, positive.any(axis=1) & negative.any(axis=1)


def _triplet_counts(dist, labels, margin, unordered):
    """What :func:`triplet_sums` and its gradient share: the masks, each anchor's sorted negative
    distances, reach = d(a,p) + m, and active (counts of negatives below reach, for every a, p)."""
    negative = anchor_negative_mask(labels)
    positive = anchor_positive_mask(labels, unordered)
    neg_sorted = np.sort(_sorted_negatives(dist, negative), axis=1)
    reach = dist + margin
    return negative, positive, neg_sorted, reach, count_below(neg_sorted, reach, inclusive=False)


def triplet_sums(dist, labels, margin, unordered=False):
    """For every ordered positive pair (a, p) (only a < p if ``unordered``), over all negatives n
    of a:

    - ``sums[a, p]  = sum_n relu(d(a,p) - d(a,n) + m)``
    - ``active[a, p] = #{n : d(a,p) - d(a,n) + m > 0}``
    - ``total[a, p]  = #{n}``

    from each anchor's sorted negative distances and their prefix sums: the negatives with positive
    loss are those with d(a,n) < d(a,p) + m, and their sum is active * (d(a,p) + m) minus the
    prefix sum of that many. O(B^2 log B) time, O(B^2) memory.
    """
    dist = np.asarray(dist, dtype=np.float64)
    negative, positive, neg_sorted, reach, active = _triplet_counts(dist, labels, margin, unordered)
    prefix = np.concatenate([np.zeros((len(dist), 1)),
                             np.cumsum(np.where(np.isfinite(neg_sorted), neg_sorted, 0), axis=1)], axis=1)
    sums = active * reach - np.take_along_axis(prefix, active, axis=1)
    active = np.where(positive, active, 0)
    sums = np.where(positive, np.maximum(sums, 0.0), 0.0)
    total = np.where(positive, negative.sum(axis=1)[:, None], 0)
    return sums, active, total


def triplet_sums_grad(dist, labels, margin, grad_sums, unordered=False, active=None):
    """Gradient of ``sum(grad_sums * sums)`` with respect to ``dist`` (see :func:`triplet_sums`):
    d/d d(a,p) = g[a,p] * active[a,p]; d/d d(a,n) = -sum of g[a,p] over the positives p with
    d(a,p) + m > d(a,n), from each anchor's positives sorted by d(a,p) + m and suffix sums of g.
    ``active``: the forward pass's counts, if at hand (saves sorting the negatives again)."""
    dist = np.asarray(dist, dtype=np.float64)
    grad_sums = np.asarray(grad_sums, dtype=np.float64)
    if active is None:
        negative, positive, _, reach, active = _triplet_counts(dist, labels, margin, unordered)
    else:
        negative, positive = anchor_negative_mask(labels), anchor_positive_mask(labels, unordered)
        reach = dist + margin
    active = np.where(positive, active, 0)
    g = np.where(positive, grad_sums, 0.0)
    grad = g * active
    reach_pos = np.where(positive, reach, -np.inf)
    below, order = count_below(reach_pos, dist, inclusive=True, return_order=True)
    g_sorted = np.take_along_axis(g, order, axis=1)
    suffix = np.concatenate([np.cumsum(g_sorted[:, ::-1], axis=1)[:, ::-1],
                             np.zeros((len(dist), 1))], axis=1)
    grad -= np.where(negative, np.take_along_axis(suffix, below, axis=1), 0.0)
    return grad


def select_pairs(dist, labels, selector):
    """Pairs for the online contrastive loss, as B x B masks over a < b:

    - ``all_positive``: every positive pair and every negative pair;
    - ``hard_negative``: every positive pair and the closest negative pairs, as many as there are
      positive pairs (all negative pairs if there are fewer).
    Returns ``(positive_pairs, negative_pairs)``.
    """
    dist = np.asarray(dist)
    positive = anchor_positive_mask(labels, unordered=True)
    negative = np.triu(anchor_negative_mask(labels), 1)
    if selector == "all_positive":
        return positive, negative
    if selector != "hard_negative":
        raise ValueError("pair selector must be one of %s, not %r" % (", ".join(PAIR_SELECTORS), selector))
    keep = int(positive.sum())
    flat_neg = np.flatnonzero(negative)
    if keep < len(flat_neg):
        closest = flat_neg[np.argpartition(dist.reshape(-1)[flat_neg], keep)[:keep]] if keep else flat_neg[:0]
        negative = np.zeros_like(negative)
        negative.reshape(-1)[closest] = True
    return positive, negative


# ------------------------------------------------------------------------------------------------
# A batch that cannot form a single tuple (one class, or every sample its own class) gives a zero
# loss; it is logged, not raised, because it is a property of the data, not a bug.

_degenerate_batches = {"count": 0}


def reset_warnings():
    """Start counting degenerate batches afresh (the engine does at the start of every run)."""
    _degenerate_batches["count"] = 0


def has_triplets(labels):
    """True when some anchor has both a positive and a negative in ``labels``."""
    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    return len(classes) > 1 and bool((counts > 1).any())


def warn_no_tuples(labels, what="triplet"):
    """Log (the 1st, 10th, 100th, ... time) that a batch formed no tuple and so gave a zero loss."""
    labels = np.asarray(labels).reshape(-1)
    _degenerate_batches["count"] += 1
    count = _degenerate_batches["count"]
    if str(count).rstrip("0") == "1":  # the 1st, 10th, 100th, ...
        log.warning("a batch of %d samples from %d class(es) forms no %s: its loss is 0 and it "
                    "trains nothing (%d such batches so far); online losses need batches of >= 2 "
                    "classes with >= 2 samples of a class, e.g. --n-classes 2+ --n-samples 2+",
                    len(labels), len(np.unique(labels)), what, count)


# ------------------------------------------------------------------------------------------------
# The custom operators. Inputs are (distances B x B, labels B); nothing flows back to the labels.


class _MiningOp(mx.operator.CustomOp):
    """Base: ``select(dist, labels)`` (numpy) returns the outputs in order; each is copied to the
    distances' context in its output's dtype. No gradient flows to the inputs (the selections are
    piecewise constant)."""

    def forward(self, is_train, req, in_data, out_data, aux):
        outputs = self.select(in_data[0].asnumpy(), in_data[1].asnumpy())
        for i, value in enumerate(outputs):
            self.assign(out_data[i], req[i], mx.nd.array(value, ctx=in_data[0].context,
                                                         dtype=out_data[i].dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        for i, grad in enumerate(in_grad):
            self.assign(grad, req[i], mx.nd.zeros_like(grad))


def _warn_unless_triplets(labels):
    if not has_triplets(labels):
        warn_no_tuples(labels)


class _SelectNegatives(_MiningOp):
    def __init__(self, selector, margin):
        self.selector, self.margin = selector, margin

    def select(self, dist, labels):
        _warn_unless_triplets(labels)
        chosen, valid = select_negatives(dist, labels, self.selector, self.margin)
        flat = chosen + np.arange(len(dist))[:, None] * len(dist)
        return flat, valid, candidate_pairs(labels, unordered=self.selector != "semihard_tf")


class _BatchHard(_MiningOp):
    def select(self, dist, labels):
        _warn_unless_triplets(labels)
        pos, neg, valid = batch_hard(dist, labels)
        rows = np.arange(len(dist)) * len(dist)
        return rows + pos, rows + neg, valid


class _SelectPairs(_MiningOp):
    def __init__(self, selector):
        self.selector = selector

    def select(self, dist, labels):
        pos, neg = select_pairs(dist, labels, self.selector)
        if not (pos.any() and neg.any()):
            warn_no_tuples(labels, "positive and negative pairs")
            pos, neg = np.zeros_like(pos), np.zeros_like(neg)
        return pos, neg


class _TripletSums(_MiningOp):
    """Differentiable in its first output (``sums``) with respect to the distances."""

    def __init__(self, margin, unordered):
        self.margin, self.unordered = margin, unordered

    def select(self, dist, labels):
        _warn_unless_triplets(labels)
        return triplet_sums(dist, labels, self.margin, self.unordered)

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        # out_data[1] holds the forward's active counts: whole numbers, exact in float32
        grad = triplet_sums_grad(in_data[0].asnumpy(), in_data[1].asnumpy(), self.margin,
                                 out_grad[0].asnumpy(), self.unordered,
                                 active=out_data[1].asnumpy().astype(np.int64))
        self.assign(in_grad[0], req[0], mx.nd.array(grad, ctx=in_data[0].context,
                                                    dtype=in_grad[0].dtype))
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(in_grad[1]))


def _flag(value):
    return str(value).lower() in ("1", "true")


class _OpProp(mx.operator.CustomOpProp):
    outputs = ()
    int_outputs = ()
    differentiable = False

    def __init__(self, **params):
        super().__init__(need_top_grad=self.differentiable)
        self.params = params

    def list_arguments(self):
        return ["distances", "labels"]

    def list_outputs(self):
        return list(self.outputs)

    def infer_shape(self, in_shape):
        dist, labels = in_shape
        shapes = [labels if name.startswith("anchor_") else dist for name in self.outputs]
        return in_shape, shapes, []

    def infer_type(self, in_type):
        return in_type, [np.int32 if name in self.int_outputs else in_type[0]
                         for name in self.outputs], []

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return list(in_data) + (list(out_grad) + list(out_data) if self.differentiable else [])


@mx.operator.register("dml_select_negatives")
class _SelectNegativesProp(_OpProp):
    """Outputs (B x B): flat index a * B + n of the chosen negative for every (a, p) (int32), the
    mask of pairs that got one, and the mask of candidate pairs (see ``candidate_pairs``).
    Parameters: selector (see ``select_negatives``), margin."""

    outputs = ("negative_index", "valid", "candidates")
    int_outputs = ("negative_index",)

    def create_operator(self, ctx, shapes, dtypes):
        return _SelectNegatives(self.params.get("selector", "semihard_tf"),
                                float(self.params.get("margin", 1.0)))


@mx.operator.register("dml_batch_hard")
class _BatchHardProp(_OpProp):
    """Outputs, per anchor: flat index of its hardest positive, of its hardest negative (int32),
    and whether it has both."""

    outputs = ("anchor_positive_index", "anchor_negative_index", "anchor_valid")
    int_outputs = ("anchor_positive_index", "anchor_negative_index")

    def create_operator(self, ctx, shapes, dtypes):
        return _BatchHard()


@mx.operator.register("dml_select_pairs")
class _SelectPairsProp(_OpProp):
    """Outputs: masks of the selected positive and negative pairs (B x B). Parameter: selector."""

    outputs = ("positive_pairs", "negative_pairs")

    def create_operator(self, ctx, shapes, dtypes):
        return _SelectPairs(self.params.get("selector", "all_positive"))


@mx.operator.register("dml_triplet_sums")
class _TripletSumsProp(_OpProp):
    """Outputs (B x B): sums (differentiable), active and total counts (see ``triplet_sums``).
    Parameters: margin, unordered."""

    outputs = ("sums", "active", "total")
    differentiable = True

    def create_operator(self, ctx, shapes, dtypes):
        return _TripletSums(float(self.params.get("margin", 1.0)),
                            _flag(self.params.get("unordered", False)))
