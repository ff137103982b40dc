"""Naive loop references: slow, obvious, and the oracle for every vectorized loss."""
import numpy as np


def numeric_gradient(f, x, h=1e-6):
    """Central finite differences of the scalar function ``f`` at every entry of ``x``."""
    grad = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        grad[idx] = (f(plus) - f(minus)) / (2 * h)
    return grad


def naive_distance(x, distance):
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if distance == "cosine":
                ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
                d[i, j] = max(1.0 - float(x[i] @ x[j]) / max(ni * nj, 1e-24), 0.0)
            else:
                sq = float(np.sum((x[i] - x[j]) ** 2))
                d[i, j] = sq if distance == "squared" else np.sqrt(sq)
    return d


def _pairs(labels, unordered):
    """Every positive pair (a, p), a != p (a < p if ``unordered``), as a loop."""
    n = len(labels)
    for a in range(n):
        for p in range(n):
            if p != a and labels[p] == labels[a] and (p > a or not unordered):
                yield a, p


def _negatives(labels, a):
    return [n for n in range(len(labels)) if labels[n] != labels[a]]


def _semihard_target(d, a, p, negatives):
    """d(a, n) of the semi-hard negative: the closest farther than p, else the farthest."""
    farther = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
    return min(farther) if farther else max(d[a, n] for n in negatives)


def naive_semihard(x, labels, margin, distance):
    """TensorFlow's triplet_semihard_loss, written as loops; anchors without negatives skipped.
    Returns (loss, active_fraction)."""
    d = naive_distance(np.asarray(x, dtype=np.float64), distance)
    labels = list(labels)
    total, count, active = 0.0, 0, 0
    for a, p in _pairs(labels, unordered=False):
        negatives = _negatives(labels, a)
        if not negatives:
            continue
        value = max(d[a, p] - _semihard_target(d, a, p, negatives) + margin, 0.0)
        total += value
        count += 1
        active += value > 0
    if count == 0:
        return 0.0, 0.0
    return total / count, active / count


def naive_semihard_choice(d, labels):
    """For each ordered positive pair: the set of negatives that the definition allows
    (all negatives at the chosen distance)."""
    allowed = {}
    for a, p in _pairs(list(labels), unordered=False):
        negatives = _negatives(labels, a)
        if negatives:
            target = _semihard_target(d, a, p, negatives)
            allowed[(a, p)] = {n for n in negatives if d[a, n] == target}
    return allowed


def naive_pair_distance(x1, x2, distance):
    return np.array([naive_distance(np.stack([u, v]), distance)[0, 1] for u, v in zip(x1, x2)])


def naive_contrastive(x1, x2, y, margin, distance):
    d = naive_pair_distance(np.asarray(x1, np.float64), np.asarray(x2, np.float64), distance)
    terms = [0.5 * (yi * di ** 2 + (1 - yi) * max(margin - di, 0.0) ** 2) for di, yi in zip(d, y)]
    return float(np.mean(terms)), float(np.mean([t > 0 for t in terms]))


def naive_triplet(a, p, n, margin, distance):
    d_ap = naive_pair_distance(np.asarray(a, np.float64), np.asarray(p, np.float64), distance)
    d_an = naive_pair_distance(np.asarray(a, np.float64), np.asarray(n, np.float64), distance)
    terms = [max(x - y + margin, 0.0) for x, y in zip(d_ap, d_an)]
    return float(np.mean(terms)), float(np.mean([t > 0 for t in terms]))


def naive_batch_hard(x, labels, margin, distance):
    d = naive_distance(np.asarray(x, dtype=np.float64), distance)
    labels = list(labels)
    terms = []
    for a in range(len(labels)):
        positives = [p for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = _negatives(labels, a)
        if positives and negatives:
            terms.append(max(max(d[a, p] for p in positives) - min(d[a, n] for n in negatives)
                             + margin, 0.0))
    if not terms:
        return 0.0, 0.0
    return float(np.mean(terms)), float(np.mean([t > 0 for t in terms]))


def all_triplet_terms(x, labels, margin, distance, unordered=False):
    d = naive_distance(np.asarray(x, dtype=np.float64), distance)
    labels = list(labels)
    return [max(d[a, p] - d[a, n] + margin, 0.0)
            for a, p in _pairs(labels, unordered) for n in _negatives(labels, a)]


def naive_batch_all(x, labels, margin, distance):
    """Mean over the positive-loss triplets; fraction of valid triplets with positive loss."""
    terms = all_triplet_terms(x, labels, margin, distance)
    positive = [t for t in terms if t > 0]
    if not positive:
        return 0.0, 0.0
    return float(np.mean(positive)), len(positive) / len(terms)


def naive_online_triplet_all(x, labels, margin, distance):
    """adambielski's AllTripletSelector: the mean over every triplet a < p, n (zeros included)."""
    terms = all_triplet_terms(x, labels, margin, distance, unordered=True)
    if not terms:
        return 0.0, 0.0
    return float(np.mean(terms)), float(np.mean([t > 0 for t in terms]))


def naive_allowed_negatives(d, labels, selector, margin):
    """For each pair a < p: the negatives ``selector`` may choose (empty: the pair is skipped)."""
    allowed = {}
    for a, p in _pairs(list(labels), unordered=True):
        negatives = _negatives(labels, a)
        if not negatives:
            continue
        if selector == "hardest":
            closest = min(d[a, n] for n in negatives)
            options = {n for n in negatives if d[a, n] == closest and d[a, n] < d[a, p] + margin}
        elif selector == "random_hard":
            options = {n for n in negatives if d[a, n] < d[a, p] + margin}
        elif selector == "semihard":
            options = {n for n in negatives if d[a, p] < d[a, n] < d[a, p] + margin}
        else:
            raise ValueError(selector)
        allowed[(a, p)] = options
    return allowed


def naive_online_contrastive(x, labels, margin, selector, distance):
    d = naive_distance(np.asarray(x, dtype=np.float64), distance)
    labels = list(labels)
    n = len(labels)
    positive = [(a, b) for a in range(n) for b in range(a + 1, n) if labels[a] == labels[b]]
    negative = [(a, b) for a in range(n) for b in range(a + 1, n) if labels[a] != labels[b]]
    if not positive or not negative:
        return 0.0, 0.0
    if selector == "hard_negative":
        negative = sorted(negative, key=lambda ab: d[ab])[:len(positive)]
    terms = [0.5 * d[ab] ** 2 for ab in positive]
    terms += [0.5 * max(margin - d[ab], 0.0) ** 2 for ab in negative]
    return float(np.mean(terms)), float(np.mean([t > 0 for t in terms]))
