"""The fused host operator behind the online losses (dml.losses.batch): every kind against
brute-force B x B x B numpy references at larger and awkward batch shapes, in float32 and float64;
its gradient against finite differences for every kind and distance; the backward pass when the
forward kept no gradient; and the memory bound at B=2048."""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from dml.losses import batch, kernels
from reference import naive_distance, numeric_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETERMINISTIC = ["semihard_tf", "batch_hard", "batch_all", "all", "hardest", "all_positive",
                 "hard_negative"]


def brute_force(d, labels, kind, margin):
    """Vectorised B x B x B references (fine for B <= 200): (loss, fraction)."""
    n = len(labels)
    same = labels[:, None] == labels[None, :]
    eye = np.eye(n, dtype=bool)
    pos, neg = same & ~eye, ~same
    has_neg = neg.any(1)
    if kind in ("all_positive", "hard_negative"):
        upper = np.triu(np.ones((n, n), dtype=bool), 1)
        p, q = pos & upper, neg & upper
        if not p.any() or not q.any():
            return 0.0, 0.0
        if kind == "hard_negative" and p.sum() < q.sum():
            cut = np.sort(d[q])[p.sum() - 1]
            q = q & (d <= cut)  # ties at the cut would make the choice ambiguous: none here
        terms = np.concatenate([0.5 * d[p] ** 2, 0.5 * np.maximum(margin - d[q], 0) ** 2])
        return terms.mean(), (terms > 0).mean()
    if kind == "batch_hard":
        valid = pos.any(1) & has_neg
        if not valid.any():
            return 0.0, 0.0
        far = np.where(pos, d, -np.inf).max(1)
        near = np.where(neg, d, np.inf).min(1)
        terms = np.maximum(far - near + margin, 0)[valid]
        return terms.mean(), (terms > 0).mean()
    unordered = kind in ("all", "hardest")
    pairs = (np.triu(pos, 1) if unordered else pos) & has_neg[:, None]
    if not pairs.any():
        return 0.0, 0.0
    t = d[:, :, None] - d[:, None, :] + margin  # [a, p, n]
    triplet = pairs[:, :, None] & neg[:, None, :]
    if kind in ("batch_all", "all"):
        terms = np.maximum(t, 0)[triplet]
        active = (terms > 0).sum()
        loss = terms.sum() / max(active if kind == "batch_all" else len(terms), 1)
        return loss, active / len(terms)
    d_an = np.where(neg[:, None, :], np.broadcast_to(d[:, None, :], t.shape), np.nan)
    if kind == "semihard_tf":
        farther = np.where(d_an > d[:, :, None], d_an, np.inf).min(2)
        chosen = np.where(np.isfinite(farther), farther, np.nanmax(d_an, 2))
        terms = np.maximum(d - chosen + margin, 0)[pairs]
        return terms.mean(), (terms > 0).mean()
    closest = np.where(neg, d, np.inf).min(1)[:, None]  # hardest
    terms = (d - closest + margin)[pairs]
    valid = terms > 0
    return (terms[valid].sum() / max(valid.sum(), 1)), valid.mean()


SHAPES = [  # batch, classes, dim: B not divisible by the classes, two big classes, many small ones
    (150, 7, 16), (160, 2, 8), (199, 60, 32), (97, 97, 4), (120, 1, 8), (64, 3, 2),
]


@pytest.mark.parametrize("kind", DETERMINISTIC)
@pytest.mark.parametrize("batch_size,classes,dim", SHAPES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_brute_force(kind, batch_size, classes, dim, dtype):
    rng = np.random.default_rng(batch_size + classes)
    x = rng.normal(size=(batch_size, dim)).astype(dtype)
    labels = rng.integers(0, classes, size=batch_size) if classes < batch_size else np.arange(batch_size)
    margin = 0.5
    loss, fraction, grad = batch.batch_loss(x, labels, kind, margin, need_grad=True)
    d = naive_distance(x.astype(np.float64), "euclidean")
    want_loss, want_fraction = brute_force(d, labels, kind, margin)
    tol = 1e-9 if dtype == np.float64 else 2e-5
    assert loss == pytest.approx(want_loss, rel=tol, abs=tol)
    assert fraction == pytest.approx(want_fraction, rel=tol, abs=tol)
    assert grad.dtype == dtype and grad.shape == x.shape and np.all(np.isfinite(grad))


@pytest.mark.parametrize("kind", DETERMINISTIC)
@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
def test_gradient_matches_finite_differences(kind, distance):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(14, 3))
    labels = rng.integers(0, 3, size=14)
    margin = 0.3 if distance == "cosine" else 1.0
    grad = batch.batch_loss(x, labels, kind, margin, distance, need_grad=True)[2]
    numeric = numeric_gradient(lambda v: batch.batch_loss(v, labels, kind, margin, distance)[0], x)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_random_selectors_use_the_given_generator():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(40, 4)), rng.integers(0, 4, size=40)
    for kind in ("random_hard", "semihard"):
        one = batch.batch_loss(x, labels, kind, 1.0, rng=np.random.RandomState(5), need_grad=True)
        two = batch.batch_loss(x, labels, kind, 1.0, rng=np.random.RandomState(5), need_grad=True)
        assert one[:2] == two[:2]
        np.testing.assert_array_equal(one[2], two[2])


def test_backward_without_a_kept_gradient_recomputes_it():
    # outside train mode the forward keeps no gradient; the backward must still be right
    rng = np.random.default_rng(1)
    x_np, labels = rng.normal(size=(24, 5)), rng.integers(0, 3, size=24)
    grads = []
    for train_mode in (True, False):
        x = mx.nd.array(x_np, dtype="float64")
        x.attach_grad()
        with autograd.record(train_mode=train_mode):
            loss, _ = batch.host_loss(mx.nd, x, mx.nd.array(labels, dtype="float64"),
                                      "semihard_tf", 1.0, "euclidean")
            scaled = 3 * loss
        scaled.backward()
        grads.append(x.grad.asnumpy())
    want = 3 * batch.batch_loss(x_np, labels, "semihard_tf", 1.0, need_grad=True)[2]
    np.testing.assert_allclose(grads[0], want, rtol=1e-12)
    np.testing.assert_allclose(grads[1], want, rtol=1e-12)


def test_pair_offsets():
    codes = np.array([0, 1, 0, 0, 2, 1])
    np.testing.assert_array_equal(np.diff(kernels.pair_offsets(codes)), [2, 1, 2, 2, 0, 1])
    np.testing.assert_array_equal(np.diff(kernels.pair_offsets(codes, unordered=True)),
                                  [2, 1, 1, 0, 0, 0])
    assert kernels.pair_offsets(np.zeros(4, dtype=np.int64))[-1] == 0  # no negatives
    assert kernels.pair_offsets(np.zeros(4, dtype=np.int64), need_negative=False)[-1] == 12


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="kind must be one of"):
        batch.batch_loss(np.zeros((2, 2)), [0, 1], "quadruplet")


MEMORY_SCRIPT = """
import json, sys
from dml import bench
name, size = sys.argv[1], int(sys.argv[2])
bench.measure_loss(name, 64, 128, 16, 1)       # compile and warm up at a small batch
before = bench._peak_rss_mb()
after = bench.measure_loss(name, size, 128, 16, 1)["peak_mb"]
print(json.dumps({"added_mb": after - before}))
"""


@pytest.mark.parametrize("name", ["triplet_semihard", "triplet_batch_hard", "triplet_batch_all",
                                  "online_triplet", "online_contrastive"])
def test_peak_memory_at_2048_is_a_few_batch_squared_arrays(name):
    size = 2048
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, name, str(size)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    added = json.loads(proc.stdout.strip().splitlines()[-1])["added_mb"]
    square_mb = size * size * 4 / 2 ** 20  # one float32 B x B array: 16 MB (B x B x B: 32 GB)
    assert added <= 8 * square_mb, "%s added %.0f MB at B=%d" % (name, added, size)
