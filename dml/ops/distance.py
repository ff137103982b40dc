"""Pairwise distance matrices written with ``F`` ops only, so they hybridize: the losses' view of
:mod:`dml.distances`, where each distance is defined (this module keeps the names the losses
have always imported).

For embeddings x (B x D):

- ``squared``:   D2[i, j] = max(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, 0), with D2[i, i] = 0
- ``euclidean``: D[i, j] = sqrt(D2[i, j]), with a zero-safe square root: where D2 == 0 the value
  is exactly 0 and the gradient is 0 (not inf), so coinciding embeddings keep gradients finite.
- ``cosine``:    D[i, j] = 1 - x_i.x_j / (|x_i| |x_j|)

One B x D . D x B product and a few elementwise passes over B x B.
"""
from ..distances import NORM_EPS as _NORM_EPS  # noqa: F401  (the losses' old name for it)
from ..distances import diagonal_mask, get_distance, safe_sqrt  # noqa: F401
from ..registry import DISTANCES  # noqa: F401  (dml.losses exports it)
from .checks import check_distance  # noqa: F401  (where the losses import it from)


def pairwise_distance(F, x, distance="euclidean"):
    """The B x B distance matrix of the rows of ``x``."""
    return get_distance(distance).pairwise(F, x)


def pair_distance(F, a, b, distance="euclidean"):
    """Row-wise distance d(a_i, b_i) of two B x D arrays (length B), same definitions and the
    same zero-safe square root as :func:`pairwise_distance`."""
    return get_distance(distance).pair(F, a, b)
