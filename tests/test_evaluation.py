import numpy as np
import pytest

from dml.evaluation import (METRIC_KEYS, all_metrics, clustering_metrics, knn_accuracy,
                            nearest_neighbors, pairwise_distances_np, retrieval_metrics,
                            verification_auc)
from reference import naive_distance


def brute_force_metrics(x, labels, distance):
    d = naive_distance(x, distance)
    p1, rp, mapr = [], [], []
    recall = {k: [] for k in (1, 2, 4, 8)}
    for q in range(len(labels)):
        others = [i for i in range(len(labels)) if i != q]
        order = sorted(others, key=lambda i: (d[q, i], i))
        r = sum(labels[i] == labels[q] for i in others)
        if r == 0:
            continue
        rel = [labels[i] == labels[q] for i in order[:r]]
        p1.append(float(labels[order[0]] == labels[q]))
        for k in recall:
            recall[k].append(float(any(labels[i] == labels[q] for i in order[:k])))
        rp.append(sum(rel) / r)
        hits, ap = 0, 0.0
        for i, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                ap += hits / i
        mapr.append(ap / r)
    out = {"precision_at_1": np.mean(p1), "r_precision": np.mean(rp), "map_at_r": np.mean(mapr),
           "num_queries": len(p1)}
    out.update(("recall_at_%d" % k, np.mean(v)) for k, v in recall.items())
    return out


@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [None, 7])
def test_retrieval_metrics_match_brute_force(distance, seed, chunk):
    rng = np.random.default_rng(seed)
    n = 40
    labels = rng.integers(0, 5, size=n)
    labels[0] = 5  # a singleton class: its query is left out
    x = rng.normal(size=(n, 3)) + labels[:, None] * 0.7  # partly separable
    got = retrieval_metrics(x, labels, distance, chunk=chunk)
    want = brute_force_metrics(x, labels, distance)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_singleton_class_queries_are_left_out():
    x = np.array([[0.0], [0.1], [5.0], [9.0]])
    labels = np.array([0, 0, 1, 2])
    got = retrieval_metrics(x, labels)
    assert got["num_queries"] == 2 and got["map_at_r"] == 1.0


def test_perfect_and_known_values():
    x = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    assert retrieval_metrics(x, [0, 0, 0, 1, 1, 1])["map_at_r"] == 1.0
    # query 0: neighbours 1 (rel), 2 (not), R = 1 -> AP 1; query 1: 0 (not), 2 (rel)... by hand:
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    m = retrieval_metrics(x, [0, 1, 0, 1])
    # every query's nearest is the other class; R = 1 for all, so everything is 0
    assert m["precision_at_1"] == 0 and m["map_at_r"] == 0 and m["r_precision"] == 0


def test_nearest_neighbors_in_chunks_equals_one_chunk():
    x = np.random.default_rng(1).normal(size=(50, 4))
    np.testing.assert_array_equal(nearest_neighbors(x, 7, chunk=8), nearest_neighbors(x, 7, chunk=1000))
    nn = nearest_neighbors(x, 49)
    assert (nn != np.arange(50)[:, None]).all()
    d = pairwise_distances_np(x, x)
    assert (np.diff(np.take_along_axis(d, nn, 1), axis=1) >= 0).all()


def test_recall_at_k_on_a_small_set_uses_every_neighbour():
    # 3 embeddings: k = 8 is more than the 2 other references, recall_at_8 == recall_at_2
    x = np.array([[0.0], [1.0], [1.5]])
    m = retrieval_metrics(x, [0, 1, 0])
    assert m["recall_at_1"] == pytest.approx(0.0)  # 0's nearest is 1, 2's nearest is 1
    assert m["recall_at_2"] == m["recall_at_8"] == 1.0


def naive_knn_accuracy(ref, ref_labels, queries, query_labels, distance, k=5):
    d = naive_distance(np.concatenate([queries, ref]), distance)[:len(queries), len(queries):]
    correct = 0
    for q in range(len(queries)):
        nearest = sorted(range(len(ref)), key=lambda i: (d[q, i], i))[:k]
        votes = {}
        for i in nearest:
            votes[ref_labels[i]] = votes.get(ref_labels[i], 0) + 1
        best = max(votes.values())
        predicted = min(c for c, v in votes.items() if v == best)  # ties: the smaller label
        correct += predicted == query_labels[q]
    return correct / len(queries)


@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
@pytest.mark.parametrize("seed", range(3))
def test_knn_accuracy_matches_a_majority_vote_loop(distance, seed):
    rng = np.random.default_rng(seed)
    ref_labels = rng.integers(0, 4, size=60)
    ref = rng.normal(size=(60, 3)) + ref_labels[:, None] * 0.5
    query_labels = rng.integers(0, 4, size=25)
    queries = rng.normal(size=(25, 3)) + query_labels[:, None] * 0.5
    got = knn_accuracy(ref, ref_labels, queries, query_labels, distance)
    assert got == pytest.approx(naive_knn_accuracy(ref, ref_labels, queries, query_labels, distance))
    assert 0.0 < got < 1.0


def naive_auc(scores, positive):
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_verification_auc_is_the_pair_ranking_probability(distance):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=30)
    x = rng.normal(size=(30, 4)) + labels[:, None]
    pairs = np.stack([rng.integers(0, 30, 80), rng.integers(0, 30, 80)], axis=1)
    pairs = np.concatenate([pairs, (labels[pairs[:, 0]] == labels[pairs[:, 1]])[:, None]], axis=1)
    d = naive_distance(x, distance)
    want = naive_auc([-d[i, j] for i, j, _ in pairs], pairs[:, 2])
    assert verification_auc(x, pairs, distance) == pytest.approx(want)


def test_clustering_metrics_find_separated_classes_and_match_sklearn():
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 20)
    centers = rng.normal(size=(4, 8)) * 20
    separated = centers[labels] + rng.normal(size=(80, 8))
    m = clustering_metrics(separated, labels)
    assert m["nmi"] == pytest.approx(1.0) and m["ami"] == pytest.approx(1.0)
    noise = rng.normal(size=(80, 8))
    m = clustering_metrics(noise, labels, seed=5)
    clusters = KMeans(n_clusters=4, n_init=3, random_state=5).fit_predict(noise)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters))
    assert m["ami"] == pytest.approx(adjusted_mutual_info_score(labels, clusters))
    assert m["ami"] < 0.2


def test_clustering_with_cosine_clusters_directions():
    labels = np.repeat([0, 1], 10)
    directions = np.array([[1.0, 0.0], [0.0, 1.0]])[labels]
    scale = np.linspace(0.1, 10, 20)[:, None]  # far apart in length, together in direction
    m = clustering_metrics(directions * scale, labels, distance="cosine")
    assert m["nmi"] == pytest.approx(1.0)


def test_all_metrics_has_every_contract_key():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 5)) + labels[:, None]
    m = all_metrics(x, labels, x, labels)
    assert set(METRIC_KEYS) <= set(m) and "verification_auc" not in m
    assert all(0.0 <= m[k] <= 1.0 for k in METRIC_KEYS)
    pairs = np.array([[0, 1, 1], [0, 15, 0], [3, 4, 1], [3, 25, 0]])
    assert "verification_auc" in all_metrics(x, labels, x, labels, pairs=pairs)


def test_many_classes_cluster_with_faiss_and_score_like_scikit_learn(monkeypatch):
    """Above 1,000 classes k-means runs in faiss (SOP's 11,316 would take scikit-learn hours);
    on well-separated clusters both give the same NMI."""
    import dml.evaluation as ev

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 8)) * 20
    labels = np.repeat(np.arange(40), 6)
    x = centres[labels] + rng.normal(size=(240, 8))
    sklearn_nmi = ev.clustering_metrics(x, labels)["nmi"]
    monkeypatch.setattr(ev, "FAISS_KMEANS_ABOVE", 10)
    faiss_nmi = ev.clustering_metrics(x, labels)["nmi"]
    assert sklearn_nmi > 0.95 and abs(faiss_nmi - sklearn_nmi) < 0.05
    assert len(np.unique(ev.kmeans_clusters(x, 40))) > 30
