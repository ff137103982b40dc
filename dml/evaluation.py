"""Retrieval metrics that mean the same across methods.

``precision_at_1``, ``r_precision`` and ``map_at_r`` follow "A Metric Learning Reality Check"
(Musgrave et al., 2020): every embedding of the split is a query, the reference set is the same
split without the query itself, and R is the number of other references of the query's class.

- precision_at_1 = mean over queries of [label of the nearest reference == query label]
- r_precision    = mean over queries of (same-class references among the R nearest) / R
- map_at_r       = mean over queries of (1/R) * sum_{i<=R} P(i) * rel(i), P(i) the precision at i

Queries whose class has no other reference (R = 0) are left out. Distances are computed in chunks
of queries, so the full N x N matrix is never held.
"""
import numpy as np


def pairwise_distances_np(queries, references, distance="euclidean"):
    """Distance matrix between rows, with the same definitions as ``dml.losses.distance``.
    (Euclidean and squared Euclidean rank identically.)"""
    if distance == "cosine":
        q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        r = references / np.maximum(np.linalg.norm(references, axis=1, keepdims=True), 1e-12)
        return 1.0 - q @ r.T
    d2 = (np.sum(queries ** 2, 1)[:, None] + np.sum(references ** 2, 1)[None, :]
          - 2.0 * queries @ references.T)
    d2 = np.maximum(d2, 0.0)
    return d2 if distance == "squared" else np.sqrt(d2)


def nearest_neighbors(embeddings, k, distance="euclidean", chunk=1024):
    """Indices (N x k) of each row's k nearest other rows, nearest first (ties by index)."""
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    k = min(k, n - 1)
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        d = pairwise_distances_np(x[start:stop], x, distance)
        d[np.arange(stop - start), np.arange(start, stop)] = np.inf  # the query itself
        if k < n - 1:
            part = np.argpartition(d, k, axis=1)[:, :k + 1]
        else:
            part = np.tile(np.arange(n), (stop - start, 1))
        pd = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, pd), axis=1)[:, :k]
        out[start:stop] = np.take_along_axis(part, order, axis=1)
    return out


def retrieval_metrics(embeddings, labels, distance="euclidean"):
    labels = np.asarray(labels).reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1
    keep = r > 0
    if not keep.any():
        raise ValueError("retrieval metrics need at least one class with two or more embeddings")
    max_r = int(r.max())
    neighbors = nearest_neighbors(embeddings, max_r, distance)
    relevant = labels[neighbors] == labels[:, None]  # N x max_r
    ranks = np.arange(1, max_r + 1)
    within_r = ranks[None, :] <= r[:, None]
    rel_r = relevant & within_r
    precision_at_i = np.cumsum(rel_r, axis=1) / ranks[None, :]
    r_safe = np.maximum(r, 1)
    map_at_r = (precision_at_i * rel_r).sum(axis=1) / r_safe
    r_precision = rel_r.sum(axis=1) / r_safe
    return {
        "precision_at_1": float(relevant[keep, 0].mean()),
        "r_precision": float(r_precision[keep].mean()),
        "map_at_r": float(map_at_r[keep].mean()),
        "num_queries": int(keep.sum()),
    }


def embed(net, loader, ctx, progress=None):
    """Embeddings (numpy, N x D) and labels of everything ``loader`` yields, in order."""
    import mxnet as mx

    outputs, labels = [], []
    contexts = ctx if isinstance(ctx, (list, tuple)) else [ctx]
    for images, batch_labels in loader:
        parts = mx.gluon.utils.split_and_load(images, contexts, even_split=False)
        outputs.extend(net(p).asnumpy() for p in parts)
        labels.append(batch_labels)
        if progress is not None:
            progress.update(1)
    return np.concatenate(outputs), np.concatenate(labels).astype(np.int64)
