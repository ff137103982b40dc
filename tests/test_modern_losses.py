"""The similarity losses (multi-similarity, circle, SupCon, NT-Xent, lifted structure, N-pairs)
and the proxy losses (Proxy-Anchor, ProxyNCA, normalized softmax, SoftTriple) against naive loops
of pytorch-metric-learning 2.9's definitions: values on random batches (several B, D and class
counts, one-class and all-distinct batches, ties), hybridized and not; gradients against finite
differences; the multi-similarity miner against brute force and composed with every pair loss; a
NaN embedding gives a NaN loss."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import modern_reference as ref
from dml.losses.margin import MarginLoss
from dml.losses.proxies import NormalizedSoftmaxLoss, ProxyAnchorLoss, ProxyNCALoss, SoftTripleLoss
from dml.losses.similarity import (CircleLoss, GeneralizedLiftedStructureLoss, MultiSimilarityLoss,
                                   NPairsLoss, NTXentLoss, SupConLoss)
from dml.miners import MultiSimilarityMiner
from reference import numeric_gradient

PAIR_LOSSES = {
    "multi_similarity": (MultiSimilarityLoss, ref.ms, {}),
    "circle": (CircleLoss, ref.circle, {}),
    "supcon": (SupConLoss, ref.supcon, {}),
    "ntxent": (NTXentLoss, ref.ntxent, {}),
    "lifted": (GeneralizedLiftedStructureLoss, ref.lifted, {}),
}
ALL_PAIR_LOSSES = dict(PAIR_LOSSES, npairs=(NPairsLoss, ref.npairs, {}))
NAN_LOSSES = dict(ALL_PAIR_LOSSES, margin=(MarginLoss, ref.margin_loss, {}))
PROXY_LOSSES = {
    "proxy_anchor": (ProxyAnchorLoss, ref.proxy_anchor, {}),
    "proxy_nca": (ProxyNCALoss, ref.proxy_nca, {}),
    "normalized_softmax": (NormalizedSoftmaxLoss, ref.normalized_softmax, {}),
    "soft_triple": (SoftTripleLoss, ref.soft_triple, {"centers_per_class": 3}),
}


def batches():
    """(name, x, labels): P x K, random labels, one class, all distinct, ties (duplicates)."""
    rng = np.random.default_rng(0)
    yield "pk", rng.normal(size=(12, 5)), np.repeat(np.arange(4), 3)
    yield "random", rng.normal(size=(17, 3)), rng.integers(0, 4, 17)
    yield "wide", rng.normal(size=(9, 16)), rng.integers(0, 3, 9)
    yield "one-class", rng.normal(size=(6, 4)), np.zeros(6, dtype=int)
    yield "all-distinct", rng.normal(size=(7, 4)), np.arange(7)
    x = rng.normal(size=(10, 4))
    x[1], x[5] = x[0], x[0]  # ties: one embedding three times, in two classes
    yield "ties", x, np.array([0, 0, 1, 1, 2, 1, 0, 2, 1, 0])


def value(loss_fn, x, labels, indices=None, dtype="float64"):
    out = loss_fn(mx.nd.array(x, dtype=dtype), mx.nd.array(labels, dtype=dtype),
                  **({} if indices is None else {"indices": indices}))
    return float((out[0] if isinstance(out, (tuple, list)) else out).asscalar())


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("name", list(ALL_PAIR_LOSSES))
def test_pair_losses_match_the_loops(name, hybridize):
    cls, naive, kwargs = ALL_PAIR_LOSSES[name]
    for case, x, labels in batches():
        loss_fn = cls(return_stat=True, **kwargs)
        loss_fn.cast("float64")
        if hybridize:
            loss_fn.hybridize()
        want = naive(x, labels, **kwargs)
        assert value(loss_fn, x, labels) == pytest.approx(want, rel=1e-6, abs=1e-9), case


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("name", list(PROXY_LOSSES))
def test_proxy_losses_match_the_loops(name, hybridize):
    cls, naive, kwargs = PROXY_LOSSES[name]
    for case, x, labels in batches():
        classes = int(labels.max()) + 2  # a class without images in the batch too
        loss_fn = cls(classes, x.shape[1], return_stat=True, **kwargs)
        loss_fn.initialize()
        loss_fn.cast("float64")
        if hybridize:
            loss_fn.hybridize()
        proxies = loss_fn.proxies.data().asnumpy()
        want = naive(x, labels, proxies, **kwargs)
        assert value(loss_fn, x, labels) == pytest.approx(want, rel=1e-6, abs=1e-9), case


def gradients(loss_fn, x, labels, indices=None):
    emb = mx.nd.array(x, dtype="float64")
    emb.attach_grad()
    with autograd.record():
        out = loss_fn(emb, mx.nd.array(labels, dtype="float64"),
                      **({} if indices is None else {"indices": indices}))
        loss = out[0] if isinstance(out, (tuple, list)) else out
    loss.backward()
    return emb.grad.asnumpy()


@pytest.mark.parametrize("name", list(ALL_PAIR_LOSSES))
def test_pair_loss_gradients_match_finite_differences(name):
    cls, naive, kwargs = ALL_PAIR_LOSSES[name]
    rng = np.random.default_rng(3)
    x = rng.normal(size=(8, 3))
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    loss_fn = cls(**kwargs)
    loss_fn.cast("float64")
    loss_fn.hybridize()
    if name == "circle":  # its weights alpha are constants of the gradient (detached, as PML's)
        kwargs = dict(kwargs, weights_at=x)
    numeric = numeric_gradient(lambda v: naive(v, labels, **kwargs), x)
    np.testing.assert_allclose(gradients(loss_fn, x, labels), numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(PROXY_LOSSES))
def test_proxy_loss_gradients_match_finite_differences(name):
    """The gradient with respect to the embeddings and to the proxies."""
    cls, naive, kwargs = PROXY_LOSSES[name]
    rng = np.random.default_rng(4)
    x = rng.normal(size=(7, 3))
    labels = np.array([0, 0, 1, 1, 2, 0, 1])
    loss_fn = cls(4, 3, **kwargs)
    loss_fn.initialize()
    loss_fn.cast("float64")
    loss_fn.hybridize()
    proxies = loss_fn.proxies.data().asnumpy()
    got = gradients(loss_fn, x, labels)
    np.testing.assert_allclose(got, numeric_gradient(
        lambda v: naive(v, labels, proxies, **kwargs), x), rtol=1e-4, atol=1e-6)
    emb = mx.nd.array(x, dtype="float64")
    with autograd.record():
        loss = loss_fn(emb, mx.nd.array(labels, dtype="float64"))
    loss.backward()
    np.testing.assert_allclose(loss_fn.proxies.grad().asnumpy(), numeric_gradient(
        lambda p: naive(x, labels, p, **kwargs), proxies), rtol=1e-4, atol=1e-6)


def test_multi_similarity_miner_matches_brute_force():
    for case, x, labels in batches():
        for epsilon in (0.1, 0.5, -0.2):
            got = MultiSimilarityMiner(epsilon)(mx.nd.array(x), mx.nd.array(labels))
            want = ref.ms_miner(x, labels, epsilon)
            for g, w in zip(got, want):
                assert g.dtype == np.int64 and g.tolist() == w.tolist(), (case, epsilon)


@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_every_pair_loss_composes_with_the_miner(name):
    """loss(embeddings, labels, indices=miner(...)) scores exactly the mined pairs, in value and
    gradient, hybridized; an empty mining gives 0."""
    cls, naive, kwargs = PAIR_LOSSES[name]
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 4))
    labels = np.repeat(np.arange(3), 4)
    miner = MultiSimilarityMiner(0.3)
    indices = miner(mx.nd.array(x), mx.nd.array(labels))
    assert 0 < len(indices[0]) < 36 and 0 < len(indices[2]) < 96  # it chose, and not everything
    loss_fn = cls(**kwargs)
    loss_fn.cast("float64")
    loss_fn.hybridize()
    assert value(loss_fn, x, labels, indices) == pytest.approx(
        naive(x, labels, indices=indices, **kwargs), rel=1e-6)
    assert value(loss_fn, x, labels) == pytest.approx(naive(x, labels, **kwargs), rel=1e-6)
    if name == "circle":
        kwargs = dict(kwargs, weights_at=x)
    numeric = numeric_gradient(lambda v: naive(v, labels, indices=indices, **kwargs), x)
    np.testing.assert_allclose(gradients(loss_fn, x, labels, indices), numeric, rtol=1e-4,
                               atol=1e-6)
    empty = tuple(np.zeros(0, dtype=np.int64) for _ in range(4))
    assert value(loss_fn, x, labels, empty) == 0.0


@pytest.mark.parametrize("name", list(NAN_LOSSES) + list(PROXY_LOSSES))
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_embedding_gives_a_nan_loss(name, bad):
    x = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    x[3, 1] = bad
    labels = np.repeat(np.arange(4), 2)
    if name in PROXY_LOSSES:
        cls, _, kwargs = PROXY_LOSSES[name]
        loss_fn = cls(4, 4, **kwargs)
        loss_fn.initialize()
    else:
        cls, _, kwargs = NAN_LOSSES[name]
        loss_fn = cls(**kwargs)
    loss_fn.hybridize()
    emb = mx.nd.array(x)
    emb.attach_grad()
    with autograd.record():
        loss = loss_fn(emb, mx.nd.array(labels))
    loss.backward()
    assert np.isnan(loss.asscalar()) and np.isnan(emb.grad.asnumpy()).all()


def test_float32_defaults_stay_finite_at_the_extremes():
    """Defaults with large exponents (circle's gamma 80, multi-similarity's beta 50, SupCon's
    1/0.1, NT-Xent's 1/0.07) on a batch where every pair is identical or opposite."""
    x = np.array([[1, 0], [1, 0], [-1, 0], [-1, 0], [1, 0], [-1, 0]], dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 2, 2])
    for name, (cls, naive, kwargs) in ALL_PAIR_LOSSES.items():
        loss_fn = cls(**kwargs)
        emb = mx.nd.array(x)
        emb.attach_grad()
        with autograd.record():
            loss = loss_fn(emb, mx.nd.array(labels))
        loss.backward()
        assert np.isfinite(loss.asscalar()) and np.isfinite(emb.grad.asnumpy()).all(), name
        assert loss.asscalar() == pytest.approx(naive(x.astype(np.float64), labels, **kwargs),
                                                rel=1e-4), name


@pytest.mark.parametrize("make", [
    lambda: MultiSimilarityLoss(alpha=0), lambda: MultiSimilarityLoss(beta=float("inf")),
    lambda: CircleLoss(m=1.5), lambda: CircleLoss(gamma=-1), lambda: SupConLoss(temperature=0),
    lambda: NTXentLoss(temperature=float("nan")), lambda: ProxyAnchorLoss(0, 8),
    lambda: SoftTripleLoss(3, 8, centers_per_class=0), lambda: NormalizedSoftmaxLoss(3, 8, 0),
    lambda: MultiSimilarityMiner(float("nan")), lambda: MarginLoss(margin=-1),
    lambda: MarginLoss(beta=float("inf"))])
def test_bad_parameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_npairs_takes_no_indices():
    with pytest.raises(ValueError, match="picks its own pairs"):
        NPairsLoss()(mx.nd.ones((4, 2)), mx.nd.array([0, 0, 1, 1]), indices=(1, 2, 3, 4))


# ------------------------------------------------------------------------------------------------
# The margin loss and distance-weighted sampling (Wu et al. 2017)


@pytest.mark.parametrize("hybridize", [False, True])
def test_margin_loss_matches_the_loop_over_every_triplet(hybridize):
    from dml.losses import MarginLoss

    for case, x, labels in batches():
        for kwargs in ({}, {"margin": 0.5, "beta": 0.8}):
            loss_fn = MarginLoss(return_stat=True, **kwargs)
            loss_fn.cast("float64")
            if hybridize:
                loss_fn.hybridize()
            assert value(loss_fn, x, labels) == pytest.approx(
                ref.margin_loss(x, labels, **kwargs), rel=1e-6, abs=1e-9), case


def test_margin_loss_on_given_triplets_value_and_gradient():
    from dml.losses import MarginLoss

    rng = np.random.default_rng(9)
    x = rng.normal(size=(10, 4))
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    a = np.array([0, 0, 3, 6, 9, 9])
    p = np.array([1, 2, 4, 7, 6, 8])
    n = np.array([3, 9, 0, 1, 2, 2])
    loss_fn = MarginLoss(margin=0.3, beta=1.0)
    loss_fn.cast("float64")
    loss_fn.hybridize()
    assert value(loss_fn, x, labels, (a, p, n)) == pytest.approx(
        ref.margin_loss(x, labels, margin=0.3, beta=1.0, indices=(a, p, n)), rel=1e-9)
    numeric = numeric_gradient(lambda v: ref.margin_loss(v, labels, 0.3, 1.0,
                                                         indices=(a, p, n)), x)
    np.testing.assert_allclose(gradients(loss_fn, x, labels, (a, p, n)), numeric, rtol=1e-4,
                               atol=1e-6)
    numeric = numeric_gradient(lambda v: ref.margin_loss(v, labels, 0.3, 1.0), x)
    np.testing.assert_allclose(gradients(loss_fn, x, labels), numeric, rtol=1e-4, atol=1e-6)
    empty = tuple(np.zeros(0, dtype=np.int64) for _ in range(3))
    assert value(loss_fn, x, labels, empty) == 0.0


def test_a_learnable_beta_gets_the_gradient_of_the_loop():
    from dml.losses import MarginLoss

    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 3))
    labels = np.repeat(np.arange(4), 2)
    loss_fn = MarginLoss(learn_beta=True, nu=0.1, beta=1.0)
    loss_fn.initialize()
    loss_fn.cast("float64")
    with autograd.record():
        loss = loss_fn(mx.nd.array(x, dtype="float64"), mx.nd.array(labels, dtype="float64"))
    loss.backward()
    h = 1e-6
    numeric = (ref.margin_loss(x, labels, beta=1.0 + h, nu=0.1)
               - ref.margin_loss(x, labels, beta=1.0 - h, nu=0.1)) / (2 * h)
    assert loss_fn.beta.grad().asscalar() == pytest.approx(numeric, rel=1e-4)


def test_distance_weighted_weights_and_triplets():
    from dml.miners import DistanceWeightedMiner

    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 6))
    labels = np.repeat(np.arange(4), 4)
    miner = DistanceWeightedMiner(rng=np.random.RandomState(0))
    np.testing.assert_allclose(miner.weights(x, labels), ref.dw_weights(x, labels), rtol=1e-9,
                               atol=1e-12)
    a, p, n = miner(x, labels)
    assert a.dtype == p.dtype == n.dtype == np.int64
    assert (labels[a] == labels[p]).all() and (a != p).all() and (labels[a] != labels[n]).all()
    assert np.bincount(a, minlength=16).tolist() == [4] * 16  # class size, per anchor
    # the negatives follow the weights: anchor 0's negatives over 1,500 minings (6,000 draws)
    w = miner.weights(x, labels)[0]
    drawn = np.concatenate([n[a == 0] for a, _, n in (miner(x, labels) for _ in range(1500))])
    assert np.abs(np.bincount(drawn, minlength=16) / len(drawn) - w).max() < 0.03
    # negatives beyond nonzero_loss_cutoff are never drawn; no negative possible: no triplet
    far = DistanceWeightedMiner(nonzero_loss_cutoff=0.0)(x, labels)
    assert all(len(v) == 0 for v in far)
    assert all(len(v) == 0 for v in miner(x, np.zeros(16)))
