r"""Compiled row kernels (numba) of the similarity losses: each reads the anchors x references
cosine similarities S once, row by row, and writes the loss terms of every anchor and
G = dL/dS, so that the fused operator (:mod:`dml.ops.simop`) costs two matrix products
(S = U R^T forward, G R (+ G^T U) backward) and one pass over S.

Conventions:

- ``S`` is A x M (anchors x references; the batch's own B x B matrix when the references are the
  batch), ``codes``/``ref_codes`` the labels as integers, ``own[i]`` the column that is anchor i
  itself (-1: none). A *positive* of anchor i is a column j != own[i] with ``ref_codes[j] ==
  codes[i]``, a *negative* a column with another code.
- Each kernel returns per-anchor arrays (float64) that the caller reduces, and fills ``G`` with
  the gradient of the *sum* of the per-anchor values it names; the caller scales G by the
  reduction's divisor. ``G`` has S's dtype; sums run in float64.
- Every log-sum-exp takes the row's largest kept value out first.

The formulas are those of :mod:`dml.losses.similarity` (pytorch-metric-learning 2.9's), which
the tests check against this module.
"""
import math

import numba
import numpy as np
from numba import prange

_pjit = numba.njit(cache=True, parallel=True)
_jit = numba.njit(cache=True)


@_pjit
def gap_sums(S, codes, ref_codes, own, pos_cut, neg_cut, out):
    """Per anchor: the sums of its positive and negative similarities and their counts (the
    statistic ``similarity_gap``, and the pair counts of a mined batch)."""
    mined = pos_cut.shape[0] > 0
    for i in prange(S.shape[0]):
        sp = 0.0
        sn = 0.0
        cp = 0.0
        cn = 0.0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 1:
                sp += S[i, j]
                cp += 1.0
            elif kind == 2:
                sn += S[i, j]
                cn += 1.0
        out[i, 0] = sp
        out[i, 1] = sn
        out[i, 2] = cp
        out[i, 3] = cn


@_pjit
def ms_cuts(S, codes, ref_codes, own, epsilon, self_counts, pos_cut, neg_cut):
    """The multi-similarity miner (Wang et al. 2019, PML's) as two thresholds per anchor: a
    negative (i, n) is kept when s_in > min_p s_ip - epsilon (``neg_cut``), a positive (i, p)
    when s_ip < max_n s_in + epsilon (``pos_cut``); an anchor without positives keeps no
    negatives and one without negatives no positives. With ``self_counts`` anchor i's own column
    counts as a positive for the minimum (PML mines a memory with it, then drops the pair)."""
    for i in prange(S.shape[0]):
        min_pos = np.inf
        max_neg = -np.inf
        for j in range(S.shape[1]):
            v = S[i, j]
            if ref_codes[j] == codes[i]:
                if (j != own[i] or self_counts) and v < min_pos:
                    min_pos = v
            elif v > max_neg:
                max_neg = v
        pos_cut[i] = max_neg + epsilon
        neg_cut[i] = min_pos - epsilon


@_jit
def _zero_row(G, terms, i):
    terms[i] = 0.0
    for j in range(G.shape[1]):
        G[i, j] = 0.0


@_jit
def _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, v):
    """0: not a pair, 1: a positive, 2: a negative. ``mined``: only the multi-similarity
    miner's pairs (a positive below ``pos_cut[i]``, a negative above ``neg_cut[i]``)."""
    if ref_codes[j] == codes[i]:
        if j == own[i] or (mined and not v < pos_cut[i]):
            return 0
        return 1
    if mined and not v > neg_cut[i]:
        return 0
    return 2


@_pjit
def multi_similarity(S, codes, ref_codes, own, pos_cut, neg_cut, alpha, beta, base, scale, G,
                     terms):
    r"""Per anchor :math:`\frac{1}{\alpha}\log(1 + \sum_p e^{-\alpha(s_{ip} - base)}) +
    \frac{1}{\beta}\log(1 + \sum_n e^{\beta(s_{in} - base)})`; G of their sum times
    ``scale``. Three passes over the row (its maxima; the exponentials, kept in G; G scaled):
    one ``exp`` per entry."""
    mined = pos_cut.shape[0] > 0
    for i in prange(S.shape[0]):
        top_p = 0.0  # the "1 +" is an entry of 0
        top_n = 0.0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 1:
                top_p = max(top_p, -alpha * (S[i, j] - base))
            elif kind == 2:
                top_n = max(top_n, beta * (S[i, j] - base))
        sum_p = math.exp(-top_p)
        sum_n = math.exp(-top_n)
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 1:
                e = math.exp(-alpha * (S[i, j] - base) - top_p)
                sum_p += e
                G[i, j] = -e
            elif kind == 2:
                e = math.exp(beta * (S[i, j] - base) - top_n)
                sum_n += e
                G[i, j] = e
            else:
                G[i, j] = 0.0
        terms[i] = (top_p + math.log(sum_p)) / alpha + (top_n + math.log(sum_n)) / beta
        cp = scale / sum_p
        cn = scale / sum_n
        for j in range(S.shape[1]):
            g = G[i, j]
            if g < 0:
                G[i, j] = g * cp
            elif g > 0:
                G[i, j] = g * cn


@_pjit
def circle(S, codes, ref_codes, own, pos_cut, neg_cut, m, gamma, scale, G, terms, valid):
    r"""Per anchor with a positive and a negative, softplus(LSE_p(-gamma a_p (s - 1 + m)) +
    LSE_n(gamma a_n (s - m))) with a_p = [1 + m - s]_+, a_n = [s + m]_+ held constant; G of
    their sum times ``scale`` (the others' terms and rows are 0)."""
    mined = pos_cut.shape[0] > 0
    for i in prange(S.shape[0]):
        top_p = -np.inf
        top_n = -np.inf
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            v = S[i, j]
            if kind == 1:
                top_p = max(top_p, -gamma * max(1.0 + m - v, 0.0) * (v - (1.0 - m)))
            elif kind == 2:
                top_n = max(top_n, gamma * max(v + m, 0.0) * (v - m))
        if top_p == -np.inf or top_n == -np.inf:
            valid[i] = 0.0
            _zero_row(G, terms, i)
            continue
        sum_p = 0.0
        sum_n = 0.0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            v = S[i, j]
            if kind == 1:
                e = math.exp(-gamma * max(1.0 + m - v, 0.0) * (v - (1.0 - m)) - top_p)
                sum_p += e
                G[i, j] = e
            elif kind == 2:
                e = math.exp(gamma * max(v + m, 0.0) * (v - m) - top_n)
                sum_n += e
                G[i, j] = e
            else:
                G[i, j] = 0.0
        z = top_p + math.log(sum_p) + top_n + math.log(sum_n)
        terms[i] = max(z, 0.0) + math.log1p(math.exp(-abs(z)))  # softplus
        valid[i] = 1.0
        sig = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        cp = -gamma * sig * scale / sum_p
        cn = gamma * sig * scale / sum_n
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            v = S[i, j]
            if kind == 1:
                G[i, j] = G[i, j] * cp * max(1.0 + m - v, 0.0)
            elif kind == 2:
                G[i, j] = G[i, j] * cn * max(v + m, 0.0)


@_pjit
def supcon(S, codes, ref_codes, own, pos_cut, neg_cut, temperature, scale, G, terms, valid):
    r"""Per anchor with a positive, :math:`-\frac{1}{|P_i|}\sum_p (s_{ip}/\tau -
    LSE_{j \in P_i \cup N_i}(s_{ij}/\tau))`; G of their sum times ``scale``."""
    mined = pos_cut.shape[0] > 0
    inv = 1.0 / temperature
    for i in prange(S.shape[0]):
        top = -np.inf
        n_pos = 0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind > 0:
                top = max(top, S[i, j] * inv)
                if kind == 1:
                    n_pos += 1
        if n_pos == 0:
            valid[i] = 0.0
            _zero_row(G, terms, i)
            continue
        total = 0.0
        sum_pos = 0.0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind > 0:
                e = math.exp(S[i, j] * inv - top)
                total += e
                G[i, j] = e
                if kind == 1:
                    sum_pos += S[i, j] * inv
            else:
                G[i, j] = 0.0
        terms[i] = top + math.log(total) - sum_pos / n_pos
        valid[i] = 1.0
        c = inv * scale / total
        c_pos = inv * scale / n_pos
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 1:
                G[i, j] = G[i, j] * c - c_pos
            elif kind == 2:
                G[i, j] = G[i, j] * c


@_pjit
def ntxent(S, codes, ref_codes, own, pos_cut, neg_cut, temperature, scale, G, terms):
    r"""Per anchor, the sum over its positive pairs of :math:`\mathrm{softplus}(LSE_n(s_{in}/\tau)
    - s_{ip}/\tau)` (0 without negatives); G of their sum times ``scale``."""
    mined = pos_cut.shape[0] > 0
    inv = 1.0 / temperature
    for i in prange(S.shape[0]):
        top = -np.inf
        n_pos = 0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 2:
                top = max(top, S[i, j] * inv)
            elif kind == 1:
                n_pos += 1
        if top == -np.inf or n_pos == 0:
            _zero_row(G, terms, i)
            continue
        total = 0.0
        for j in range(S.shape[1]):
            if _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j]) == 2:
                e = math.exp(S[i, j] * inv - top)
                total += e
                G[i, j] = e
            else:
                G[i, j] = 0.0
        lse = top + math.log(total)
        loss = 0.0
        weight = 0.0  # sum over positives of sigmoid(lse - s_ip / tau)
        for j in range(S.shape[1]):
            if _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j]) == 1:
                z = lse - S[i, j] * inv
                loss += max(z, 0.0) + math.log1p(math.exp(-abs(z)))
                sig = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
                G[i, j] = -sig * inv * scale
                weight += sig
        terms[i] = loss
        c = weight * inv * scale / total
        for j in range(S.shape[1]):
            if _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j]) == 2:
                G[i, j] = G[i, j] * c


@_pjit
def lifted(S, codes, ref_codes, own, pos_cut, neg_cut, neg_margin, pos_margin, scale, G,
           terms):
    r"""Per anchor :math:`[LSE_p(d_{ip} - m_+) + LSE_n(m_- - d_{in})]_+` with
    :math:`d = \sqrt{[2 - 2s]_+}` (0, with a zero gradient, where it is 0; an empty LSE is 0);
    G (with respect to s) of their sum times ``scale``. The distances are kept in G between the
    passes: one ``sqrt`` and one ``exp`` per entry (and a ``sqrt`` for the gradient)."""
    mined = pos_cut.shape[0] > 0
    for i in prange(S.shape[0]):
        top_p = -np.inf
        top_n = -np.inf
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 0:
                G[i, j] = 0.0
                continue
            d = math.sqrt(max(2.0 - 2.0 * S[i, j], 0.0))
            G[i, j] = d
            if kind == 1:
                top_p = max(top_p, d - pos_margin)
            else:
                top_n = max(top_n, neg_margin - d)
        sum_p = 0.0
        sum_n = 0.0
        for j in range(S.shape[1]):
            kind = _kept(mined, pos_cut, neg_cut, codes, ref_codes, own, i, j, S[i, j])
            if kind == 1:
                e = math.exp(G[i, j] - pos_margin - top_p)
                sum_p += e
                G[i, j] = e
            elif kind == 2:
                e = math.exp(neg_margin - G[i, j] - top_n)
                sum_n += e
                G[i, j] = -e
        lse_p = top_p + math.log(sum_p) if sum_p > 0 else 0.0
        lse_n = top_n + math.log(sum_n) if sum_n > 0 else 0.0
        z = lse_p + lse_n
        terms[i] = max(z, 0.0)
        cp = -scale / sum_p if sum_p > 0 else 0.0
        cn = -scale / sum_n if sum_n > 0 else 0.0
        for j in range(S.shape[1]):
            g = G[i, j]
            if g == 0.0:
                continue
            d2 = max(2.0 - 2.0 * S[i, j], 0.0)
            if z <= 0 or d2 <= 0:
                G[i, j] = 0.0
            elif g > 0:  # dz/dd = e / sum_p, dd/ds = -1 / d
                G[i, j] = g * cp / math.sqrt(d2)
            else:  # dz/dd = -e / sum_n
                G[i, j] = -g * -cn / math.sqrt(d2)


@_pjit
def npairs(S, codes, anchor, positive, scale, G, terms):
    r"""N-pairs (Sohn 2016): for every anchor row (``anchor[i]``: the first image of a class
    with two or more), :math:`LSE_{l}(s_{i, p_l}) - s_{i, p_{k}}` over the positives p_l (the
    second image of each class; ``positive[j]``), its own class's positive the target; G of
    their sum."""
    for i in prange(S.shape[0]):
        _zero_row(G, terms, i)
        if not anchor[i]:
            continue
        top = -np.inf
        target = -1
        for j in range(S.shape[1]):
            if positive[j]:
                top = max(top, S[i, j])
                if codes[j] == codes[i]:
                    target = j
        total = 0.0
        for j in range(S.shape[1]):
            if positive[j]:
                total += math.exp(S[i, j] - top)
        terms[i] = top + math.log(total) - S[i, target]
        for j in range(S.shape[1]):
            if positive[j]:
                G[i, j] = math.exp(S[i, j] - top) / total * scale
        G[i, target] -= scale


@_pjit
def margin_all(S, codes, n_pos, n_neg, beta, margin, G, sums):
    r"""Margin loss (Wu et al. 2017) over every triplet of the batch, on d = sqrt([2 - 2s]_+):
    per anchor the sums of its positive terms [d_ap - beta + m]_+ times its negative count
    (``n_neg``) and of its negative terms [beta - d_an + m]_+ times its positive count
    (``n_pos``), the active counts likewise, the triplet count and d(sum)/d(beta); G (with
    respect to s) of the sum, unscaled (the caller scales the gradient of the embeddings)."""
    for i in prange(S.shape[0]):
        total = 0.0
        active = 0.0
        dbeta = 0.0
        for j in range(S.shape[1]):
            G[i, j] = 0.0
            if j == i:
                continue
            d2 = max(2.0 - 2.0 * S[i, j], 0.0)
            d = math.sqrt(d2)
            if codes[j] == codes[i]:
                term = d - beta + margin
                if term > 0:
                    total += term * n_neg[i]
                    active += n_neg[i]
                    dbeta -= n_neg[i]
                    if d2 > 0:
                        G[i, j] = n_neg[i] * (-1.0 / d)
            else:
                term = beta - d + margin
                if term > 0:
                    total += term * n_pos[i]
                    active += n_pos[i]
                    dbeta += n_pos[i]
                    if d2 > 0:
                        G[i, j] = n_pos[i] * (1.0 / d)
        sums[i, 0] = total
        sums[i, 1] = active
        sums[i, 2] = n_pos[i] * n_neg[i]
        sums[i, 3] = dbeta


@_pjit
def _symmetrize_tiles(G, tile_i, tile_j, bs):
    n = G.shape[0]
    for k in prange(len(tile_i)):
        bi = tile_i[k]
        bj = tile_j[k]
        for i in range(bi * bs, min((bi + 1) * bs, n)):
            start = i if bj == bi else bj * bs
            for j in range(start, min((bj + 1) * bs, n)):
                if i == j:
                    G[i, i] = 2 * G[i, i]
                else:
                    v = G[i, j] + G[j, i]
                    G[i, j] = v
                    G[j, i] = v


def symmetrize(G, bs=64):
    """G <- G + G^T in place, by bs x bs tiles (each tile and its transposed partner stay in
    cache; the tile pairs are shared evenly among the threads): dL/dU = (G + G^T) U is then one
    matrix product instead of two."""
    nb = (G.shape[0] + bs - 1) // bs
    tile_i, tile_j = np.triu_indices(nb)
    _symmetrize_tiles(G, tile_i.astype(np.int64), tile_j.astype(np.int64), bs)
