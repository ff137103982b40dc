"""Compiled host kernels (numba) behind every online loss: the B x B distance matrix of a batch of
embeddings, the mining over it, and the gradient back to the embeddings.

Conventions shared by the kernels:

- ``codes``: the labels as integers 0..C-1 (``np.unique(labels, return_inverse=True)[1]``).
- *Positive pairs* of an anchor a are p != a with codes[p] == codes[a] (only p > a when
  ``unordered``), listed anchor-major with p ascending; ``offsets[a]:offsets[a + 1]`` is anchor a's
  slice of every per-pair array (see :func:`pair_offsets`). *Negatives* of a are n with
  codes[n] != codes[a].
- Ties go to the lowest column index, so every selection is deterministic.

Each kernel runs over anchors in parallel (``prange``) and reads each of an anchor's B distances a
constant number of times, plus a binary search among that anchor's P positives: O(B^2 log P) time
and no memory beyond the B x B matrices the caller holds. Sums are accumulated in float64 whatever
the distances' dtype.
"""
import numba
import numpy as np
from numba import prange

from ..distances import COSINE as _COSINE, EUCLIDEAN as _EUCLIDEAN, SQUARED as _SQUARED
from ..distances import get_distance, unit_rows

_DISTANCES = (_EUCLIDEAN, _SQUARED, _COSINE)

EUCLIDEAN, SQUARED, COSINE = (d.code for d in _DISTANCES)
DISTANCE_CODES = {d.name: d.code for d in _DISTANCES}

_jit = numba.njit(cache=True)
_pjit = numba.njit(cache=True, parallel=True)


def pair_offsets(codes, unordered=False, need_negative=True):
    """Per-anchor start of its positive pairs (length B + 1): anchor a has ``offsets[a + 1] -
    offsets[a]`` positives; none when ``need_negative`` and a has no negative."""
    codes = np.asarray(codes, dtype=np.int64)
    sizes = np.bincount(codes)
    count = sizes[codes] - 1
    if unordered:
        order = np.argsort(codes, kind="stable")
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.empty_like(codes)
        rank[order] = np.arange(len(codes)) - starts[codes[order]]
        count = count - rank
    if need_negative:
        count = np.where(sizes[codes] < len(codes), count, 0)
    return np.concatenate([[0], np.cumsum(count)]).astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Distances


def distances(x, distance):
    """The B x B distance matrix of the rows of ``x`` in x's dtype (same definitions as
    ``distance.pairwise_distance``) and what :func:`distance_grad` needs besides (the unit rows
    and norms for cosine, else None)."""
    code = get_distance(distance).code
    aux = None
    if code == COSINE:
        x, norms = unit_rows(x, return_norms=True)
        aux = (x, norms)
    gram = x @ x.T  # BLAS: the one O(B^2 D) step
    sq = np.einsum("ij,ij->i", x, x)
    _finish_distances(gram, sq, code)
    return gram, aux


@_pjit
def _finish_distances(gram, sq, code):
    """In place: gram -> distances (relu'd, zero diagonal, zero-safe sqrt)."""
    b = gram.shape[0]
    for i in prange(b):
        for j in range(b):
            if i == j:
                gram[i, j] = 0
                continue
            if code == COSINE:
                v = 1.0 - gram[i, j]
            else:
                v = sq[i] + sq[j] - 2.0 * gram[i, j]
            if not v > 0:
                v = 0.0
            if code == EUCLIDEAN:
                v = np.sqrt(v)
            gram[i, j] = v


@_jit
def _derivative(v, code):
    """The factor c with d(distance)/d(x_i) = c (x_i - x_j) (euclidean: 1/d; squared: 2) or, for
    cosine, d(distance)/d(u_i) = c u_j (c = -1); 0 where the distance is 0 (relu'd, the diagonal,
    or coinciding embeddings: a zero, not an infinite, gradient)."""
    if not v > 0:
        return 0.0
    if code == EUCLIDEAN:
        return 1.0 / v
    if code == SQUARED:
        return 2.0
    return -1.0


def distance_grad(x, dist, aux, weights, distance):
    """Gradient of sum(W * D) with respect to x, for ``weights`` either a dense B x B array W
    (overwritten) or sparse ``(rows, cols, values)`` entries (repeats add up).

    With S = (W + W^T) * D': for euclidean/squared grad_i = sum_j S_ij (x_i - x_j); for cosine
    grad_u = S U and grad_x = (grad_u - u (u . grad_u)) / |x| through the normalisation.
    """
    code = DISTANCE_CODES[distance]
    base = aux[0] if code == COSINE else x
    if isinstance(weights, tuple):
        rows, cols, values = weights
        grad = np.zeros(base.shape, dtype=np.float64)
        _sparse_grad(base, dist, rows, cols, np.asarray(values, dtype=np.float64), code, grad)
        grad = grad.astype(x.dtype)
    else:
        rowsum = np.zeros(len(dist), dtype=np.float64)
        _symmetrize(weights, dist, code, rowsum)
        grad = weights @ base
        if code != COSINE:
            grad = rowsum.astype(x.dtype)[:, None] * base - grad
    if code == COSINE:
        unit, norms = aux
        grad = (grad - unit * np.einsum("ij,ij->i", unit, grad)[:, None]) / norms[:, None]
    return grad


@_pjit
def _symmetrize(w, dist, code, rowsum):
    """In place: w <- (w + w^T) * D'(dist), and rowsum <- its row sums."""
    b = w.shape[0]
    for i in prange(b):
        for j in range(i + 1, b):
            s = (w[i, j] + w[j, i]) * _derivative(dist[i, j], code)
            w[i, j] = s
            w[j, i] = s
        w[i, i] = 0
    for i in prange(b):
        total = 0.0
        for j in range(b):
            total += w[i, j]
        rowsum[i] = total


@_jit
def _sparse_grad(base, dist, rows, cols, values, code, grad):
    dim = base.shape[1]
    for e in range(len(rows)):
        r, c = rows[e], cols[e]
        coef = values[e] * _derivative(dist[r, c], code)
        if coef == 0:
            continue
        for k in range(dim):
            if code == COSINE:
                grad[r, k] += coef * base[c, k]
                grad[c, k] += coef * base[r, k]
            else:
                diff = coef * (base[r, k] - base[c, k])
                grad[r, k] += diff
                grad[c, k] -= diff


# ------------------------------------------------------------------------------------------------
# Mining


@_jit
def _positives(codes, a, unordered, count):
    out = np.empty(count, dtype=np.int64)
    k = 0
    for j in range(len(codes)):
        if j != a and codes[j] == codes[a] and (j > a or not unordered):
            out[k] = j
            k += 1
    return out


@_pjit
def positive_pairs(codes, offsets, unordered):
    """(anchor, positive) of every positive pair, in the order of ``offsets``."""
    anchors = np.empty(offsets[-1], dtype=np.int64)
    positives = np.empty(offsets[-1], dtype=np.int64)
    for a in prange(len(codes)):
        start, count = offsets[a], offsets[a + 1] - offsets[a]
        if count > 0:
            positives[start:start + count] = _positives(codes, a, unordered, count)
            anchors[start:start + count] = a
    return anchors, positives


@_pjit
def semihard_tf(dist, codes, offsets):
    """FaceNet's semi-hard negative for every ordered positive pair (a, p): the closest negative n
    with d(a,n) > d(a,p), else a's farthest negative.

    Per anchor: its P positive distances sorted (t); each negative v falls in bucket
    j = #{t < v} (binary search), keeping each bucket's smallest v; the answer for the i-th
    smallest t is the first non-empty bucket j > i (buckets grow with j). O(B log P) per anchor.
    """
    b = len(codes)
    negatives = np.empty(offsets[-1], dtype=np.int64)
    for a in prange(b):
        start, count = offsets[a], offsets[a + 1] - offsets[a]
        if count == 0:
            continue
        pos = _positives(codes, a, False, count)
        t = np.empty(count, dtype=np.float64)
        for i in range(count):
            t[i] = dist[a, pos[i]]
        order = np.argsort(t, kind="mergesort")
        sorted_t = t[order]
        best = np.full(count + 1, np.inf)
        best_n = np.full(count + 1, -1, dtype=np.int64)
        far_v, far_n = -np.inf, -1
        for n in range(b):
            if codes[n] == codes[a]:
                continue
            v = dist[a, n]
            if v > far_v:
                far_v, far_n = v, n
            j = np.searchsorted(sorted_t, v)
            if v < best[j]:
                best[j], best_n[j] = v, n
        nearest = -1
        for j in range(count, 0, -1):
            if best_n[j] >= 0:
                nearest = best_n[j]
            negatives[start + order[j - 1]] = nearest if nearest >= 0 else far_n
    return negatives


@_pjit
def batch_hard(dist, codes):
    """Per anchor: its farthest positive and closest negative (-1 where it has none)."""
    b = len(codes)
    hardest_positive = np.full(b, -1, dtype=np.int64)
    hardest_negative = np.full(b, -1, dtype=np.int64)
    for a in prange(b):
        far_v, near_v = -np.inf, np.inf
        for j in range(b):
            v = dist[a, j]
            if codes[j] == codes[a]:
                if j != a and (hardest_positive[a] < 0 or v > far_v):
                    far_v, hardest_positive[a] = v, j
            elif hardest_negative[a] < 0 or v < near_v:
                near_v, hardest_negative[a] = v, j
    return hardest_positive, hardest_negative


@_jit
def _sorted_reach(dist, codes, a, unordered, count, margin):
    pos = _positives(codes, a, unordered, count)
    reach = np.empty(count, dtype=np.float64)
    for i in range(count):
        reach[i] = dist[a, pos[i]] + margin
    order = np.argsort(reach, kind="mergesort")
    return pos, order, reach[order]


@_pjit
def triplet_sums(dist, codes, offsets, margin, unordered):
    """For every positive pair (a, p), over the negatives n of a: the summed loss
    sum_n relu(d(a,p) + m - d(a,n)) and the count of n with positive loss (both per pair).

    Per anchor: reach = d(a,p) + m sorted; each negative v lands in bucket k = #{reach <= v};
    the pair with the i-th smallest reach is active for the negatives of buckets 0..i, so its
    count and sum are prefix sums of the buckets' counts and distance sums, and its loss is
    count * reach - sum. O(B log P) per anchor, no B x B x B tensor.
    """
    b = len(codes)
    sums = np.zeros(offsets[-1], dtype=np.float64)
    active = np.zeros(offsets[-1], dtype=np.int64)
    for a in prange(b):
        start, count = offsets[a], offsets[a + 1] - offsets[a]
        if count == 0:
            continue
        pos, order, reach = _sorted_reach(dist, codes, a, unordered, count, margin)
        bucket_count = np.zeros(count + 1, dtype=np.int64)
        bucket_sum = np.zeros(count + 1, dtype=np.float64)
        for n in range(b):
            if codes[n] != codes[a]:
                v = dist[a, n]
                k = np.searchsorted(reach, v, side="right")
                bucket_count[k] += 1
                bucket_sum[k] += v
        c, s = 0, 0.0
        for i in range(count):
            c += bucket_count[i]
            s += bucket_sum[i]
            sums[start + order[i]] = max(c * reach[i] - s, 0.0)
            active[start + order[i]] = c
    return sums, active


@_pjit
def triplet_sums_grad(dist, codes, offsets, margin, unordered, weights, active, out):
    """Into ``out`` (B x B, zeroed): the gradient of sum_pairs weights * sums (see
    :func:`triplet_sums`) with respect to the distances: weights * active at (a, p), and at
    (a, n) minus the summed weights of a's pairs whose reach exceeds d(a, n) (suffix sums over the
    sorted reaches)."""
    b = len(codes)
    for a in prange(b):
        start, count = offsets[a], offsets[a + 1] - offsets[a]
        if count == 0:
            continue
        pos, order, reach = _sorted_reach(dist, codes, a, unordered, count, margin)
        suffix = np.zeros(count + 1, dtype=np.float64)
        for i in range(count - 1, -1, -1):
            suffix[i] = suffix[i + 1] + weights[start + order[i]]
        for n in range(b):
            if codes[n] != codes[a]:
                out[a, n] = -suffix[np.searchsorted(reach, dist[a, n], side="right")]
        for i in range(count):
            out[a, pos[i]] = weights[start + i] * active[start + i]


@_pjit
def random_negatives(dist, codes, offsets, margin, semihard, uniforms):
    """For every unordered positive pair (a < p): a uniformly random negative n with
    d(a,n) < d(a,p) + m, and also d(a,n) > d(a,p) when ``semihard`` (-1 when there is none).
    ``uniforms``: one U[0, 1) draw per pair.

    Without ``semihard`` (random_hard), per anchor: reach = d(a,p) + m sorted; each negative v
    lands in bucket k = #{reach <= v} (binary search) and the negatives are laid out bucket by
    bucket (a counting sort); the pair with the i-th smallest reach allows exactly the first
    (buckets 0..i) of them. With ``semihard`` the window has two ends, so each anchor's negatives
    are sorted once and each pair's allowed ones are a contiguous range of ranks."""
    b = len(codes)
    negatives = np.full(offsets[-1], -1, dtype=np.int64)
    for a in prange(b):
        start, count = offsets[a], offsets[a + 1] - offsets[a]
        if count == 0:
            continue
        if not semihard:
            _random_hard_anchor(dist, codes, a, start, count, margin, uniforms, negatives)
            continue
        pos = _positives(codes, a, True, count)
        num_neg = 0
        for n in range(b):
            if codes[n] != codes[a]:
                num_neg += 1
        neg = np.empty(num_neg, dtype=np.int64)
        vals = np.empty(num_neg, dtype=np.float64)
        k = 0
        for n in range(b):
            if codes[n] != codes[a]:
                neg[k], vals[k] = n, dist[a, n]
                k += 1
        order = np.argsort(vals)  # quicksort: tied values are allowed or not together
        sorted_vals = vals[order]
        for i in range(count):
            t = np.float64(dist[a, pos[i]])
            low = np.searchsorted(sorted_vals, t, side="right")
            high = np.searchsorted(sorted_vals, t + margin)
            if high > low:
                rank = min(low + int(uniforms[start + i] * (high - low)), high - 1)
                negatives[start + i] = neg[order[rank]]
    return negatives


@_jit
def _random_hard_anchor(dist, codes, a, start, count, margin, uniforms, negatives):
    b = len(codes)
    pos, order, reach = _sorted_reach(dist, codes, a, True, count, margin)
    bucket = np.empty(b, dtype=np.int64)
    first = np.zeros(count + 2, dtype=np.int64)  # first[k + 1]: negatives in bucket k, then starts
    for n in range(b):
        if codes[n] != codes[a]:
            bucket[n] = np.searchsorted(reach, dist[a, n], side="right")
            first[bucket[n] + 1] += 1
    for k in range(1, count + 2):
        first[k] += first[k - 1]
    laid_out = np.empty(first[count + 1], dtype=np.int64)
    filled = first[:count + 1].copy()
    for n in range(b):
        if codes[n] != codes[a]:
            laid_out[filled[bucket[n]]] = n
            filled[bucket[n]] += 1
    for i in range(count):
        allowed = first[i + 1]  # the negatives of buckets 0..i
        if allowed > 0:
            pair = start + order[i]
            negatives[pair] = laid_out[min(int(uniforms[pair] * allowed), allowed - 1)]


@_pjit
def contrastive_all(dist, codes, margin, out):
    """Over every pair i < j: the halved Hadsell terms 0.5 d^2 (same class) or
    0.5 relu(m - d)^2 (different classes). Returns per-row loss sums and counts of non-zero terms;
    writes each term's derivative in d to out[i, j] (out zeroed, lower triangle left 0)."""
    b = len(codes)
    sums = np.zeros(b, dtype=np.float64)
    active = np.zeros(b, dtype=np.int64)
    for i in prange(b):
        s, c = 0.0, 0
        for j in range(i + 1, b):
            v = np.float64(dist[i, j])
            if codes[i] == codes[j]:
                term, slope = 0.5 * v * v, v
            else:
                h = margin - v
                term, slope = (0.5 * h * h, -h) if h > 0 else (0.0, 0.0)
            s += term
            if term > 0:
                c += 1
            out[i, j] = slope
        sums[i], active[i] = s, c
    return sums, active
