"""The three distances, defined once: every loss, the compiled kernels' host code, the miners,
evaluation, the index and the memory use these objects (a name string resolves to one with
:func:`get_distance`).

For rows x_i, x_j, with the unit rows u = x / sqrt(|x|^2 + eps) (MXNet's
``L2Normalization(mode="instance")``, eps = :data:`NORM_EPS`):

- ``euclidean``: d = sqrt(max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 0)), with a zero-safe square root in
  the F-op form (where the square is 0 the value is exactly 0 and the gradient 0, not inf);
- ``squared``:   d = max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 0) (ranks as ``euclidean``);
- ``cosine``:    d = 1 - u_i.u_j (the F-op and the losses' form clip it at 0: ``relu(1 - u.u)``).

A pairwise matrix of a batch with itself has an exact 0 diagonal. Each form costs one
matrix product and a few passes over the result. Numpy only here (MXNet's ``F`` is passed in by
the caller), so the lowest layers can use it.
"""
import numpy as np

from .registry import DISTANCES

NORM_EPS = 1e-12  # the unit rows' epsilon, everywhere (losses, kernels, miners, evaluation)


def unit_rows(x, return_norms=False):
    """``x / sqrt(|x|^2 + eps)`` row by row in x's floating dtype (and the norms with
    ``return_norms``): MXNet's ``L2Normalization(mode="instance", eps=NORM_EPS)`` in numpy."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x) + NORM_EPS).astype(x.dtype)
    unit = x / norms[:, None]
    return (unit, norms) if return_norms else unit


def safe_sqrt(F, d2):
    """sqrt(d2) that is exactly 0 with a zero gradient (not inf) where d2 == 0."""
    is_zero = d2 <= 0
    return F.sqrt(d2 + is_zero * 1e-16) * (1 - is_zero)


def diagonal_mask(F, square):
    """Mask of ``square``'s shape and dtype, 1 on the diagonal (no batch size needed up front)."""
    idx = F.contrib.arange_like(square, axis=0)
    return F.broadcast_equal(idx.reshape((-1, 1)), idx.reshape((1, -1)))


class Distance:
    """One of the distances above: ``name`` (what a user types), ``code`` (the compiled
    kernels' number), and its forms: :meth:`pairwise` and :meth:`pair` in MXNet ``F`` ops (they
    hybridize), :meth:`matrix` in numpy."""

    def __init__(self, name, code):
        self.name, self.code = name, code

    def __repr__(self):
        return "Distance(%r)" % self.name

    def __str__(self):
        return self.name

    def __eq__(self, other):
        return self.name == (other.name if isinstance(other, Distance) else other)

    def __hash__(self):
        return hash(self.name)

    @property
    def normalizes(self):
        """Whether the distance compares the unit rows (cosine) rather than the rows."""
        return self.name == "cosine"

    def pairwise(self, F, x):
        """The B x B distance matrix of the rows of ``x`` (F ops), exact 0 diagonal."""
        if self.normalizes:
            unit = F.L2Normalization(x, mode="instance", eps=NORM_EPS)
            gram = F.dot(unit, unit, transpose_b=True)
            return F.relu(1 - gram) * (1 - diagonal_mask(F, gram))
        sq_norm = F.sum(F.square(x), axis=1)
        gram = F.dot(x, x, transpose_b=True)
        off_diagonal = 1 - diagonal_mask(F, gram)
        d2 = F.broadcast_add(sq_norm.reshape((-1, 1)), sq_norm.reshape((1, -1))) - 2 * gram
        d2 = F.relu(d2) * off_diagonal
        return d2 if self.name == "squared" else safe_sqrt(F, d2)

    def pair(self, F, a, b):
        """Row-wise d(a_i, b_i) of two B x D arrays (F ops), as :meth:`pairwise`."""
        if self.normalizes:
            a = F.L2Normalization(a, mode="instance", eps=NORM_EPS)
            b = F.L2Normalization(b, mode="instance", eps=NORM_EPS)
            return F.relu(1 - F.sum(a * b, axis=1))
        d2 = F.sum(F.square(a - b), axis=1)
        return d2 if self.name == "squared" else safe_sqrt(F, d2)

    def rowwise(self, a, b):
        """d(a_i, b_i) of two numpy N x D arrays, row by row (cosine not clipped)."""
        if self.normalizes:
            return 1.0 - np.einsum("ij,ij->i", unit_rows(a), unit_rows(b))
        d2 = np.sum((a - b) ** 2, axis=1)
        return d2 if self.name == "squared" else np.sqrt(d2)

    def from_search(self, raw):
        """The distance of a nearest-neighbour search's raw scores (float64): an inner product
        of unit rows for cosine (``1 - raw``), a squared L2 distance otherwise (faiss)."""
        raw = np.asarray(raw, dtype=np.float64)
        if self.normalizes:
            return 1.0 - raw
        return np.maximum(raw, 0.0) if self.name == "squared" else np.sqrt(np.maximum(raw, 0.0))

    def matrix(self, queries, references):
        """The Q x R numpy matrix d(q_i, r_j) (cosine not clipped: 1 - u.u). The dtype is the
        inputs' (float64 for integers)."""
        if self.normalizes:
            return 1.0 - unit_rows(queries) @ unit_rows(references).T
        d2 = (np.sum(queries ** 2, 1)[:, None] + np.sum(references ** 2, 1)[None, :]
              - 2.0 * queries @ references.T)
        d2 = np.maximum(d2, 0.0)
        return d2 if self.name == "squared" else np.sqrt(d2)


EUCLIDEAN, SQUARED, COSINE = (Distance(name, code) for code, name in enumerate(
    ("euclidean", "squared", "cosine")))
_BY_NAME = {d.name: d for d in (EUCLIDEAN, SQUARED, COSINE)}  # dml.registry.DISTANCES' names


def get_distance(distance):
    """The :class:`Distance` named ``distance`` (a name, or a Distance, returned as is); an
    unknown name is a ValueError that lists the valid ones."""
    if isinstance(distance, Distance):
        return distance
    try:
        return _BY_NAME[distance]
    except (KeyError, TypeError):
        raise ValueError("distance must be one of %s, not %r" % ("|".join(DISTANCES), distance))
