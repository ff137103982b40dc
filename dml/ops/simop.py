r"""The similarity losses as one host-side operator, like :mod:`dml.ops.batch` for the
distance losses: the B x D embeddings go to the host once, S = U U^T is one BLAS product of the
unit rows U, one compiled pass per row (:mod:`dml.ops.simkernels`) gives the loss and
G = dL/dS, and the gradient is dL/dU = G U + G^T U, then through the normalization
(dL/dx = (dL/dU - U (U . dL/dU)) / |x|). What the MXNet form of the same losses costs in
elementwise passes over B x B (a dozen each way in this CPU build) becomes two products more.

:func:`similarity_loss` is the numpy form (``kind`` one of :data:`KINDS`, the parameters of
:data:`DEFAULTS`); ``F.Custom(embeddings, labels, op_type="dml_similarity_loss", kind=...,
params=json)`` the operator (hybridizable, any context); :func:`memory_loss` scores a batch
against fixed references (a cross-batch memory). Reductions are PML 2.9's (see the loss classes
of :mod:`dml.losses.similarity`); a NaN or an infinity in the embeddings gives NaN for all.
"""
import json

import mxnet as mx
import numpy as np

from ..distances import unit_rows
from . import simkernels as K
from .batch import HostLossProp

KINDS = ("multi_similarity", "circle", "supcon", "ntxent", "lifted", "npairs", "margin")
DEFAULTS = {
    "multi_similarity": dict(alpha=2.0, beta=50.0, base=0.5),
    "circle": dict(m=0.4, gamma=80.0),
    "supcon": dict(temperature=0.1),
    "ntxent": dict(temperature=0.07),
    "lifted": dict(neg_margin=1.0, pos_margin=0.0),
    "npairs": dict(),
    "margin": dict(margin=0.2, beta=1.2, nu=0.0),
}
_NO_MINING = np.zeros(0, dtype=np.float64)  # no thresholds: every pair counts


def _codes(labels, ref_labels=None):
    labels = np.asarray(labels).reshape(-1)
    if ref_labels is None:
        codes = np.unique(labels, return_inverse=True)[1].astype(np.int64)
        return codes, codes
    ref_labels = np.asarray(ref_labels).reshape(-1)
    _, inverse = np.unique(np.concatenate([labels, ref_labels]), return_inverse=True)
    inverse = inverse.astype(np.int64)
    return inverse[:len(labels)], inverse[len(labels):]


def _npairs_roles(codes):
    """``(anchor, positive)`` bool vectors: the first and the second image of each class with
    two or more, in batch order (PML's one positive pair per label)."""
    seen = {}
    anchor = np.zeros(len(codes), dtype=np.bool_)
    positive = np.zeros(len(codes), dtype=np.bool_)
    counts = np.bincount(codes)
    for i, c in enumerate(codes):
        rank = seen.get(c, 0)
        seen[c] = rank + 1
        anchor[i] = rank == 0 and counts[c] > 1
        positive[i] = rank == 1
    return anchor, positive


def _score(S, codes, ref_codes, own, kind, p, pos_cut, neg_cut, need_grad):
    """``(loss, stat, G, beta_grad, grad_scale)`` of the similarities ``S``: dL/dS is
    ``grad_scale * G`` (G None without ``need_grad``). ``pos_cut``/``neg_cut``: the
    multi-similarity miner's thresholds (empty: every pair). One pass counts each anchor's pairs
    and sums their similarities (the statistic); each reduction's divisor is then known before
    the loss kernel runs, which writes G scaled (grad_scale 1). The margin loss's divisor, its
    active terms, is known only after its pass: it scales the B x D gradient instead."""
    a = S.shape[0]
    G = np.empty_like(S)
    terms = np.zeros(a, dtype=np.float64)
    beta_grad = 0.0
    if kind == "margin":
        sums = np.zeros((a, 4), dtype=np.float64)
        sizes = np.bincount(codes)[codes].astype(np.float64)
        K.margin_all(S, codes, sizes - 1, len(codes) - sizes, p["beta"], p["margin"], G, sums)
        total, active, triplets = sums[:, 0].sum(), sums[:, 1].sum(), sums[:, 2].sum()
        scale = 1.0 / max(active, 1.0)  # known after the pass: applied to dL/dU, not to G
        loss = total * scale
        beta_grad = sums[:, 3].sum() * scale
        if p["nu"]:
            loss += p["nu"] * p["beta"] * (triplets > 0) * scale
            beta_grad += p["nu"] * (triplets > 0) * scale
        return float(loss), float(active / max(2 * triplets, 1.0)), (
            G if need_grad else None), float(beta_grad), scale
    sums = np.zeros((a, 4), dtype=np.float64)
    K.gap_sums(S, codes, ref_codes, own, _NO_MINING if kind == "npairs" else pos_cut,
               _NO_MINING if kind == "npairs" else neg_cut, sums)
    total = sums.sum(axis=0)
    stat = total[0] / max(total[2], 1.0) - total[1] / max(total[3], 1.0)  # similarity_gap
    pos_count, neg_count = sums[:, 2], sums[:, 3]
    n_pos, n_neg = total[2], total[3]
    enough = float((n_pos > 1) or (n_neg > 1))  # PML: zero unless 2 positive or 2 negative pairs
    both = float(n_pos > 0 and n_neg > 0)
    if kind == "multi_similarity":
        scale = enough / float(a)
        K.multi_similarity(S, codes, ref_codes, own, pos_cut, neg_cut, p["alpha"], p["beta"],
                           p["base"], scale, G, terms)
    elif kind == "circle":
        scale = enough / max(float(((pos_count > 0) & (neg_count > 0)).sum()), 1.0)
        K.circle(S, codes, ref_codes, own, pos_cut, neg_cut, p["m"], p["gamma"], scale, G, terms,
                 np.zeros(a))
    elif kind == "supcon":
        scale = enough * both / max(float((pos_count > 0).sum()), 1.0)
        K.supcon(S, codes, ref_codes, own, pos_cut, neg_cut, p["temperature"], scale, G, terms,
                 np.zeros(a))
    elif kind == "ntxent":
        scale = enough * both / max(n_pos, 1.0)
        K.ntxent(S, codes, ref_codes, own, pos_cut, neg_cut, p["temperature"], scale, G, terms)
    elif kind == "lifted":
        scale = enough / float(a)
        K.lifted(S, codes, ref_codes, own, pos_cut, neg_cut, p["neg_margin"], p["pos_margin"],
                 scale, G, terms)
    elif kind == "npairs":
        anchor, positive = _npairs_roles(codes)
        scale = 1.0 / max(anchor.sum(), 1)
        K.npairs(S, codes, anchor, positive, scale, G, terms)
    else:
        raise ValueError("kind must be one of %s, not %r" % ("|".join(KINDS), kind))
    return float(terms.sum() * scale), float(stat), (G if need_grad else None), float(beta_grad), 1.0


def _cuts(S, codes, ref_codes, own, mine_epsilon, self_counts):
    """The miner's thresholds (or none)."""
    if mine_epsilon is None:
        return _NO_MINING, _NO_MINING
    pos_cut = np.empty(S.shape[0], dtype=np.float64)
    neg_cut = np.empty(S.shape[0], dtype=np.float64)
    K.ms_cuts(S, codes, ref_codes, own, float(mine_epsilon), self_counts, pos_cut, neg_cut)
    return pos_cut, neg_cut


def _params(kind, params):
    out = dict(DEFAULTS[kind])
    out.update(params or {})
    return {k: float(v) for k, v in out.items()}


def _nan_result(x, need_grad, with_beta=False):
    nan = float("nan")
    return nan, nan, (np.full_like(x, nan) if need_grad else None), nan


def similarity_loss(x, labels, kind, params=None, mine_epsilon=None, need_grad=False):
    """``(loss, stat, grad, beta_grad)`` of the similarity loss ``kind`` of embeddings ``x``
    (B x D, float32 or float64) with ``labels``: the loss, the statistic (``similarity_gap``, or
    the margin loss's active fraction), with ``need_grad`` dL/dx (x's dtype, else None), and
    dL/d beta of the margin loss (0 for the others). ``params`` override :data:`DEFAULTS`;
    ``mine_epsilon``: only the pairs of the multi-similarity miner count."""
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        return _nan_result(x, need_grad)
    p = _params(kind, params)
    U, norms = unit_rows(x, return_norms=True)
    S = U @ U.T
    codes, _ = _codes(labels)
    own = np.arange(len(x), dtype=np.int64)
    pos_cut, neg_cut = _cuts(S, codes, codes, own, mine_epsilon, False)
    loss, stat, G, beta_grad, grad_scale = _score(S, codes, codes, own, kind, p, pos_cut,
                                                  neg_cut, need_grad)
    grad = None
    if need_grad:
        K.symmetrize(G)  # S = U U^T: dL/dU = (G + G^T) U
        dU = G @ U
        if grad_scale != 1.0:
            dU *= np.asarray(grad_scale, dtype=dU.dtype)
        grad = (dU - U * np.einsum("ij,ij->i", U, dU)[:, None]) / norms[:, None]
    return loss, stat, grad, beta_grad


def memory_loss(x, labels, refs, ref_labels, own, kind, params=None, mine_epsilon=None,
                need_grad=False):
    """The loss of anchors ``x`` against fixed references ``refs`` (a cross-batch memory, which
    holds the anchors too: ``own[i]`` is anchor i's row, left out of its pairs; the miner counts
    it, as PML mines a memory): ``(loss, stat, grad)``, the gradient reaching the anchors
    only."""
    x = np.ascontiguousarray(x)
    if not np.isfinite(x).all():
        return _nan_result(x, need_grad)[:3]
    p = _params(kind, params)
    U, norms = unit_rows(x, return_norms=True)
    R = unit_rows(np.ascontiguousarray(refs, dtype=x.dtype))
    S = U @ R.T
    codes, ref_codes = _codes(labels, ref_labels)
    own = np.asarray(own, dtype=np.int64)
    pos_cut, neg_cut = _cuts(S, codes, ref_codes, own, mine_epsilon, True)
    loss, stat, G, _, grad_scale = _score(S, codes, ref_codes, own, kind, p, pos_cut, neg_cut,
                                          need_grad)
    grad = None
    if need_grad:
        dU = G @ R
        if grad_scale != 1.0:
            dU *= np.asarray(grad_scale, dtype=dU.dtype)
        grad = (dU - U * np.einsum("ij,ij->i", U, dU)[:, None]) / norms[:, None]
    return loss, stat, grad


def host_similarity(F, embeddings, labels, kind, params=None, mine_epsilon=None, beta=None):
    """``(loss, stat)``, each of shape (1,), through the ``dml_similarity_loss`` operator; only
    the loss carries a gradient (to the embeddings, and to ``beta`` when given: the margin
    loss's learnable beta)."""
    config = json.dumps({"kind": kind, "parameters": params or {},
                         "mine_epsilon": mine_epsilon})
    inputs = [embeddings, F.BlockGrad(labels)]
    if beta is not None:
        inputs.append(beta)
    loss, stat = F.Custom(*inputs, op_type="dml_similarity_loss", config=config,
                          learn_beta=beta is not None)
    return loss, F.BlockGrad(stat)


class _SimilarityOp(mx.operator.CustomOp):
    def __init__(self, config, learn_beta):
        self.kind, self.params = config["kind"], config["parameters"]
        self.mine_epsilon, self.learn_beta = config["mine_epsilon"], learn_beta
        self._saved = None

    def _run(self, in_data, need_grad):
        x, labels = in_data[0].asnumpy(), in_data[1].asnumpy()
        params = dict(self.params)
        if self.learn_beta:
            params["beta"] = float(in_data[2].asnumpy().reshape(-1)[0])
        out = similarity_loss(x, labels, self.kind, params, self.mine_epsilon, need_grad)
        self._saved = (x, labels, out[2], out[3]) if need_grad else None
        return out

    def forward(self, is_train, req, in_data, out_data, aux):
        loss, stat, _, _ = self._run(in_data, need_grad=is_train)
        ctx = in_data[0].context
        self.assign(out_data[0], req[0], mx.nd.array([loss], ctx=ctx, dtype=out_data[0].dtype))
        self.assign(out_data[1], req[1], mx.nd.array([stat], ctx=ctx, dtype=out_data[1].dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        saved = self._saved
        if (saved is None or not np.array_equal(saved[0], in_data[0].asnumpy())
                or not np.array_equal(saved[1], in_data[1].asnumpy())):
            out = self._run(in_data, need_grad=True)
            saved = (None, None, out[2], out[3])
        self._saved = None
        scale = out_grad[0].asnumpy().reshape(())
        ctx = in_data[0].context
        self.assign(in_grad[0], req[0], mx.nd.array(saved[2] * scale.astype(saved[2].dtype),
                                                    ctx=ctx, dtype=in_grad[0].dtype))
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(in_grad[1]))
        if self.learn_beta:
            self.assign(in_grad[2], req[2], mx.nd.array([saved[3] * float(scale)], ctx=ctx,
                                                        dtype=in_grad[2].dtype))


@mx.operator.register("dml_similarity_loss")
class _SimilarityProp(HostLossProp):
    """Inputs: embeddings (B x D), labels (B) and, with ``learn_beta``, the margin loss's beta
    (1,). Outputs: loss and statistic, each (1,). ``config``: JSON of ``kind``, ``parameters`` and
    ``mine_epsilon``."""

    outputs = ("loss", "stat")

    def __init__(self, config="{}", learn_beta="False"):
        super().__init__()
        self.config = json.loads(config)
        if self.config.get("kind") not in KINDS:
            raise ValueError("kind must be one of %s" % "|".join(KINDS))
        self.learn_beta = str(learn_beta) == "True"

    def list_arguments(self):
        return super().list_arguments() + (["beta"] if self.learn_beta else [])

    def create_operator(self, ctx, shapes, dtypes):
        return _SimilarityOp(self.config, self.learn_beta)


def warm_up():
    """Compile every kernel for float32 and float64 (``make install`` runs it)."""
    rng = np.random.RandomState(0)
    labels = np.arange(12) % 3
    for dtype in (np.float32, np.float64):
        x = rng.normal(size=(12, 4)).astype(dtype)
        for kind in KINDS:
            similarity_loss(x, labels, kind, need_grad=True)
        similarity_loss(x, labels, "multi_similarity", mine_epsilon=0.1, need_grad=True)
        memory_loss(x, labels, x, labels, np.arange(12), "supcon", mine_epsilon=0.1,
                    need_grad=True)
