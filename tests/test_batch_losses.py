"""Batch-all, batch-hard, online triplet and online contrastive losses vs naive loops; the pair
and triplet losses on given tuples; bad input; degenerate batches."""
import logging

import mxnet as mx
import numpy as np
import pytest

import mining_views
from mxnet import autograd

from dml.losses import (ContrastiveLoss, OnlineContrastiveLoss, OnlineTripletLoss,
                        TripletBatchAllLoss, TripletBatchHardLoss, TripletMarginLoss,
                        TripletSemiHardLoss, batch)
from reference import (naive_batch_all, naive_batch_hard, naive_contrastive, naive_distance,
                       naive_online_contrastive, naive_online_triplet_all, naive_triplet,
                       numeric_gradient)

DISTANCES = ["euclidean", "squared", "cosine"]
BATCHES = [(4, 2, 2, 0), (12, 8, 3, 1), (17, 16, 5, 2), (32, 4, 4, 3), (33, 32, 7, 4), (64, 3, 16, 5)]

# name -> (constructor, naive reference (x, labels, margin, distance) -> (loss, fraction))
BATCH_LOSSES = {
    "batch_hard": (TripletBatchHardLoss, naive_batch_hard),
    "batch_all": (TripletBatchAllLoss, naive_batch_all),
    "online_all": (lambda **kw: OnlineTripletLoss(selector="all", **kw), naive_online_triplet_all),
    "contrastive_all_positive": (
        lambda **kw: OnlineContrastiveLoss(pair_selector="all_positive", **kw),
        lambda x, y, m, d: naive_online_contrastive(x, y, m, "all_positive", d)),
    "contrastive_hard_negative": (
        lambda **kw: OnlineContrastiveLoss(pair_selector="hard_negative", **kw),
        lambda x, y, m, d: naive_online_contrastive(x, y, m, "hard_negative", d)),
}


def run(loss_fn, inputs, dtype="float64"):
    arrays = [mx.nd.array(v, dtype=dtype) for v in inputs]
    for a in arrays:
        a.attach_grad()
    with autograd.record():
        loss, fraction = loss_fn(*arrays)
    loss.backward()
    return loss.asnumpy(), fraction.asnumpy(), [a.grad.asnumpy() for a in arrays]


def make(name, hybridize=True, **kwargs):
    loss_fn = BATCH_LOSSES[name][0](return_active_fraction=True, **kwargs)
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    return loss_fn


@pytest.mark.parametrize("name", list(BATCH_LOSSES))
@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("batch,dim,classes,seed", BATCHES)
def test_batch_loss_matches_naive_reference(name, hybridize, distance, batch, dim, classes, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim))
    labels = rng.integers(0, classes, size=batch)
    margin = 0.5 if distance == "cosine" else 1.0
    loss, fraction, (grad, label_grad) = run(make(name, hybridize, margin=margin, distance=distance),
                                             [x, labels])
    want_loss, want_fraction = BATCH_LOSSES[name][1](x, labels, margin, distance)
    assert loss.shape == (1,)
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fraction[0], want_fraction, atol=1e-12)
    assert np.all(np.isfinite(grad)) and np.all(label_grad == 0)


@pytest.mark.parametrize("name", list(BATCH_LOSSES))
@pytest.mark.parametrize("distance", DISTANCES)
def test_batch_loss_gradient_matches_finite_differences(name, distance):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 3))
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])
    margin = 0.3 if distance == "cosine" else 1.0
    _, _, (grad, _) = run(make(name, margin=margin, distance=distance), [x, labels])
    naive = BATCH_LOSSES[name][1]
    numeric = numeric_gradient(lambda v: naive(v, labels, margin, distance)[0], x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(BATCH_LOSSES))
@pytest.mark.parametrize("distance", ["euclidean", "squared"])
def test_batch_loss_ties_and_coinciding_embeddings(name, distance):
    # integer embeddings: distances are exact, ties are real ties, some embeddings coincide
    rng = np.random.default_rng(7)
    x = rng.integers(-1, 2, size=(24, 3)).astype(np.float64)
    x[5] = x[4]
    x[9] = x[3]
    labels = rng.integers(0, 3, size=24)
    loss, fraction, (grad, _) = run(make(name, margin=1.0, distance=distance), [x, labels], "float32")
    want_loss, want_fraction = BATCH_LOSSES[name][1](x, labels, 1.0, distance)
    np.testing.assert_allclose(loss[0], want_loss, rtol=1e-6)
    np.testing.assert_allclose(fraction[0], want_fraction, rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("name", list(BATCH_LOSSES) + ["online_hardest", "online_semihard"])
@pytest.mark.parametrize("labels", [np.zeros(8), np.arange(8)], ids=["one_class", "all_distinct"])
def test_degenerate_batch_gives_zero_loss_zero_gradient_and_a_warning(name, labels, caplog):
    x = np.random.default_rng(0).normal(size=(8, 4))
    if name.startswith("online_") and name != "online_all":
        loss_fn = OnlineTripletLoss(selector=name[len("online_"):], return_active_fraction=True)
        loss_fn.hybridize()
    else:
        loss_fn = make(name)
    with caplog.at_level(logging.WARNING, logger="dml"):
        loss, fraction, (grad, _) = run(loss_fn, [x, labels])
    assert loss[0] == 0 and fraction[0] == 0
    assert np.all(grad == 0)
    assert any("forms no" in r.getMessage() and "loss is 0" in r.getMessage() for r in caplog.records)


def test_degenerate_batch_warning_is_rate_limited(caplog):
    loss_fn = make("batch_hard")
    with caplog.at_level(logging.WARNING, logger="dml"):
        for _ in range(12):
            run(loss_fn, [np.ones((4, 2)), np.zeros(4)])
    assert len(caplog.records) == 2  # the 1st and the 10th
    assert "10 such batches" in caplog.records[1].getMessage()


def test_each_loss_instance_counts_its_own_degenerate_batches(caplog):
    """The count was one module global that the engine reset: two losses (or two runs in one
    process) shared it. Now each instance has its own."""
    first, second = make("batch_hard"), make("batch_hard")
    with caplog.at_level(logging.WARNING, logger="dml"):
        for _ in range(3):
            run(first, [np.ones((4, 2)), np.zeros(4)])
        run(second, [np.ones((4, 2)), np.zeros(4)])
    counts = [r.getMessage().split("(")[2].split(" such")[0] for r in caplog.records]
    assert counts == ["1", "1"]  # the 1st of first, the 1st of second (not the 4th)


def test_batch_all_fraction_falls_when_classes_separate():
    labels = np.repeat(np.arange(3), 4)
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(12, 2))
    separated = mixed * 0.01 + 10 * np.eye(3)[labels][:, :2] + np.array([0, 20])[labels // 2][:, None]
    _, mixed_fraction, _ = run(make("batch_all"), [mixed, labels])
    _, separated_fraction, _ = run(make("batch_all"), [separated, labels])
    assert separated_fraction[0] == 0 < mixed_fraction[0]


def test_batch_all_on_two_contexts_matches_one():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    labels = np.repeat(np.arange(4), 4)
    loss_fn = make("batch_all")
    values = []
    for ctx in (mx.cpu(0), mx.cpu(1)):
        emb = mx.nd.array(x, ctx=ctx)
        emb.attach_grad()
        with autograd.record():
            loss, _ = loss_fn(emb, mx.nd.array(labels, ctx=ctx))
        loss.backward()
        assert loss.context == ctx and emb.grad.context == ctx
        values.append((loss.asscalar(), emb.grad.asnumpy()))
    assert values[0][0] == values[1][0]
    np.testing.assert_array_equal(values[0][1], values[1][1])


# -- OnlineTripletLoss with a random or hardest negative per pair ---------------------------------


@pytest.mark.parametrize("selector", ["hardest", "random_hard", "semihard"])
@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
@pytest.mark.parametrize("batch,dim,classes,seed", BATCHES)
def test_online_triplet_matches_naive_loss_on_its_choice(selector, hybridize, distance, batch, dim,
                                                         classes, seed):
    # The random selectors draw from numpy's global generator: replay the same draw to learn the
    # chosen negatives, then check them (by brute force in test_mining) and the loss on them.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim))
    labels = rng.integers(0, classes, size=batch)
    margin = 0.5 if distance == "cosine" else 1.0
    loss_fn = OnlineTripletLoss(margin=margin, selector=selector, distance=distance,
                                return_active_fraction=True)
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    np.random.seed(seed)
    loss, fraction, (grad, _) = run(loss_fn, [x, labels])
    d = naive_distance(x, distance)
    np.random.seed(seed)
    chosen, valid = mining_views.select_negatives(d, labels, selector, margin)
    terms = [max(d[a, p] - d[a, chosen[a, p]] + margin, 0.0) for a, p in zip(*np.nonzero(valid))]
    candidates = mining_views.candidate_pairs(labels, unordered=True).sum()
    np.testing.assert_allclose(loss[0], np.mean(terms) if terms else 0.0, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(fraction[0], len(terms) / max(candidates, 1), atol=1e-12)
    assert np.all(np.isfinite(grad))


def test_online_triplet_hardest_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(9, 3))
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])
    loss_fn = OnlineTripletLoss(margin=2.0, selector="hardest", return_active_fraction=True)
    _, _, (grad, _) = run(loss_fn, [x, labels])

    def naive(v):
        d = naive_distance(v, "euclidean")
        chosen, valid = mining_views.select_negatives(d, labels, "hardest", 2.0)
        terms = [max(d[a, p] - d[a, chosen[a, p]] + 2.0, 0) for a, p in zip(*np.nonzero(valid))]
        return np.mean(terms)

    np.testing.assert_allclose(grad, numeric_gradient(naive, x), rtol=1e-4, atol=1e-6)


# -- losses on given pairs and triplets -----------------------------------------------------------


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
def test_contrastive_matches_naive_reference_and_finite_differences(hybridize, distance):
    rng = np.random.default_rng(3)
    x1, x2 = rng.normal(size=(2, 20, 5))
    x2[:3] = x1[:3]  # coinciding pairs: d = 0
    y = rng.integers(0, 2, size=20).astype(np.float64)
    y[0], y[1] = 1, 0
    if distance == "cosine":  # 1 - cos of equal vectors is only ~0 in floating point
        y[0] = 0
    margin = 0.5 if distance == "cosine" else 2.0
    loss_fn = ContrastiveLoss(margin=margin, distance=distance, return_active_fraction=True)
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    loss, fraction, (g1, g2, _) = run(loss_fn, [x1, x2, y])
    want, want_fraction = naive_contrastive(x1, x2, y, margin, distance)
    np.testing.assert_allclose(loss[0], want, rtol=1e-9)
    np.testing.assert_allclose(fraction[0], want_fraction)
    np.testing.assert_allclose(g1[3:], numeric_gradient(
        lambda v: naive_contrastive(np.concatenate([x1[:3], v]), x2, y, margin, distance)[0], x1[3:]),
        rtol=1e-4, atol=1e-7)
    assert np.all(np.isfinite(g1)) and np.all(np.isfinite(g2))


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("distance", DISTANCES)
def test_triplet_loss_matches_naive_reference_and_finite_differences(hybridize, distance):
    rng = np.random.default_rng(4)
    a, p, n = rng.normal(size=(3, 20, 5))
    n[0] = a[0]
    margin = 0.5 if distance == "cosine" else 1.0
    loss_fn = TripletMarginLoss(margin=margin, distance=distance, return_active_fraction=True)
    if hybridize:
        loss_fn.hybridize(static_alloc=True)
    loss, fraction, (ga, gp, gn) = run(loss_fn, [a, p, n])
    want, want_fraction = naive_triplet(a, p, n, margin, distance)
    np.testing.assert_allclose(loss[0], want, rtol=1e-9)
    np.testing.assert_allclose(fraction[0], want_fraction)
    np.testing.assert_allclose(gp, numeric_gradient(lambda v: naive_triplet(a, v, n, margin, distance)[0], p),
                               rtol=1e-4, atol=1e-7)
    assert all(np.all(np.isfinite(g)) for g in (ga, gp, gn))


# -- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ContrastiveLoss, TripletMarginLoss, TripletBatchHardLoss, TripletBatchAllLoss,
                                 OnlineTripletLoss, OnlineContrastiveLoss])
@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf")])
def test_margin_must_be_positive(cls, bad):
    with pytest.raises(ValueError, match="margin must be a finite number > 0"):
        cls(margin=bad)


def test_unknown_selectors_and_distances_are_rejected():
    with pytest.raises(ValueError, match="selector must be one of all|hardest|random_hard|semihard"):
        OnlineTripletLoss(selector="hard")
    with pytest.raises(ValueError, match="pair_selector must be one of"):
        OnlineContrastiveLoss(pair_selector="hardest")
    with pytest.raises(ValueError, match="distance"):
        TripletBatchAllLoss(distance="l1")


# -- non-finite input ---------------------------------------------------------------------------

_BATCH_LOSSES = [TripletSemiHardLoss, TripletBatchHardLoss, TripletBatchAllLoss,
                 lambda **kw: OnlineTripletLoss(selector="hardest", **kw),
                 lambda **kw: OnlineTripletLoss(selector="all", **kw),
                 lambda **kw: OnlineContrastiveLoss(pair_selector="all_positive", **kw),
                 lambda **kw: OnlineContrastiveLoss(pair_selector="hard_negative", **kw)]


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("make", _BATCH_LOSSES)
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_a_non_finite_embedding_gives_a_nan_loss_and_gradient(make, bad, hybridize, distance):
    """relu/max and the kernels' `not d > 0` used to turn NaN distances into 0: a NaN batch gave
    0.2 and training went on. One bad value now makes the loss and the whole gradient NaN."""
    loss = make(margin=0.2, distance=distance)
    if hybridize:
        loss.hybridize()
    x = mx.nd.random.normal(shape=(16, 8))
    x[5, 3] = bad
    x.attach_grad()
    with autograd.record():
        value = loss(x, mx.nd.array(np.arange(16) % 4))
    value.backward()
    assert np.isnan(value.asscalar())
    assert np.isnan(x.grad.asnumpy()).all()


def test_propagate_non_finite_leaves_finite_values_and_gradients_bit_identical():
    from dml.losses.base import propagate_non_finite

    x = mx.nd.array(np.random.default_rng(3).normal(size=(16, 8)) * 1e37)  # sum(x) overflows
    grads = []
    for wrap in (False, True):
        x.attach_grad()
        with autograd.record():
            value = (x * 1e-3).sum(axis=1).mean().reshape((1,))
            if wrap:
                value = propagate_non_finite(mx.nd, value, x)
        value.backward()
        grads.append((value.asnumpy(), x.grad.asnumpy()))
    assert np.array_equal(grads[0][0], grads[1][0]) and np.array_equal(grads[0][1], grads[1][1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_tuple_losses_give_nan_on_non_finite_input(bad):
    from dml.losses import ContrastiveLoss, TripletMarginLoss

    a = mx.nd.random.normal(shape=(8, 4))
    a[2, 1] = bad
    for value in (TripletMarginLoss(margin=0.5)(a, a + 1, a * 2),
                  ContrastiveLoss(margin=1.0)(a, a + 1, mx.nd.ones(8))):
        assert np.isnan(value.asscalar())
    clean = mx.nd.random.normal(shape=(8, 4))
    assert np.isfinite(TripletMarginLoss(margin=0.5)(clean, clean + 1, clean * 2).asscalar())


@pytest.mark.parametrize("head", ["arcface", "cosface", "sphereface"])
def test_margin_heads_give_nan_logits_on_non_finite_input(head):
    """clip() inside the heads hid a NaN cosine."""
    from mxnet import gluon

    from dml.losses.heads import MARGIN_HEADS

    net = MARGIN_HEADS[head](4)
    net.initialize()
    x = mx.nd.random.normal(shape=(8, 4))
    x[1, 1] = float("nan")
    labels = mx.nd.array(np.arange(8) % 4)
    x.attach_grad()
    with autograd.record():
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(net(x, labels), labels).mean()
    loss.backward()
    assert np.isnan(loss.asscalar()) and np.isnan(x.grad.asnumpy()).all()


def test_numpy_batch_loss_is_nan_on_non_finite_input():
    x = np.ones((6, 3), np.float32)
    x[0, 0] = np.inf
    for kind in batch.KINDS:
        loss, fraction, grad = batch.batch_loss(x, np.arange(6) % 2, kind, need_grad=True)
        assert np.isnan(loss) and np.isnan(fraction) and np.isnan(grad).all()
