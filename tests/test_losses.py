import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from dml.losses import TripletSemiHardLoss, pairwise_distance
from reference import naive_distance, naive_semihard, numeric_gradient


def run_loss(loss_fn, x, labels, dtype="float64"):
    emb = mx.nd.array(x, dtype=dtype)
    lab = mx.nd.array(labels, dtype=dtype)
    emb.attach_grad()
    with autograd.record():
        loss, active = loss_fn(emb, lab)
    loss.backward()
    return loss.asnumpy(), active.asnumpy(), emb.grad.asnumpy()


def make_loss(hybridize, **kwargs):
    loss_fn = TripletSemiHardLoss(return_active_fraction=True, **kwargs)
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    return loss_fn


@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
def test_pairwise_distance_matches_loops(distance):
    x = np.random.default_rng(0).normal(size=(9, 5))
    got = pairwise_distance(mx.nd, mx.nd.array(x, dtype="float64"), distance)
    np.testing.assert_allclose(got.asnumpy(), naive_distance(x, distance), atol=1e-9)


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
@pytest.mark.parametrize("batch,dim,classes,seed", [
    (4, 2, 2, 0), (12, 8, 3, 1), (17, 16, 5, 2), (32, 4, 4, 3), (33, 32, 7, 4), (64, 3, 16, 5),
])
def test_semihard_matches_naive_reference(hybridize, distance, batch, dim, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim))
    labels = rng.integers(0, classes, size=batch)
    margin = 0.5 if distance == "cosine" else 1.0
    loss, active, grad = run_loss(make_loss(hybridize, margin=margin, distance=distance), x, labels)
    want_loss, want_active = naive_semihard(x, labels, margin, distance)
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(active[0], want_active, atol=1e-12)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_semihard_ties_and_coinciding_embeddings(hybridize, distance):
    # Integer embeddings: every distance is exact in float32, so ties are real ties, and several
    # embeddings coincide (zero distances) within and across classes.
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, size=(24, 3)).astype(np.float64)
    x[5] = x[4]
    x[9] = x[3]
    labels = rng.integers(0, 3, size=24)
    loss, active, grad = run_loss(make_loss(hybridize, margin=1.0, distance=distance), x, labels,
                                  dtype="float32")
    want_loss, want_active = naive_semihard(x, labels, 1.0, distance)
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-6)
    np.testing.assert_allclose(active[0], want_active, rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
def test_one_class_batch_gives_zero_loss_and_zero_gradient(hybridize, distance):
    x = np.random.default_rng(0).normal(size=(8, 4))
    loss, active, grad = run_loss(make_loss(hybridize, distance=distance), x, np.zeros(8))
    assert loss[0] == 0 and active[0] == 0
    assert np.all(grad == 0)


def test_all_embeddings_identical_keep_finite_gradient():
    x = np.ones((6, 4))
    loss, _, grad = run_loss(make_loss(True), x, [0, 0, 1, 1, 2, 2], dtype="float32")
    assert loss[0] == pytest.approx(1.0)  # every d = 0: relu(0 - 0 + margin)
    assert np.all(np.isfinite(grad))


def _semihard_by_anchor(x, labels, margin):
    """The semi-hard loss written anchor by anchor, skipping by name the anchors that have no
    negative or no positive: ``(loss, pairs counted)``."""
    labels = np.asarray(labels)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    terms = []
    for a in range(len(x)):
        negatives = np.flatnonzero(labels != labels[a])
        positives = [p for p in np.flatnonzero(labels == labels[a]) if p != a]
        if not len(negatives) or not positives:
            continue  # no term of its own
        for p in positives:
            farther = d[a, negatives][d[a, negatives] > d[a, p]]
            d_an = farther.min() if len(farther) else d[a, negatives].max()
            terms.append(max(d[a, p] - d_an + margin, 0.0))
    return (float(np.mean(terms)) if terms else 0.0), len(terms)


@pytest.mark.parametrize("labels", [
    [0, 0, 0, 0, 0, 0, 0],  # one class: no anchor has a negative, so there is no term at all
    [0, 0, 0, 1, 1, 1, 2],  # the class-2 anchor has no positive: it adds no term of its own
    [0, 0, 0, 0, 0, 1, 2],  # two singletons: only the anchors of class 0 count
])
def test_anchors_without_negatives_contribute_nothing(labels):
    from dml.losses import TripletBatchAllLoss, TripletBatchHardLoss

    x = np.random.default_rng(3).normal(size=(7, 3))
    want, pairs = _semihard_by_anchor(x, labels, 1.0)
    loss, _, grad = run_loss(make_loss(False), x, labels)
    np.testing.assert_allclose(loss[0], want, rtol=1e-9)
    if pairs == 0:  # every loss: zero, and no gradient
        for cls in (TripletSemiHardLoss, TripletBatchHardLoss, TripletBatchAllLoss):
            loss, _, grad = run_loss(cls(return_active_fraction=True), x, labels)
            assert loss[0] == 0 and np.all(grad == 0), cls.__name__
    else:  # the anchors without a term get a gradient only as others' negatives or positives
        lonely = [i for i, c in enumerate(labels) if labels.count(c) == 1]
        d_loss = numeric_gradient(lambda v: _semihard_by_anchor(v, labels, 1.0)[0], x)
        np.testing.assert_allclose(grad[lonely], d_loss[lonely], atol=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
def test_semihard_gradient_matches_finite_differences(distance):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(8, 3))
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    margin = 0.3 if distance == "cosine" else 1.0
    loss_fn = make_loss(True, margin=margin, distance=distance)
    _, _, grad = run_loss(loss_fn, x, labels)
    numeric = numeric_gradient(lambda v: naive_semihard(v, labels, margin, distance)[0], x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


def test_float32_training_shapes_on_two_contexts_match_one():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    labels = np.repeat(np.arange(4), 4)
    loss_fn = make_loss(True)
    values = []
    for ctx in (mx.cpu(0), mx.cpu(1)):
        loss, _ = loss_fn(mx.nd.array(x, ctx=ctx), mx.nd.array(labels, ctx=ctx))
        assert loss.context == ctx
        values.append(loss.asscalar())
    assert values[0] == values[1]


@pytest.mark.parametrize("bad", [0, -1.0])
def test_margin_must_be_positive(bad):
    with pytest.raises(ValueError, match="margin"):
        TripletSemiHardLoss(margin=bad)


def test_unknown_distance_is_rejected():
    with pytest.raises(ValueError, match="distance"):
        TripletSemiHardLoss(distance="manhattan")
