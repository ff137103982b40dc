"""Pairwise distance matrices written with ``F`` ops only, so they hybridize.

For embeddings x (B x D):

- ``squared``:   D2[i, j] = max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 0), with D2[i, i] = 0
- ``euclidean``: D[i, j] = sqrt(D2[i, j]), with a zero-safe square root: where D2 == 0 the value
  is exactly 0 and the gradient is 0 (not inf), so coinciding embeddings keep gradients finite.
- ``cosine``:    D[i, j] = 1 - x_i.x_j / (|x_i| |x_j|)

One B x D . D x B product and a few elementwise passes over B x B.
"""

from ..registry import DISTANCES  # noqa: E402
_NORM_EPS = 1e-12


def check_distance(distance):
    if distance not in DISTANCES:
        raise ValueError("distance must be one of %s, not %r" % ("|".join(DISTANCES), distance))
    return distance


def safe_sqrt(F, d2):
    """sqrt(d2) that is exactly 0 with a zero gradient (not inf) where d2 == 0."""
    is_zero = d2 <= 0
    return F.sqrt(d2 + is_zero * 1e-16) * (1 - is_zero)


def diagonal_mask(F, square):
    """Mask of ``square``'s shape and dtype, 1 on the diagonal (no batch size needed up front)."""
    idx = F.contrib.arange_like(square, axis=0)
    return F.broadcast_equal(idx.reshape((-1, 1)), idx.reshape((1, -1)))


def pairwise_distance(F, x, distance="euclidean"):
    """The B x B distance matrix of the rows of ``x``."""
    if distance == "cosine":
        unit = F.L2Normalization(x, mode="instance", eps=_NORM_EPS)
        gram = F.dot(unit, unit, transpose_b=True)
        return F.relu(1 - gram) * (1 - diagonal_mask(F, gram))
    sq_norm = F.sum(F.square(x), axis=1)
    gram = F.dot(x, x, transpose_b=True)
    off_diagonal = 1 - diagonal_mask(F, gram)
    d2 = F.broadcast_add(sq_norm.reshape((-1, 1)), sq_norm.reshape((1, -1))) - 2 * gram
    d2 = F.relu(d2) * off_diagonal
    if distance == "squared":
        return d2
    return safe_sqrt(F, d2)


def pair_distance(F, a, b, distance="euclidean"):
    """Row-wise distance d(a_i, b_i) of two B x D arrays (length B), same definitions and the
    same zero-safe square root as :func:`pairwise_distance`."""
    if distance == "cosine":
        a = F.L2Normalization(a, mode="instance", eps=_NORM_EPS)
        b = F.L2Normalization(b, mode="instance", eps=_NORM_EPS)
        return F.relu(1 - F.sum(a * b, axis=1))
    d2 = F.sum(F.square(a - b), axis=1)
    if distance == "squared":
        return d2
    return safe_sqrt(F, d2)
