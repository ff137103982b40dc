"""Every online batch loss as one host-side operator: embeddings and labels in, (loss, fraction)
out, and the gradient with respect to the embeddings.

Why one fused operator: in this MXNet build each elementwise pass over a B x B array costs about
as much as the whole mining, and a distance matrix built from MXNet ops costs a dozen such passes
forward and as many backward. Here the B x D embeddings go to the host once; the distance matrix
is one BLAS product and one compiled pass (``kernels.distances``); mining and the loss read it in
O(B^2 log P) (``kernels``); and the gradient reaches the embeddings through the few pairs the loss
used (a sparse scatter, O(pairs x D)) or, for losses over every pair or triplet, one dense
B x B . B x D product. Peak memory is two B x B arrays; nothing is B x B x B.

:func:`batch_loss` is the plain numpy form; ``F.Custom(embeddings, labels,
op_type="dml_batch_loss", kind=..., margin=..., distance=...)`` is the operator, hybridizable and
on any context (it copies the embeddings to the host and the gradient back to their context).
The forward pass computes the gradient too when training (it shares all the work) and keeps it for
the backward pass, which only scales it by the incoming gradient.
"""
import atexit

import mxnet as mx
import numpy as np

from . import kernels, mining

class _NoTuples(Exception):
    """A batch that forms no tuple of the kind: zero loss, zero gradient, a counted warning."""

    def __init__(self, what):
        super().__init__(what)
        self.what = what


def _degenerate(codes, what="triplet"):
    raise _NoTuples(what)


def _pair_terms(dist, margin, anchors, positives, negatives, num_pairs, need_grad):
    """Loss and fraction from one chosen negative per pair (-1: none), normalised by
    ``num_pairs``; with ``need_grad`` the sparse gradient entries in the distances."""
    keep = negatives >= 0
    a, p, n = anchors[keep], positives[keep], negatives[keep]
    per_pair = np.maximum(dist[a, p] - dist[a, n] + margin, 0.0)
    num = max(num_pairs if num_pairs is not None else len(a), 1)
    loss = float(per_pair.sum(dtype=np.float64)) / num
    weights = None
    if need_grad:
        on = per_pair > 0
        scale = np.full(int(on.sum()), 1.0 / num)
        weights = (np.concatenate([a[on], a[on]]), np.concatenate([p[on], n[on]]),
                   np.concatenate([scale, -scale]))
    return loss, per_pair, weights


def _semihard_tf(dist, codes, margin, rng, need_grad):
    offsets = kernels.pair_offsets(codes)
    if offsets[-1] == 0:
        return _degenerate(codes)
    anchors, positives = kernels.positive_pairs(codes, offsets, False)
    negatives = kernels.semihard_tf(dist, codes, offsets)
    loss, per_pair, weights = _pair_terms(dist, margin, anchors, positives, negatives, None, need_grad)
    return loss, np.count_nonzero(per_pair) / len(per_pair), weights


def _batch_hard(dist, codes, margin, rng, need_grad):
    hardest_positive, hardest_negative = kernels.batch_hard(dist, codes)
    anchors = np.flatnonzero((hardest_positive >= 0) & (hardest_negative >= 0))
    if len(anchors) == 0:
        return _degenerate(codes)
    loss, per_anchor, weights = _pair_terms(dist, margin, anchors, hardest_positive[anchors],
                                            hardest_negative[anchors], None, need_grad)
    return loss, np.count_nonzero(per_anchor) / len(per_anchor), weights


def _all_triplets(unordered):
    """batch_all (ordered pairs; the mean over the triplets with positive loss) or, with
    ``unordered``, the selector ``all`` (pairs a < p; the mean over every triplet). Both report the
    fraction of triplets with positive loss and get a dense gradient (``kernels.triplet_sums``)."""
    def loss(dist, codes, margin, rng, need_grad):
        offsets = kernels.pair_offsets(codes, unordered)
        if offsets[-1] == 0:
            return _degenerate(codes)
        sums, active = kernels.triplet_sums(dist, codes, offsets, float(margin), unordered)
        anchors = np.repeat(np.arange(len(codes)), np.diff(offsets))
        total = int((len(codes) - np.bincount(codes)[codes])[anchors].sum())
        num_active = int(active.sum())
        num = max(total if unordered else num_active, 1)
        grad = None
        if need_grad:
            grad = np.zeros_like(dist)
            kernels.triplet_sums_grad(dist, codes, offsets, float(margin), unordered,
                                      np.full(len(sums), 1.0 / num), active, grad)
        return float(sums.sum()) / num, num_active / max(total, 1), grad
    return loss


def _selector(name):
    def loss(dist, codes, margin, rng, need_grad):
        offsets = kernels.pair_offsets(codes, unordered=True)
        if offsets[-1] == 0:
            return _degenerate(codes)
        anchors, positives = kernels.positive_pairs(codes, offsets, True)
        negatives = mining.choose_negatives(dist, codes, offsets, anchors, positives, name,
                                            margin, rng)
        num_valid = int(np.count_nonzero(negatives >= 0))
        value, _, weights = _pair_terms(dist, margin, anchors, positives, negatives, num_valid,
                                        need_grad)
        return value, num_valid / len(anchors), weights
    return loss


def _contrastive_all_positive(dist, codes, margin, rng, need_grad):
    sizes = np.bincount(codes)
    num_positive = int((sizes * (sizes - 1) // 2).sum())
    num_pairs = len(codes) * (len(codes) - 1) // 2
    if num_positive == 0 or num_positive == num_pairs:
        return _degenerate(codes, "positive and negative pairs")
    slopes = np.zeros_like(dist)
    sums, active = kernels.contrastive_all(dist, codes, float(margin), slopes)
    if need_grad:
        slopes /= num_pairs
    return float(sums.sum()) / num_pairs, int(active.sum()) / num_pairs, slopes if need_grad else None


def _contrastive_hard_negative(dist, codes, margin, rng, need_grad):
    positive, negative = mining.select_pairs(dist, codes, "hard_negative")
    if not (positive.any() and negative.any()):
        return _degenerate(codes, "positive and negative pairs")
    pos_r, pos_c = np.nonzero(positive)
    neg_r, neg_c = np.nonzero(negative)
    d_pos = dist[pos_r, pos_c].astype(np.float64)
    hinge = np.maximum(margin - dist[neg_r, neg_c].astype(np.float64), 0.0)
    terms = np.concatenate([0.5 * d_pos ** 2, 0.5 * hinge ** 2])
    num = len(terms)
    weights = None
    if need_grad:
        weights = (np.concatenate([pos_r, neg_r]), np.concatenate([pos_c, neg_c]),
                   np.concatenate([d_pos, -hinge]) / num)
    return float(terms.sum()) / num, np.count_nonzero(terms) / num, weights


_LOSSES = {
    "semihard_tf": _semihard_tf,
    "batch_hard": _batch_hard,
    "batch_all": _all_triplets(unordered=False),
    "all": _all_triplets(unordered=True),
    "hardest": _selector("hardest"),
    "random_hard": _selector("random_hard"),
    "semihard": _selector("semihard"),
    "all_positive": _contrastive_all_positive,
    "hard_negative": _contrastive_hard_negative,
}
KINDS = tuple(_LOSSES)  # the triplet kinds, then the contrastive pair selectors


def _check_kind(kind):
    if kind not in _LOSSES:
        raise ValueError("kind must be one of %s, not %r" % ("|".join(KINDS), kind))


def batch_loss(x, labels, kind, margin=1.0, distance="euclidean", rng=None, need_grad=False,
               warnings=None):
    """The batch loss ``kind`` (one of ``KINDS``; see the loss classes for each definition) of
    embeddings ``x`` (B x D, float32 or float64) with ``labels``, in numpy.

    Returns ``(loss, fraction, grad)``: floats, and d loss / d x (B x D, x's dtype) when
    ``need_grad``, else None. A batch that forms no tuple gives (0, 0) and a zero gradient; an
    ``x`` holding a NaN or an infinity gives NaN for all three. ``warnings``: the
    :class:`mining.NoTupleWarnings` that counts batches forming no tuple (default: one shared by
    the numpy callers).
    """
    _check_kind(kind)
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():  # the kernels' relu and max would turn NaN into a finite loss
        nan = float("nan")
        return nan, nan, (np.full_like(x, nan) if need_grad else None)
    codes = mining.label_codes(labels)
    dist, aux = kernels.distances(x, distance)
    try:
        loss, fraction, weights = _LOSSES[kind](dist, codes, margin, rng, need_grad)
    except _NoTuples as empty:
        (warnings or mining.no_tuple_warnings("numpy")).warn(codes, empty.what)
        loss, fraction, weights = 0.0, 0.0, None
    grad = None
    if need_grad:
        grad = (np.zeros_like(x) if weights is None
                else kernels.distance_grad(x, dist, aux, weights, distance))
    return float(loss), float(fraction), grad


def warm_up():
    """Compile (or load from numba's cache) every kernel for float32 and float64 inputs, so the
    first training step does not pay for it; ``make install`` runs this once."""
    rng = np.random.RandomState(0)
    labels = np.arange(12) % 3
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=(12, 4)).astype(dtype)
        for kind in KINDS:
            for distance in kernels.DISTANCE_CODES:
                batch_loss(x, labels, kind, 1.0, distance, rng=rng, need_grad=True)


def host_loss(F, embeddings, labels, kind, margin, distance, warn_key="numpy"):
    """``(loss, fraction)`` of the batch, each of shape (1,), through the ``dml_batch_loss``
    operator; only the loss carries a gradient (to the embeddings). ``warn_key`` names the
    loss instance whose no-tuple warnings are counted (:func:`mining.no_tuple_warnings`)."""
    loss, fraction = F.Custom(embeddings, F.BlockGrad(labels), op_type="dml_batch_loss",
                              kind=kind, margin=margin, distance=distance, warn_key=warn_key)
    return loss, F.BlockGrad(fraction)


class _BatchLossOp(mx.operator.CustomOp):
    def __init__(self, kind, margin, distance, warn_key):
        self.kind, self.margin, self.distance = kind, margin, distance
        self.warnings = mining.no_tuple_warnings(warn_key)
        self._saved = None

    def _run(self, in_data, need_grad):
        x, labels = in_data[0].asnumpy(), in_data[1].asnumpy()
        loss, fraction, grad = batch_loss(x, labels, self.kind, self.margin, self.distance,
                                          need_grad=need_grad, warnings=self.warnings)
        # the backward pass checks that it is handed the inputs this gradient belongs to
        self._saved = (x, labels, grad) if need_grad else None
        return loss, fraction, grad

    def forward(self, is_train, req, in_data, out_data, aux):
        loss, fraction, _ = self._run(in_data, need_grad=is_train)
        ctx = in_data[0].context
        self.assign(out_data[0], req[0], mx.nd.array([loss], ctx=ctx, dtype=out_data[0].dtype))
        self.assign(out_data[1], req[1], mx.nd.array([fraction], ctx=ctx, dtype=out_data[1].dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        saved = self._saved
        if (saved is None or not np.array_equal(saved[0], in_data[0].asnumpy())
                or not np.array_equal(saved[1], in_data[1].asnumpy())):
            saved = (None, None, self._run(in_data, need_grad=True)[2])
        self._saved = None
        grad = saved[2] * out_grad[0].asnumpy().reshape(()).astype(saved[2].dtype)
        self.assign(in_grad[0], req[0], mx.nd.array(grad, ctx=in_data[0].context,
                                                    dtype=in_grad[0].dtype))
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(in_grad[1]))


def _drain_engine():
    """Wait for MXNet's queued operations at interpreter exit, before MXNet's own exit hook. A
    loop that ends without a sync leaves its last backward pass queued; it calls back into these
    Python operators, and MXNet's hook (``MXNotifyShutdown``) waiting for it while Python is torn
    down never returns (seen: a script training N-pairs hung at exit). atexit runs hooks last
    registered first, and this module imports after mxnet."""
    try:
        mx.nd.waitall()
    except Exception:  # pylint: disable=broad-except  (exit must go on)
        pass


atexit.register(_drain_engine)


class HostLossProp(mx.operator.CustomOpProp):
    """What the fused host operators share: inputs ``embeddings`` (B x D) and ``labels`` (B),
    two outputs of shape (1,) in the embeddings' dtype (the loss, then a statistic without
    gradient), and a backward pass that reads the inputs and the loss's incoming gradient."""

    outputs = ("loss", "fraction")

    def __init__(self):
        super().__init__(need_top_grad=True)

    def list_arguments(self):
        return ["embeddings", "labels"]

    def list_outputs(self):
        return list(self.outputs)

    def infer_shape(self, in_shape):
        return in_shape, [(1,), (1,)], []

    def infer_type(self, in_type):
        return in_type, [in_type[0], in_type[0]], []

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return list(in_data) + [out_grad[0]]


@mx.operator.register("dml_batch_loss")
class _BatchLossProp(HostLossProp):
    """Inputs: embeddings (B x D), labels (B). Outputs: loss and fraction, each (1,).
    Parameters: kind (one of ``KINDS``), margin, distance, warn_key (whose warnings count)."""

    def __init__(self, kind="semihard_tf", margin=1.0, distance="euclidean", warn_key="numpy"):
        super().__init__()
        _check_kind(kind)
        self.kind, self.margin, self.distance = kind, float(margin), distance
        self.warn_key = warn_key

    def create_operator(self, ctx, shapes, dtypes):
        return _BatchLossOp(self.kind, self.margin, self.distance, self.warn_key)
