"""One definition of each distance (dml.distances): its F-op form, its numpy form, the compiled
kernels' host code, evaluation, the index and the miners all give the same numbers, checked
against a loop over the pairs; a name and the object are interchangeable everywhere."""
import math

import mxnet as mx
import numpy as np
import pytest

from dml.distances import COSINE, EUCLIDEAN, NORM_EPS, SQUARED, get_distance, unit_rows

NAMES = ["euclidean", "squared", "cosine"]


def loop_distance(a, b, name):
    if name == "cosine":
        na = math.sqrt(sum(v * v for v in a) + NORM_EPS)
        nb = math.sqrt(sum(v * v for v in b) + NORM_EPS)
        return 1.0 - sum(x * y for x, y in zip(a, b)) / (na * nb)
    d2 = sum((x - y) ** 2 for x, y in zip(a, b))
    return d2 if name == "squared" else math.sqrt(d2)


def data(seed=0, n=7, dim=5):
    x = np.random.default_rng(seed).normal(size=(n, dim))
    x[3] = x[1]  # two coinciding rows: distance 0
    return x


@pytest.mark.parametrize("name", NAMES)
def test_every_form_is_the_loop_reference(name):
    from dml.evaluation import pairwise_distances_np
    from dml.losses import kernels

    x = data()
    want = np.array([[loop_distance(a, b, name) for b in x] for a in x])
    np.fill_diagonal(want, 0.0)
    dist = get_distance(name)
    matrix = dist.matrix(x, x)
    np.fill_diagonal(matrix, 0.0)  # the numpy form leaves rounding on the diagonal
    np.testing.assert_allclose(matrix, want, atol=1e-7)
    np.testing.assert_allclose(pairwise_distances_np(x, x, name) * (1 - np.eye(7)), want,
                               atol=1e-7)
    f_op = dist.pairwise(mx.nd, mx.nd.array(x, dtype="float64")).asnumpy()
    np.testing.assert_allclose(f_op, np.maximum(want, 0), atol=1e-7)
    assert np.all(np.diag(f_op) == 0)
    host, _ = kernels.distances(x.copy(), name)
    np.testing.assert_allclose(host, np.maximum(want, 0), atol=1e-7)
    rows = dist.rowwise(x, x[::-1])
    np.testing.assert_allclose(rows, [loop_distance(a, b, name) for a, b in zip(x, x[::-1])],
                               atol=1e-7)
    pair = dist.pair(mx.nd, mx.nd.array(x, dtype="float64"),
                     mx.nd.array(x[::-1].copy(), dtype="float64")).asnumpy()
    np.testing.assert_allclose(pair, np.maximum(rows, 0), atol=1e-7)


def test_the_unit_rows_are_mxnets_l2_normalization_and_keep_the_dtype():
    x = data().astype(np.float32)
    x[0] = 0.0  # a zero row stays zero (no division by zero)
    unit, norms = unit_rows(x, return_norms=True)
    want = mx.nd.L2Normalization(mx.nd.array(x), mode="instance", eps=NORM_EPS).asnumpy()
    assert unit.dtype == np.float32 and norms.dtype == np.float32
    np.testing.assert_allclose(unit, want, rtol=1e-6, atol=1e-7)
    assert np.all(unit[0] == 0)
    assert unit_rows(np.arange(6).reshape(2, 3)).dtype == np.float64


@pytest.mark.parametrize("name", NAMES)
def test_the_index_and_its_raw_scores_give_the_same_distances(name):
    from dml.index import SearchIndex

    x = data(1, n=20, dim=8).astype(np.float32)
    index = SearchIndex.build(x, name, "exact")
    dist, idx = index.search(x[:5], 3)
    full = get_distance(name).matrix(x[:5].astype(np.float64), x.astype(np.float64))
    np.testing.assert_allclose(dist, np.take_along_axis(full, idx, axis=1), atol=1e-5)
    raw = np.array([[-0.5, 0.0, 4.0]])
    want = {"cosine": [[1.5, 1.0, -3.0]], "squared": [[0.0, 0.0, 4.0]],
            "euclidean": [[0.0, 0.0, 2.0]]}[name]
    assert get_distance(name).from_search(raw).tolist() == want


def test_names_and_objects_are_interchangeable_and_an_unknown_name_lists_the_valid_ones():
    from dml.losses import TripletSemiHardLoss
    from dml.miners import TripletSemiHardMiner

    from dml.registry import DISTANCES

    assert [get_distance(name).name for name in DISTANCES] == list(DISTANCES)
    assert get_distance("cosine") is COSINE and get_distance(COSINE) is COSINE
    assert (EUCLIDEAN.code, SQUARED.code, COSINE.code) == (0, 1, 2)
    assert COSINE == "cosine" and "squared" == SQUARED and COSINE != EUCLIDEAN
    assert {EUCLIDEAN: 1}["euclidean"] == 1 and str(SQUARED) == "squared"
    with pytest.raises(ValueError, match=r"distance must be one of euclidean\|squared\|cosine, "
                                         r"not 'manhattan'"):
        get_distance("manhattan")
    x = mx.nd.array(data(2, n=8))
    y = mx.nd.array(np.arange(8) % 2)
    by_name = TripletSemiHardLoss(margin=0.2, distance="cosine")(x, y).asscalar()
    by_object = TripletSemiHardLoss(margin=0.2, distance=COSINE)(x, y).asscalar()
    assert by_name == by_object
    a = TripletSemiHardMiner(distance="cosine")(x, y)
    b = TripletSemiHardMiner(distance=COSINE)(x, y)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))


def test_one_epsilon():
    """Nothing in dml writes the unit rows' epsilon but dml.distances."""
    import os
    import re

    from runhelpers import ROOT

    found = []
    for folder, _, files in os.walk(os.path.join(ROOT, "dml")):
        for name in files:
            if name.endswith(".py") and name != "distances.py":
                text = open(os.path.join(folder, name)).read()
                found += [name for _ in re.finditer(r"1e-12|np\.linalg\.norm\(", text)]
    assert found == ["health.py"]  # its own constant: the spectrum's floor, not a distance
