"""Naive loop references of the similarity and proxy losses (pytorch-metric-learning 2.9's
definitions, written pair by pair): slow, obvious, the oracle of dml.losses.similarity and
dml.losses.proxies."""
import math
import numpy as np

def cos(x, refs=None):
    u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if refs is not None:  # anchors x references (a cross-batch memory)
        return u @ (refs / np.maximum(np.linalg.norm(refs, axis=1, keepdims=True), 1e-12)).T
    return u @ u.T

def pairs(labels, indices=None, ref_labels=None, own=None):
    """Positive and negative (anchor, other) pairs; with ``ref_labels`` the others are
    references (a memory), ``own[i]`` the reference that is anchor i itself (left out)."""
    B = len(labels)
    if ref_labels is not None:
        M = len(ref_labels)
        if indices is not None:
            a1, p, a2, n = indices
            P = sorted((a, j) for a, j in set(zip(a1, p)) if j != own[a])
            return P, sorted(set(zip(a2, n)))
        P = [(i, j) for i in range(B) for j in range(M) if labels[i] == ref_labels[j] and j != own[i]]
        N = [(i, j) for i in range(B) for j in range(M) if labels[i] != ref_labels[j]]
        return P, N
    if indices is None:
        P = [(i, j) for i in range(B) for j in range(B) if i != j and labels[i] == labels[j]]
        N = [(i, j) for i in range(B) for j in range(B) if labels[i] != labels[j]]
    else:
        a1, p, a2, n = indices
        P, N = sorted(set(zip(a1, p))), sorted(set(zip(a2, n)))
    return P, N

def lse(values, add_one):
    if not values:
        return 0.0
    vals = list(values) + ([0.0] if add_one else [])
    m = max(vals)
    return m + math.log(sum(math.exp(v - m) for v in vals))

def ms(x, labels, alpha=2, beta=50, base=0.5, indices=None, refs=None, ref_labels=None, own=None):
    s = cos(x, refs); B = len(x); P, N = pairs(labels, indices, ref_labels, own)
    if len(P) <= 1 and len(N) <= 1:
        return 0.0
    total = 0.0
    for i in range(B):
        total += lse([-alpha * (s[i, j] - base) for a, j in P if a == i], True) / alpha
        total += lse([beta * (s[i, j] - base) for a, j in N if a == i], True) / beta
    return total / B

def circle(x, labels, m=0.4, gamma=80, indices=None, weights_at=None, refs=None, ref_labels=None,
           own=None):
    """``weights_at``: the embeddings the weights alpha_p, alpha_n are computed from (PML
    detaches them: its gradient treats them as constants; finite differences must too)."""
    s = cos(x, refs); B = len(x); P, N = pairs(labels, indices, ref_labels, own)
    w = s if weights_at is None else cos(weights_at, refs)
    if len(P) <= 1 and len(N) <= 1:
        return 0.0
    losses = []
    for i in range(B):
        lp = [-gamma * max(1 + m - w[i, j], 0) * (s[i, j] - (1 - m)) for a, j in P if a == i]
        ln = [gamma * max(w[i, j] + m, 0) * (s[i, j] - m) for a, j in N if a == i]
        if lp and ln:
            z = lse(lp, False) + lse(ln, False)
            losses.append(max(z, 0) + math.log1p(math.exp(-abs(z))))
    return float(np.mean(losses)) if losses else 0.0

def supcon(x, labels, temperature=0.1, indices=None, refs=None, ref_labels=None, own=None):
    s = cos(x, refs) / temperature; B = len(x); P, N = pairs(labels, indices, ref_labels, own)
    if len(P) <= 1 and len(N) <= 1 or not P or not N:
        return 0.0
    losses = []
    for i in range(B):
        pi = [j for a, j in P if a == i]
        if not pi:
            continue
        denom = lse([s[i, j] for a, j in P + N if a == i], False)
        losses.append(-np.mean([s[i, j] - denom for j in pi]))
    return float(np.mean(losses))

def ntxent(x, labels, temperature=0.07, indices=None, refs=None, ref_labels=None, own=None):
    s = cos(x, refs) / temperature; P, N = pairs(labels, indices, ref_labels, own)
    if len(P) <= 1 and len(N) <= 1 or not P or not N:
        return 0.0
    losses = []
    for a, p in P:
        negs = [s[a, n] for a2, n in N if a2 == a]
        losses.append(lse([s[a, p]] + negs, False) - s[a, p])
    return float(np.mean(losses))

def _unit(v):
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

def proxy_anchor(x, labels, P, margin=0.1, alpha=32):
    s = _unit(x) @ _unit(P).T; C = len(P); B = len(x)
    present = sorted(set(int(l) for l in labels))
    pos = sum(lse([-alpha * (s[i, c] - margin) for i in range(B) if labels[i] == c], True) for c in range(C))
    neg = sum(lse([alpha * (s[i, c] + margin) for i in range(B) if labels[i] != c], True) for c in range(C))
    return pos / max(len(present), 1) + neg / C

def _ce(logits, labels):
    return float(np.mean([lse(list(row), False) - row[int(y)] for row, y in zip(logits, labels)]))

def proxy_nca(x, labels, P, softmax_scale=1):
    ux, up = _unit(x), _unit(P)
    d2 = np.array([[np.sum((a - b) ** 2) for b in up] for a in ux])
    return _ce(-softmax_scale * d2, labels)

def normalized_softmax(x, labels, P, temperature=0.05):
    return _ce(_unit(x) @ _unit(P).T / temperature, labels)

def soft_triple(x, labels, P, centers_per_class=10, la=20, gamma=0.1, margin=0.01):
    s = _unit(x) @ _unit(P).T; C = len(P) // centers_per_class
    logits = np.zeros((len(x), C))
    for i in range(len(x)):
        for c in range(C):
            sc = s[i, c * centers_per_class:(c + 1) * centers_per_class]
            w = np.exp(sc / gamma - np.max(sc / gamma)); w /= w.sum()
            logits[i, c] = la * (np.sum(w * sc) - (margin if c == labels[i] else 0))
    return _ce(logits, labels)

def lifted(x, labels, neg_margin=1.0, pos_margin=0.0, indices=None, refs=None, ref_labels=None,
           own=None):
    u = _unit(x); B = len(x); P, N = pairs(labels, indices, ref_labels, own)
    if len(P) <= 1 and len(N) <= 1:
        return 0.0
    r = u if refs is None else _unit(refs)
    d = np.sqrt(np.maximum(((u[:, None] - r[None]) ** 2).sum(-1), 0))
    total = 0.0
    for i in range(B):
        total += max(lse([d[i, j] - pos_margin for a, j in P if a == i], False)
                     + lse([neg_margin - d[i, j] for a, j in N if a == i], False), 0)
    return total / B

def npairs(x, labels):
    s = cos(x); firsts = {}
    for i, y in enumerate(labels):
        firsts.setdefault(y, []).append(i)
    chosen = [(v[0], v[1]) for v in firsts.values() if len(v) >= 2]
    if not chosen:
        return 0.0
    chosen.sort()
    ps = [p for _, p in chosen]
    return float(np.mean([lse([s[a, q] for q in ps], False) - s[a, p] for a, p in chosen]))


def ms_miner(x, labels, epsilon=0.1):
    """(a1, p, a2, n) of the multi-similarity miner, anchor by anchor."""
    s = cos(x)
    B = len(x)
    a1, p, a2, n = [], [], [], []
    for i in range(B):
        positives = [j for j in range(B) if j != i and labels[j] == labels[i]]
        negatives = [j for j in range(B) if labels[j] != labels[i]]
        if not positives or not negatives:
            continue
        hardest_pos = min(s[i, j] for j in positives)
        hardest_neg = max(s[i, j] for j in negatives)
        for j in range(B):
            if j in positives and s[i, j] - epsilon < hardest_neg:
                a1.append(i), p.append(j)
            if j in negatives and s[i, j] + epsilon > hardest_pos:
                a2.append(i), n.append(j)
    return tuple(np.array(v, dtype=np.int64) for v in (a1, p, a2, n))


def margin_loss(x, labels, margin=0.2, beta=1.2, nu=0.0, indices=None):
    """Every triplet (or the given ones): the sum of both hinge terms over the number of terms
    that are > 0."""
    u = _unit(x)
    B = len(x)
    d = lambda i, j: math.sqrt(max(float(np.sum((u[i] - u[j]) ** 2)), 0.0))  # noqa: E731
    if indices is None:
        triplets = [(a, p, n) for a in range(B) for p in range(B) for n in range(B)
                    if p != a and labels[p] == labels[a] and labels[n] != labels[a]]
    else:
        triplets = list(zip(*indices))
    total, active = 0.0, 0
    for a, p, n in triplets:
        pos, neg = max(d(a, p) - beta + margin, 0), max(beta - d(a, n) + margin, 0)
        total += pos + neg
        active += (pos > 0) + (neg > 0)
    loss = total / max(active, 1)
    if nu and triplets:
        loss += nu * beta / max(active, 1)
    return loss


def dw_weights(x, labels, cutoff=0.5, nonzero_loss_cutoff=1.4):
    """The distance-weighted sampling weights, entry by entry."""
    u = _unit(x)
    B, D = x.shape
    raw = np.zeros((B, B))
    logs = {}
    for i in range(B):
        for j in range(B):
            d = max(math.sqrt(max(float(np.sum((u[i] - u[j]) ** 2)), 0.0)) + (i == j), cutoff)
            inner = 1.0 - 0.25 * d * d
            if inner > 0:
                logs[i, j] = (2.0 - D) * math.log(d) - ((D - 3) / 2.0) * math.log(inner)
    top = max(logs.values())
    for (i, j), value in logs.items():
        d = max(math.sqrt(max(float(np.sum((u[i] - u[j]) ** 2)), 0.0)) + (i == j), cutoff)
        if labels[i] != labels[j] and d < nonzero_loss_cutoff:
            raw[i, j] = math.exp(value - top)
    for i in range(B):
        if raw[i].sum() > 0:
            raw[i] /= raw[i].sum()
    return raw

def pair_dist(a, b, distance):
    """d(a, b) of two vectors: euclidean, squared, or cosine (1 - cos, at least 0)."""
    if distance == "cosine":
        return max(1 - float(a @ b) / max(np.linalg.norm(a), 1e-12)
                   / max(np.linalg.norm(b), 1e-12), 0.0)
    d2 = float(sum((ai - bi) ** 2 for ai, bi in zip(a, b)))
    return d2 if distance == "squared" else math.sqrt(d2)


def contrastive(x, labels, refs, ref_labels, own, margin=1.0, distance="euclidean",
                selector="all_positive", indices=None):
    """The online contrastive loss of anchors against a memory, pair by pair: Hadsell's halved
    terms over (anchor, reference) pairs, ``hard_negative`` keeping the |P| closest negatives;
    returns ``(loss, active fraction)``."""
    def dist(a, b):
        return pair_dist(a, b, distance)

    P, N = pairs(labels, indices, ref_labels, own)
    if selector == "hard_negative" and indices is None and len(N) > len(P):
        N = sorted(N, key=lambda ij: dist(x[ij[0]], refs[ij[1]]))[:len(P)]
    if not P or not N:
        return 0.0, 0.0
    terms = [0.5 * dist(x[i], refs[j]) ** 2 for i, j in P]
    terms += [0.5 * max(margin - dist(x[i], refs[j]), 0.0) ** 2 for i, j in N]
    return sum(terms) / len(terms), sum(t > 0 for t in terms) / len(terms)
