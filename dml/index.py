"""A nearest-neighbour index over a gallery's embeddings, with faiss, in the distance of the run
that embedded it: what ``dml index`` builds and ``dml search`` queries.

The distances are :mod:`dml.distances`' (:meth:`Distance.from_search` reads faiss' scores):

- ``euclidean``: ||q - g||, ``squared``: ||q - g||^2 (faiss' L2 index, which returns the squared
  distance),
- ``cosine``: 1 - q.g / (||q|| ||g||) (an inner-product index over L2-normalized vectors).

Kinds: ``exact`` (a flat index: every gallery vector is compared, the results are those of
brute force), ``ivf`` (an inverted file of ``nlist`` k-means cells, ``nprobe`` of them visited per
query) and ``hnsw`` (a graph of ``M`` links per vector, ``ef`` candidates per query): the
approximate kinds trade recall for speed on large galleries (see doc/serving.md).
"""
import contextlib
import math
import os
import sys

import numpy as np

from .distances import get_distance, unit_rows
from .errors import DmlError

KINDS = ("exact", "ivf", "hnsw")
HNSW_M = 32


def _faiss():
    try:
        import faiss
    except ImportError:
        raise DmlError("faiss is not installed: run make install (it installs faiss-cpu)") \
            from None
    return faiss


def default_nlist(n):
    """IVF cells for ``n`` vectors: about 4 sqrt(n) (faiss' guideline), and at least 39 training
    vectors per cell (fewer make k-means warn and its cells meaningless)."""
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39)))


@contextlib.contextmanager
def _native_stderr():
    """Collect what native code writes to file descriptor 2 while the block runs (Python's own
    ``sys.stderr`` is untouched): yields a function returning it, stripped."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace").strip())[1]
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def default_nprobe(nlist):
    """Cells visited per query: 1/16 of them, at least 8 (recall 0.95+ on clustered data, see
    doc/serving.md)."""
    return int(min(nlist, max(8, nlist // 16)))


def prepared(vectors, distance):
    """float32 C-contiguous vectors in the index's space (L2-normalized for cosine)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if get_distance(distance).normalizes:
        x = unit_rows(x)
    return np.ascontiguousarray(x, dtype=np.float32)


class SearchIndex:
    """A faiss index of ``count`` vectors of ``dim`` dimensions, searched in ``distance``."""

    def __init__(self, index, distance, kind, nlist=None):
        self.index, self.distance, self.kind, self.nlist = index, distance, kind, nlist

    @property
    def count(self):
        return int(self.index.ntotal)

    @property
    def dim(self):
        return int(self.index.d)

    @classmethod
    def build(cls, vectors, distance="euclidean", kind="exact", nlist=None, seed=0):
        """An index of ``vectors`` (N x D)."""
        faiss = _faiss()
        if kind not in KINDS:
            raise DmlError("unknown index kind %r: choose one of %s" % (kind, ", ".join(KINDS)))
        x = prepared(vectors, distance)
        n, dim = x.shape
        metric = faiss.METRIC_INNER_PRODUCT if distance == "cosine" else faiss.METRIC_L2
        if kind == "exact":
            index = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, metric)
        else:
            nlist = nlist or default_nlist(n)
            if nlist > n:
                raise DmlError("nlist=%d IVF cells need at least as many gallery images (%d)"
                               % (nlist, n))
            quantizer = faiss.IndexFlatIP(dim) if distance == "cosine" else faiss.IndexFlatL2(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
            index.cp.seed = seed
            index.cp.max_points_per_centroid = 64  # k-means on a sample: 64 vectors per cell
            index.train(x)  # (faiss' wrapper keeps the quantizer alive with the index)
        index.add(x)
        return cls(index, distance, kind, nlist if kind == "ivf" else None)

    def check_k(self, k):
        if not 1 <= k <= self.count:
            raise DmlError("k=%d but the gallery holds %d images: choose k between 1 and %d"
                           % (k, self.count, self.count))

    def search(self, queries, k, nprobe=None, ef=None):
        """``(distances, indices)``, each Q x k, nearest first; an index of -1 (distance inf)
        where an approximate index found fewer than k neighbours."""
        self.check_k(k)
        q = prepared(queries, self.distance)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DmlError("the queries have %s dimensions, the index %d"
                           % (q.shape[1:] or "no", self.dim))
        if self.kind == "ivf":
            self.index.nprobe = int(nprobe or default_nprobe(self.nlist))
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = int(max(ef or 64, k))
        raw, indices = self.index.search(q, k)
        dist = get_distance(self.distance).from_search(raw)
        dist[indices < 0] = np.inf
        return dist, indices.astype(np.int64)

    def save(self, path):
        """Write the index to ``path``. faiss reports a failed write on the process's stderr
        itself (a C++ line without a newline) before raising: that line is kept off the
        terminal, where it would be glued in front of dml's one-line error, and put in the
        exception instead."""
        with _native_stderr() as said:
            try:
                _faiss().write_index(self.index, path)
            except RuntimeError as err:
                raise OSError("%s%s" % (err, (" (faiss: %s)" % said()) if said() else "")) \
                    from None

    @classmethod
    def load(cls, path, distance, kind, nlist=None, count=None, dim=None):
        """The index saved at ``path``; it must be of ``kind`` (and hold ``count`` vectors of
        ``dim`` dimensions when given), else a :class:`DmlError`. A file too small for the
        vectors it is said to hold is refused before faiss allocates them."""
        import os

        faiss = _faiss()
        if count is not None and dim is not None and os.path.getsize(path) < 4 * count * dim:
            raise DmlError("%s holds %d bytes, too few for %d vectors of %d dimensions: rebuild "
                           "the index" % (path, os.path.getsize(path), count, dim))
        try:
            index = faiss.read_index(path)  # (of its own class: IndexFlatL2, IndexHNSWFlat, ...)
        except (RuntimeError, MemoryError) as err:
            raise DmlError("%s is not a faiss index this faiss can read (%s)"
                           % (path, str(err).strip().splitlines()[-1][:200] if str(err).strip()
                              else type(err).__name__)) from None
        expected = {"exact": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat,
                    "hnsw": faiss.IndexHNSWFlat}.get(kind)
        if expected is None or not isinstance(index, expected):
            raise DmlError("%s is a %s, not the %s index its index.json says: rebuild the index"
                           % (path, type(index).__name__, kind))
        if (count is not None and index.ntotal != count) or (dim is not None and index.d != dim):
            raise DmlError("%s holds %d vectors of %d dimensions, index.json says %d of %d: "
                           "rebuild the index" % (path, index.ntotal, index.d, count, dim))
        return cls(index, distance, kind, nlist)


def brute_force(queries, gallery, k, distance="euclidean"):
    """Our own numpy top-k (the reference the exact index is tested and benchmarked against):
    ``(distances, indices)``, Q x k, nearest first, in chunks of queries."""
    from .evaluation import pairwise_distances_np

    gallery = np.asarray(gallery, dtype=np.float32)
    queries = np.asarray(queries, dtype=np.float32)
    chunk = max(1, (1 << 24) // max(len(gallery), 1))
    dists, idx = [], []
    for start in range(0, len(queries), chunk):
        d = pairwise_distances_np(queries[start:start + chunk], gallery, distance)
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < d.shape[1] else \
            np.broadcast_to(np.arange(d.shape[1]), d.shape).copy()
        pd = np.take_along_axis(d, part, axis=1)
        order = np.argsort(pd, axis=1, kind="stable")
        idx.append(np.take_along_axis(part, order, axis=1))
        dists.append(np.take_along_axis(pd, order, axis=1))
    return np.concatenate(dists).astype(np.float64), np.concatenate(idx).astype(np.int64)
