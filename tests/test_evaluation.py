import numpy as np
import pytest

from dml.evaluation import nearest_neighbors, pairwise_distances_np, retrieval_metrics
from reference import naive_distance


def brute_force_metrics(x, labels, distance):
    d = naive_distance(x, distance)
    p1, rp, mapr = [], [], []
    for q in range(len(labels)):
        others = [i for i in range(len(labels)) if i != q]
        order = sorted(others, key=lambda i: (d[q, i], i))
        r = sum(labels[i] == labels[q] for i in others)
        if r == 0:
            continue
        rel = [labels[i] == labels[q] for i in order[:r]]
        p1.append(float(labels[order[0]] == labels[q]))
        rp.append(sum(rel) / r)
        hits, ap = 0, 0.0
        for i, is_rel in enumerate(rel, start=1):
            if is_rel:
                hits += 1
                ap += hits / i
        mapr.append(ap / r)
    return {"precision_at_1": np.mean(p1), "r_precision": np.mean(rp), "map_at_r": np.mean(mapr),
            "num_queries": len(p1)}


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", range(4))
def test_retrieval_metrics_match_brute_force(distance, seed):
    rng = np.random.default_rng(seed)
    n = 40
    labels = rng.integers(0, 5, size=n)
    x = rng.normal(size=(n, 3)) + labels[:, None] * 0.7  # partly separable
    got = retrieval_metrics(x, labels, distance)
    want = brute_force_metrics(x, labels, distance)
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
