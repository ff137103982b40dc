"""Metrics that mean the same across methods: retrieval, clustering and verification.

Retrieval (``precision_at_1``, ``r_precision``, ``map_at_r``) follows "A Metric Learning Reality
Check" (Musgrave et al., 2020): every embedding of the split is a query, the reference set is the
same split without the query itself, and R is the number of other references of the query's class.

- precision_at_1 = mean over queries of [label of the nearest reference == query label]
- r_precision    = mean over queries of (same-class references among the R nearest) / R
- map_at_r       = mean over queries of (1/R) * sum_{i<=R} P(i) * rel(i), P(i) the precision at i
- recall_at_k    = mean over queries of [at least one same-class reference among the k nearest]

Queries whose class has no other reference (R = 0) are left out of all four. Distances are
computed for a chunk of queries at a time (at most 2^24 distances), so an N x N matrix is never
held: 60,000 x 60,000 with R = 6,000 peaks at 569 MB instead of the 27 GiB of the full matrix.

Clustering: ``nmi`` and ``ami`` compare the labels with k-means (k = number of classes;
scikit-learn's, or faiss' above 1,000 classes) on the embeddings (L2-normalized first for the
cosine distance).
``knn_accuracy``: each query's label predicted by a majority vote of its 5 nearest reference
embeddings (the training split's), ties going to the smaller label (scikit-learn's rule).
``verification_auc``: the ROC-AUC of -distance over fixed (i, j, same) pairs (siamese runs).
"""
import numpy as np

from .distances import get_distance, unit_rows

RECALL_KS = (1, 2, 4, 8)
KNN_K = 5
# every metric a finished run's metrics.json holds (siamese runs add verification_auc)
METRIC_KEYS = ("precision_at_1", "r_precision", "map_at_r") + tuple(
    "recall_at_%d" % k for k in RECALL_KS) + ("nmi", "ami", "knn_accuracy")
# the metrics cheap enough to compute every --eval-period epochs
RETRIEVAL_KEYS = METRIC_KEYS[:3 + len(RECALL_KS)]
_CHUNK_ENTRIES = 1 << 24  # distances held at once: 128 MB of float64


def is_collapsed(embeddings):
    """True when every embedding is the same point (to float32 precision): a collapsed network,
    whose retrieval metrics measure only how ties are broken."""
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 2:
        return False
    spread = float(np.max(np.ptp(x, axis=0)))
    return spread <= 1e-6 * max(1.0, float(np.max(np.abs(x))))


def pairwise_distances_np(queries, references, distance="euclidean"):
    """Distance matrix between rows, with the same definitions as ``dml.ops.distance``.
    (Euclidean and squared Euclidean rank identically.)"""
    return get_distance(distance).matrix(queries, references)


def _neighbor_chunks(queries, references, k, distance, exclude_self, chunk=None):
    """Yield ``(start, stop, neighbors)``: for queries ``start:stop``, the indices of their ``k``
    nearest references, nearest first, ties by index. With ``exclude_self`` the references are
    the queries and a query is never its own neighbour."""
    n = len(references)
    if chunk is None:
        chunk = max(1, _CHUNK_ENTRIES // max(n, 1))
    for start in range(0, len(queries), chunk):
        stop = min(start + chunk, len(queries))
        d = pairwise_distances_np(queries[start:stop], references, distance)
        if exclude_self:
            d[np.arange(stop - start), np.arange(start, stop)] = np.inf
        if k < n:
            part = np.argpartition(d, k - 1, axis=1)[:, :k]
        else:
            part = np.broadcast_to(np.arange(n), (stop - start, n))
        pd = np.take_along_axis(d, part, axis=1)
        order = np.lexsort((part, pd), axis=1)
        yield start, stop, np.take_along_axis(part, order, axis=1)


def nearest_neighbors(embeddings, k, distance="euclidean", chunk=None):
    """Indices (N x k) of each row's k nearest other rows, nearest first (ties by index)."""
    x = np.asarray(embeddings, dtype=np.float64)
    k = min(k, len(x) - 1)
    out = np.empty((len(x), k), dtype=np.int64)
    for start, stop, nn in _neighbor_chunks(x, x, k, distance, exclude_self=True, chunk=chunk):
        out[start:stop] = nn
    return out


def retrieval_metrics(embeddings, labels, distance="euclidean", chunk=None, gallery=None,
                      gallery_labels=None):
    """precision_at_1, r_precision, map_at_r, recall_at_{1,2,4,8} and num_queries.

    Without ``gallery`` every embedding queries the others (itself excluded) and R is the number
    of *other* embeddings of its class. With ``gallery`` (and ``gallery_labels``) each embedding
    queries the gallery (In-Shop's protocol) and R is the number of gallery embeddings of its
    class. Either way a query with R = 0 is left out."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if gallery is None:
        refs, ref_labels, exclude_self = x, labels, True
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        r_all = counts[inverse] - 1
    else:
        refs = np.asarray(gallery, dtype=np.float64)
        ref_labels = np.asarray(gallery_labels).reshape(-1)
        exclude_self = False
        classes, counts = np.unique(ref_labels, return_counts=True)
        where = np.searchsorted(classes, labels)
        found = (where < len(classes)) & (classes[np.minimum(where, len(classes) - 1)] == labels)
        r_all = np.where(found, counts[np.minimum(where, len(classes) - 1)], 0)
    if not (r_all > 0).any():
        raise ValueError("retrieval metrics need at least one query with a relevant reference "
                         "(another image of its class%s)" % (" in the gallery" if gallery
                                                             is not None else ""))
    k = min(max(int(r_all.max()), max(RECALL_KS)), len(refs) - (1 if exclude_self else 0))
    sums = dict.fromkeys(RETRIEVAL_KEYS, 0.0)
    ranks = np.arange(1, k + 1)
    for start, stop, nn in _neighbor_chunks(x, refs, k, distance, exclude_self=exclude_self,
                                            chunk=chunk):
        r = r_all[start:stop]
        keep = r > 0
        relevant = (ref_labels[nn] == labels[start:stop, None])[keep]
        r = r[keep]
        rel_r = relevant & (ranks[None, :] <= r[:, None])
        precision_at_i = np.cumsum(rel_r, axis=1) / ranks[None, :]
        sums["precision_at_1"] += relevant[:, 0].sum()
        sums["r_precision"] += (rel_r.sum(axis=1) / r).sum()
        sums["map_at_r"] += ((precision_at_i * rel_r).sum(axis=1) / r).sum()
        hit_by = np.cumsum(relevant, axis=1) > 0
        for rk in RECALL_KS:
            sums["recall_at_%d" % rk] += hit_by[:, min(rk, k) - 1].sum()
    num_queries = int((r_all > 0).sum())
    metrics = {key: float(value / num_queries) for key, value in sums.items()}
    metrics["num_queries"] = num_queries
    return metrics


# Above this many clusters k-means runs in faiss (20 Lloyd iterations, as pytorch-metric-
# learning's accuracy calculator and the benchmark papers' code do): scikit-learn's would take
# hours on SOP (11,316 classes, 60,502 images) and minutes on In-Shop's queries.
FAISS_KMEANS_ABOVE = 1000


def kmeans_clusters(x, k, seed=0):
    """Each row's k-means cluster: scikit-learn's KMeans (3 restarts, seeded) up to
    :data:`FAISS_KMEANS_ABOVE` clusters, faiss' (20 iterations, seeded) above."""
    if k > FAISS_KMEANS_ABOVE:
        import faiss

        data = np.ascontiguousarray(x, dtype=np.float32)
        kmeans = faiss.Kmeans(data.shape[1], k, niter=20, seed=int(seed) % (2 ** 31),
                              verbose=False)
        kmeans.train(data)
        return kmeans.index.search(data, 1)[1].reshape(-1)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)


def clustering_metrics(embeddings, labels, distance="euclidean", seed=0):
    """``nmi`` and ``ami`` of k-means clusters (k = number of classes) against the labels
    (:func:`kmeans_clusters`)."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    if get_distance(distance).normalizes:
        x = unit_rows(x)
    k = len(np.unique(labels))
    clusters = kmeans_clusters(x, k, seed)
    return {"nmi": float(normalized_mutual_info_score(labels, clusters)),
            "ami": float(adjusted_mutual_info_score(labels, clusters))}


def knn_accuracy(references, reference_labels, queries, query_labels, distance="euclidean",
                 k=KNN_K):
    """Accuracy of a majority vote of each query's ``k`` nearest references."""
    from sklearn.neighbors import KNeighborsClassifier

    metric = "cosine" if distance == "cosine" else "euclidean"  # squared ranks as euclidean
    knn = KNeighborsClassifier(n_neighbors=min(k, len(references)), algorithm="brute", metric=metric)
    knn.fit(np.asarray(references, dtype=np.float64), np.asarray(reference_labels).reshape(-1))
    predicted = knn.predict(np.asarray(queries, dtype=np.float64))
    return float(np.mean(predicted == np.asarray(query_labels).reshape(-1)))


def knn_accuracy_leave_one_out(embeddings, labels, distance="euclidean", k=KNN_K):
    """Accuracy of a majority vote of each embedding's ``k`` nearest *other* embeddings of the
    same set (ties to the smaller label, as scikit-learn's vote): the kNN accuracy of a split
    whose classes have no reference images elsewhere (class-disjoint train and test)."""
    labels = np.asarray(labels).reshape(-1)
    classes, codes = np.unique(labels, return_inverse=True)
    k = min(k, len(labels) - 1)
    correct = 0
    for start, stop, neighbors in _neighbor_chunks(embeddings, embeddings, k, distance,
                                                   exclude_self=True):
        votes = np.zeros((stop - start, len(classes)), dtype=np.int64)
        np.add.at(votes, (np.repeat(np.arange(stop - start), k), codes[neighbors].reshape(-1)), 1)
        correct += int(np.sum(np.argmax(votes, axis=1) == codes[start:stop]))
    return correct / len(labels)


def verification_auc(embeddings, pairs, distance="euclidean"):
    """ROC-AUC of -d(e_i, e_j) for predicting ``same`` over the rows ``(i, j, same)`` of ``pairs``."""
    from sklearn.metrics import roc_auc_score

    x = np.asarray(embeddings, dtype=np.float64)
    pairs = np.asarray(pairs)
    a, b = x[pairs[:, 0]], x[pairs[:, 1]]
    d = get_distance(distance).rowwise(a, b)
    return float(roc_auc_score(pairs[:, 2].astype(int), -d))


VERIFICATION_FMRS = (1e-2, 1e-3)


def _fmr_key(fmr):
    return ("%.0e" % fmr).replace("e-0", "e-")  # 1e-2, 1e-3


def verification_thresholds(embeddings, labels, distance="euclidean", fmrs=VERIFICATION_FMRS,
                            chunk=None):
    """The "same class" threshold at each false match rate of ``fmrs``, over every pair
    (i < j) of the split: genuine pairs share a label, impostor pairs do not; a pair is declared
    a match when its distance is below the threshold t.

    - FMR(t)  = (impostor pairs with d < t) / impostor pairs
    - FNMR(t) = (genuine pairs with d >= t) / genuine pairs

    For a target FMR f, t is the (floor(f * impostors) + 1)-th smallest impostor distance: the
    largest threshold whose FMR is at most f. Returns ``fnmr_at_fmr_<f>``,
    ``threshold_at_fmr_<f>``, ``verification_genuine_pairs`` and ``verification_impostor_pairs``.
    A target that fewer than 1/f impostor pairs cannot resolve (floor(f * impostors) = 0 would
    make t the closest impostor, an FMR of exactly 0, not f) is left out, and so is everything
    when there is no genuine or no impostor pair. Distances are computed a chunk of rows at a
    time; only the genuine distances and the smallest impostor distances are kept."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1)
    n = len(x)
    _, counts = np.unique(labels, return_counts=True)
    genuine_pairs = int(np.sum(counts * (counts - 1) // 2))
    impostor_pairs = n * (n - 1) // 2 - genuine_pairs
    out = {"verification_genuine_pairs": genuine_pairs,
           "verification_impostor_pairs": impostor_pairs}
    wanted = {f: int(np.floor(f * impostor_pairs)) for f in fmrs}
    wanted = {f: m for f, m in wanted.items() if m >= 1}
    if not genuine_pairs or not wanted:
        return out
    keep = max(wanted.values()) + 1  # the smallest impostor distances any threshold needs
    chunk = chunk or max(1, _CHUNK_ENTRIES // max(n, 1))
    genuine, smallest = [], np.empty(0)
    for start in range(0, n - 1, chunk):
        stop = min(start + chunk, n - 1)
        d = pairwise_distances_np(x[start:stop], x, distance)
        rows, cols = np.triu_indices(stop - start, k=start + 1, m=n)  # pairs with j > i
        same = labels[start + rows] == labels[cols]
        dist = d[rows, cols]
        genuine.append(dist[same])
        impostor = np.concatenate([smallest, dist[~same]])
        if len(impostor) > keep:
            impostor = np.partition(impostor, keep - 1)[:keep]
        smallest = impostor
    genuine = np.concatenate(genuine)
    smallest = np.sort(smallest)
    for f, m in sorted(wanted.items(), reverse=True):
        threshold = float(smallest[m])
        key = _fmr_key(f)
        out["threshold_at_fmr_" + key] = threshold
        out["fnmr_at_fmr_" + key] = float(np.mean(genuine >= threshold))
    return out


def all_metrics(embeddings, labels, reference_embeddings, reference_labels, distance="euclidean",
                pairs=None, seed=0, gallery=None, gallery_labels=None):
    """Every metric of ``metrics.json`` for one evaluated split (``verification_auc`` when
    ``pairs`` is given). With ``gallery``: retrieval of each embedding (a query) against the
    gallery, clustering of the queries, and ``knn_accuracy`` voting among the gallery."""
    metrics = retrieval_metrics(embeddings, labels, distance, gallery=gallery,
                                gallery_labels=gallery_labels)
    metrics.update(clustering_metrics(embeddings, labels, distance, seed))
    if gallery is not None:
        reference_embeddings, reference_labels = gallery, gallery_labels
    if set(np.unique(labels)) <= set(np.unique(reference_labels)):
        metrics["knn_accuracy"] = knn_accuracy(reference_embeddings, reference_labels, embeddings,
                                               labels, distance)
    else:  # a vote among references that lack a query's class would be wrong by construction
        import logging

        logging.getLogger("dml").info(
            "knn_accuracy: the kNN references lack %d of the evaluated classes, so it votes "
            "among the evaluated split itself (leave-one-out)",
            len(set(np.unique(labels)) - set(np.unique(reference_labels))))
        metrics["knn_accuracy"] = knn_accuracy_leave_one_out(embeddings, labels, distance)
    if pairs is not None:
        metrics["verification_auc"] = verification_auc(embeddings, pairs, distance)
    return metrics


def evaluate(net, dataset, mean, std, ctx=None, distance="euclidean", references=None,
             batch_size=256, seed=0):
    """Every metric of ``net``'s embedding of ``dataset`` (a dml dataset: uint8 images, labels),
    normalized with ``mean``/``std`` as in training: the retrieval metrics, ``nmi``/``ami`` and,
    with ``references`` (e.g. the training split), ``knn_accuracy``. ``ctx``: a context or a list
    of them (default the CPU)."""
    import mxnet as mx

    ctx = ctx or mx.cpu()

    def embedded(data):
        return embed_dataset(net, data, mean, std, ctx, batch_size)

    embeddings, labels = embedded(dataset)
    metrics = retrieval_metrics(embeddings, labels, distance)
    metrics.update(clustering_metrics(embeddings, labels, distance, seed))
    if references is not None:
        ref_embeddings, ref_labels = embedded(references)
        metrics["knn_accuracy"] = knn_accuracy(ref_embeddings, ref_labels, embeddings, labels,
                                               distance)
    return metrics


def net_contexts(net):
    """The contexts ``net``'s parameters live on."""
    return next(iter(net.collect_params().values())).list_ctx()


def embed_dataset(net, dataset, mean, std, ctx=None, batch_size=256):
    """Embeddings and labels of ``dataset`` (a dml dataset: uint8 images, labels), normalized with
    ``mean``/``std`` as in training, in order; ``ctx``: a context or a list of them (default:
    the contexts of ``net``'s parameters)."""
    from .data import BatchLoader, SequentialBatches

    loader = BatchLoader(dataset, SequentialBatches(len(dataset), batch_size), mean, std,
                         num_workers=0)
    return embed(net, loader, net_contexts(net) if ctx is None else ctx)


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
