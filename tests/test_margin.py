"""ArcFace, CosFace and SphereFace heads against numpy references of their formulas, including
angles near 0 and pi, ArcFace's theta + m > pi fallback and identical vectors."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from dml.losses import ArcFace, CosFace, SphereFace

EPS = 1e-6


def ref_cos(x, w):
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    wn = w / np.linalg.norm(w, axis=1, keepdims=True)
    return np.clip(xn @ wn.T, -1 + EPS, 1 - EPS)


def ref_arcface(cos, y, s, m, easy_margin):
    out = cos.copy()
    for i, c in enumerate(y):
        theta = math.acos(cos[i, c])
        if easy_margin:
            out[i, c] = math.cos(theta + m) if cos[i, c] > 0 else cos[i, c]
        elif theta + m < math.pi:
            out[i, c] = math.cos(theta + m)
        else:  # past pi the cosine would rise again: InsightFace's fallback
            out[i, c] = cos[i, c] - m * math.sin(m)
    return s * out


def ref_cosface(cos, y, s, m):
    out = cos.copy()
    out[np.arange(len(y)), y] -= m
    return s * out


def ref_psi(theta, m):
    k = math.floor(m * theta / math.pi)
    return (-1) ** k * math.cos(m * theta) - 2 * k


def ref_sphereface(cos, y, s, m, lam):
    out = cos.copy()
    for i, c in enumerate(y):
        out[i, c] = (lam * cos[i, c] + ref_psi(math.acos(cos[i, c]), m)) / (1 + lam)
    return s * out


def rotate(w, angle, rng):
    """A unit vector at ``angle`` radians from unit vector ``w``."""
    u = rng.normal(size=w.shape)
    u -= (u @ w) * w
    u /= np.linalg.norm(u)
    return math.cos(angle) * w + math.sin(angle) * u


def batch_with_angles(num_classes=4, dim=6, seed=0):
    """Embeddings at chosen angles to their class weight: 0 (identical), near 0, middling, past
    pi - 0.5, near pi and exactly pi (opposite), plus random ones."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(num_classes, dim))
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    angles = [0.0, 1e-4, 0.3, 1.2, math.pi / 2, 2.8, math.pi - 1e-4, math.pi]
    y = np.arange(len(angles)) % num_classes
    x = np.stack([rotate(w[c], a, rng) for c, a in zip(y, angles)])
    x[0] = w[y[0]]  # exactly identical
    x[-1] = -w[y[-1]]  # exactly opposite
    extra_y = rng.integers(0, num_classes, size=6)
    x = np.concatenate([x * 3.0, rng.normal(size=(6, dim))])
    return x.astype(np.float32), np.concatenate([y, extra_y]), w.astype(np.float32)


def run_head(head, x, y, w, hybridize):
    head.initialize()
    if hybridize:
        head.hybridize()
    head(mx.nd.array(x), mx.nd.array(y))  # shapes the weight
    head.weight.set_data(mx.nd.array(w))
    xs, ws = mx.nd.array(x), head.weight.data()
    xs.attach_grad()
    with autograd.record():
        logits = head(xs, mx.nd.array(y))
        loss = gluon.loss.SoftmaxCrossEntropyLoss()(logits, mx.nd.array(y)).mean()
    loss.backward()
    return logits.asnumpy(), xs.grad.asnumpy(), head.weight.grad().asnumpy()


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("m,easy", [(0.5, False), (0.5, True), (0.2, False), (1.2, False), (0.0, False)])
def test_arcface_matches_the_formula(hybridize, m, easy):
    x, y, w = batch_with_angles()
    logits, gx, gw = run_head(ArcFace(4, s=16.0, m=m, easy_margin=easy), x, y, w, hybridize)
    np.testing.assert_allclose(logits, ref_arcface(ref_cos(x, w), y, 16.0, m, easy), atol=2e-4)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()


def test_arcface_target_logit_never_rises_with_the_angle():
    """cos(theta + m) alone would rise again past pi - m; with the fallback it keeps falling."""
    head = ArcFace(2, s=1.0, m=0.5)
    cos = mx.nd.array(np.cos(np.linspace(0.0, math.pi, 400)))
    target = head._target_logit(mx.nd, cos).asnumpy()
    assert (np.diff(target) <= 1e-6).all()


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("m", [0.35, 0.1, 0.0])
def test_cosface_matches_the_formula(hybridize, m):
    x, y, w = batch_with_angles(seed=1)
    logits, gx, gw = run_head(CosFace(4, s=30.0, m=m), x, y, w, hybridize)
    np.testing.assert_allclose(logits, ref_cosface(ref_cos(x, w), y, 30.0, m), atol=2e-4)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("hybridize", [False, True])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_sphereface_matches_the_formula(hybridize, m):
    x, y, w = batch_with_angles(seed=2)
    head = SphereFace(4, s=10.0, m=m)
    logits, gx, gw = run_head(head, x, y, w, hybridize)
    lam = head.lambda_at(0)  # the first training batch
    np.testing.assert_allclose(logits, ref_sphereface(ref_cos(x, w), y, 10.0, m, lam), atol=2e-3)
    assert np.isfinite(gx).all() and np.isfinite(gw).all()


@pytest.mark.parametrize("m", [2, 3, 4])
def test_psi_is_continuous_and_decreasing(m):
    """dml's SphereFace head itself (in float64, lambda 0: its target logit is psi): falling
    over the whole angle, 1 at theta 0, 1 - 2m at pi, equal to the piecewise formula."""
    theta = np.linspace(0.0, math.pi, 2001)
    head = SphereFace(2, s=1.0, m=m)
    head.initialize()
    head.cast("float64")
    head.hybridize()
    cos = np.clip(np.cos(theta), -1 + EPS, 1 - EPS)
    # with lambda = 0 the target logit is psi itself: set it and read psi back through the head
    head.anneal_lambda.set_data(mx.nd.zeros((1,), dtype="float64"))
    x = mx.nd.array(np.stack([cos, np.sqrt(1 - cos ** 2)], axis=1), dtype="float64")
    labels = mx.nd.zeros(len(cos), dtype="float64")
    head(x, labels)
    head.weight.set_data(mx.nd.array([[1.0, 0.0], [0.0, 1.0]], dtype="float64"))
    psi = head(x, labels)[:, 0].asnumpy()  # predict mode: no annealing step
    assert (np.diff(psi) < 0).all()
    assert psi[0] == pytest.approx(1.0, abs=1e-4) and psi[-1] == pytest.approx(1.0 - 2 * m,
                                                                               abs=1e-4)
    np.testing.assert_allclose(psi, [ref_psi(math.acos(c), m) for c in cos], atol=1e-6)


def test_sphereface_anneals_once_per_batch_over_devices():
    ctx = [mx.cpu(0), mx.cpu(1)]
    head = SphereFace(3, s=5.0, m=4, base=100.0, gamma=0.5, power=1.0, lambda_min=2.0)
    head.initialize(ctx=ctx)
    x, y = mx.nd.random.normal(shape=(4, 5)), mx.nd.array([0, 1, 2, 0])
    for c in ctx:
        head(x.as_in_context(c), y.as_in_context(c))  # predict mode: lambda stays
    assert head.iteration == 0 and head.anneal_lambda.data(ctx[0]).asscalar() == 1.0
    for batch in range(3):
        with autograd.record():
            for c in ctx:
                head(x.as_in_context(c), y.as_in_context(c))
        assert head.iteration == batch
        for c in ctx:
            assert head.anneal_lambda.data(c).asscalar() == pytest.approx(head.lambda_at(batch))
    assert [head.lambda_at(t) for t in (0, 2, 1000)] == pytest.approx([100.0, 50.0, 2.0])


@pytest.mark.parametrize("make,message", [
    (lambda: ArcFace(4, m=math.pi / 2), "ArcFace margin m must be in [0, pi/2)"),
    (lambda: ArcFace(4, m=-0.1), "ArcFace margin m must be in [0, pi/2)"),
    (lambda: CosFace(4, m=1.0), "CosFace margin m must be in [0, 1)"),
    (lambda: SphereFace(4, m=2.5), "SphereFace margin m must be a positive integer"),
    (lambda: SphereFace(4, m=0), "SphereFace margin m must be a positive integer"),
    (lambda: ArcFace(4, s=0.0), "scale s must be a finite number > 0"),
    (lambda: CosFace(4, s=float("inf")), "scale s must be a finite number > 0"),
    (lambda: ArcFace(1), "num_classes must be an integer >= 2"),
])
def test_out_of_range_settings_are_refused(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert message in str(err.value)


def test_heads_train_a_separable_toy_problem():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 3
    y = np.repeat(np.arange(3), 20)
    x = mx.nd.array((centers[y] + rng.normal(size=(60, 8))).astype(np.float32))
    for head in (ArcFace(3, s=16.0), CosFace(3, s=16.0), SphereFace(3, s=16.0)):
        net = gluon.nn.Dense(4)
        net.initialize(mx.init.Xavier())
        head.initialize()
        params = net.collect_params()
        params.update(head.collect_params())
        trainer = gluon.Trainer(params, "adam", {"learning_rate": 0.05})
        for _ in range(60):
            with autograd.record():
                loss = gluon.loss.SoftmaxCrossEntropyLoss()(head(net(x), mx.nd.array(y)),
                                                            mx.nd.array(y)).mean()
            loss.backward()
            trainer.step(1)
        cos = ref_cos(net(x).asnumpy(), head.weight.data().asnumpy())
        assert (cos.argmax(axis=1) == y).mean() > 0.95, type(head).__name__


@pytest.mark.parametrize("hybridize", [False, True])
def test_subcenter_arcface_takes_each_class_nearest_sub_center(hybridize):
    """3 sub-centers per class: cos(theta_j) is the largest of class j's three cosines, then
    ArcFace's formula; the gradient reaches only the nearest sub-center of each class."""
    from dml.losses import SubCenterArcFace

    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 0, 1])
    w = rng.normal(size=(12, 5)).astype(np.float32)
    head = SubCenterArcFace(4, s=16.0, m=0.5, sub_centers=3)
    logits, gx, gw = run_head(head, x, y, w, hybridize)
    per_sub = ref_cos(x, w).reshape(6, 4, 3)
    np.testing.assert_allclose(logits, ref_arcface(per_sub.max(axis=2), y, 16.0, 0.5, False),
                               atol=2e-4)
    nearest = set()
    for i in range(6):
        nearest |= {c * 3 + int(np.argmax(per_sub[i, c])) for c in range(4)}
    touched = {r for r in range(12) if np.abs(gw[r]).sum() > 0}
    assert touched == nearest and np.isfinite(gx).all()
    with pytest.raises(ValueError, match="sub_centers"):
        SubCenterArcFace(4, sub_centers=0)
