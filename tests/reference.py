"""Naive loop references: slow, obvious, and the oracle for every vectorized loss."""
import numpy as np


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


def naive_semihard(x, labels, margin, distance):
    """TensorFlow's triplet_semihard_loss, written as loops; anchors without negatives skipped.
    Returns (loss, active_fraction)."""
    d = naive_distance(np.asarray(x, dtype=np.float64), distance)
    labels = list(labels)
    total, count, active = 0.0, 0, 0
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
            d_an = min(farther) if farther else max(d[a, n] for n in negatives)
            value = max(d[a, p] - d_an + margin, 0.0)
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
    for a in range(len(labels)):
        negatives = [n for n in range(len(labels)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
            target = min(farther) if farther else max(d[a, n] for n in negatives)
            allowed[(a, p)] = {n for n in negatives if d[a, n] == target}
    return allowed
