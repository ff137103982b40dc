"""A miner's index tuples as the losses take them: pairs ``(a1, p, a2, n)`` and triplets
``(a, p, n)`` converted into each other (PML's ``convert_to_triplets`` / ``convert_to_pairs``),
as NDArrays for a hybridized graph, and :class:`GraphOf`, the block that scores them. Below both
the losses and the miners (:mod:`dml.miners`), which import it and never each other."""
import mxnet as mx
import numpy as np
from mxnet import gluon


class GraphOf(gluon.HybridBlock):
    """``function(F, *inputs)`` as a block of its own: a loss scored on a miner's index tuples
    takes more inputs than the loss alone, and a hybridized graph has a fixed number of inputs.
    (A function, not the owning block: the owner is not registered as a child.)"""

    def __init__(self, function, **kwargs):
        super().__init__(**kwargs)
        self._function = function

    def hybrid_forward(self, F, *inputs):
        return self._function(F, *inputs)


def _empty_triplets():
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty.copy(), empty.copy()


def triplets_to_pairs(indices):
    """A triplet miner's ``(a, p, n)`` as the pairs ``(a, p, a, n)`` (PML's
    ``convert_to_pairs``); pairs pass unchanged."""
    if len(indices) == 4:
        return tuple(indices)
    a, p, n = indices
    return a, p, a, n


def pairs_to_triplets(indices):
    """A pair miner's ``(a1, p, a2, n)`` as triplets: every positive pair with every negative
    pair of the same anchor (PML's ``convert_to_triplets``); triplets pass unchanged."""
    if len(indices) == 3:
        return tuple(indices)
    a1, p, a2, n = (np.asarray(i, dtype=np.int64).reshape(-1) for i in indices)
    out_a, out_p, out_n = [], [], []
    for anchor in np.unique(a1):
        positives, negatives = p[a1 == anchor], n[a2 == anchor]
        if len(positives) and len(negatives):
            out_a.append(np.full(len(positives) * len(negatives), anchor))
            out_p.append(np.repeat(positives, len(negatives)))
            out_n.append(np.tile(negatives, len(positives)))
    if not out_a:
        return _empty_triplets()
    return tuple(np.concatenate(v).astype(np.int64) for v in (out_a, out_p, out_n))


def as_index_arrays(indices, like, count=4):
    """A miner's (a1, p, a2, n) (or ``count`` arrays) as NDArrays of ``like``'s dtype and
    context (one -1 entry for an empty tuple, which selects nothing)."""
    if count == 4 and len(indices) != 4:
        raise ValueError("indices must be the pairs (a1, p, a2, n) of a pair miner, not %d "
                         "arrays" % len(indices))
    out = []
    for index in indices:
        index = index.asnumpy() if hasattr(index, "asnumpy") else np.asarray(index)
        index = index.reshape(-1).astype(np.float64)
        out.append(mx.nd.array(index if len(index) else np.array([-1.0]), ctx=like.context,
                               dtype=like.dtype))
    return out


_as_arrays = as_index_arrays  # the name it had in dml.losses.similarity
