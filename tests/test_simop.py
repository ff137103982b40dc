"""The fused host operator of the similarity losses (dml.losses.simop) against the same losses
written in MXNet operators (which tests/test_modern_losses.py holds to PML's pair loops): loss,
statistic and gradient on batches of every shape (one class, all distinct, ties, odd sizes), in
float32 and float64, every pair or the multi-similarity miner's; the cross-batch memory's fused
path against its operator form; and the tiled symmetrization."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from dml.losses import (CircleLoss, GeneralizedLiftedStructureLoss, MarginLoss,
                        MultiSimilarityLoss, NPairsLoss, NTXentLoss, SupConLoss)
from dml.losses import simkernels, simop
from dml.losses.memory import CrossBatchMemory
from dml.miners import MultiSimilarityMiner

LOSSES = {"multi_similarity": MultiSimilarityLoss, "circle": CircleLoss, "supcon": SupConLoss,
          "ntxent": NTXentLoss, "lifted": GeneralizedLiftedStructureLoss, "npairs": NPairsLoss,
          "margin": MarginLoss}


def batches():
    rng = np.random.default_rng(0)
    shapes = [(2, 1), (5, 5), (17, 3), (40, 6), (33, 1), (64, 8), (9, 2)]
    for seed, (b, classes) in enumerate(shapes):
        x = rng.normal(size=(b, 1 + seed % 6))
        labels = rng.integers(0, classes, size=b)
        if b > 3:
            x[2] = x[1]  # coinciding embeddings
        yield "b%d-c%d" % (b, classes), x, labels


def in_operators(loss, x, labels, miner_epsilon=None):
    """Loss, statistic and gradient through the MXNet-operator form of ``loss``."""
    data = mx.nd.array(x, dtype=x.dtype)
    data.attach_grad()
    y = mx.nd.array(labels, dtype=x.dtype)
    with autograd.record():
        if isinstance(loss, MarginLoss):
            out = loss.all_triplets_in_operators(mx.nd, data, y)
        elif miner_epsilon is not None:
            out = loss(data, y, indices=MultiSimilarityMiner(miner_epsilon)(x, labels))
        else:
            out = loss._forward(mx.nd, data, y, None)  # pylint: disable=protected-access
    out[0].backward()
    return out[0].asscalar(), out[1].asscalar(), data.grad.asnumpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", sorted(LOSSES) + ["mined_multi_similarity", "mined_supcon"])
def test_the_fused_operator_equals_the_operator_form(kind, dtype):
    mined = kind.startswith("mined_")
    name = kind[len("mined_"):] if mined else kind
    tol = dict(rel=1e-9, abs=1e-9) if dtype == "float64" else dict(rel=2e-4, abs=2e-5)
    for case, x, labels in batches():
        x = x.astype(dtype)
        loss = LOSSES[name](return_stat=True)
        want, want_stat, want_grad = in_operators(loss, x, labels, 0.1 if mined else None)
        got, stat, grad, _ = simop.similarity_loss(x, labels, name, loss.host_params() if hasattr(
            loss, "host_params") else None, mine_epsilon=0.1 if mined else None, need_grad=True)
        assert got == pytest.approx(want, **tol), (case, got, want)
        assert stat == pytest.approx(want_stat, **tol), case
        assert grad.dtype == x.dtype
        assert np.allclose(grad, want_grad, rtol=tol["rel"] * 10, atol=tol["abs"] * 10), case


def test_the_operator_hybridizes_runs_on_two_contexts_and_propagates_nan():
    x = np.random.default_rng(1).normal(size=(12, 4)).astype(np.float32)
    labels = np.arange(12) % 3
    for hybridize in (False, True):
        loss = SupConLoss()
        if hybridize:
            loss.hybridize()
        value = loss(mx.nd.array(x, ctx=mx.cpu(1)), mx.nd.array(labels, ctx=mx.cpu(1)))
        assert value.context == mx.cpu(1)
        assert value.asscalar() == pytest.approx(simop.similarity_loss(x, labels, "supcon")[0],
                                                 rel=1e-6)
    x[4, 1] = np.inf
    got = simop.similarity_loss(x, labels, "circle", need_grad=True)
    assert np.isnan(got[0]) and np.isnan(got[1]) and np.isnan(got[2]).all()


@pytest.mark.parametrize("kind", ["multi_similarity", "circle", "supcon", "lifted"])
@pytest.mark.parametrize("mined", [False, True])
def test_the_memory_fused_path_equals_its_operator_form(kind, mined):
    rng = np.random.default_rng(2)
    xbm = CrossBatchMemory(LOSSES[kind](return_stat=True), 25,
                           miner=MultiSimilarityMiner(0.1) if mined else None)
    for step in range(4):
        x = rng.normal(size=(10, 5))
        labels = rng.integers(0, 4, size=10)
        data = mx.nd.array(x, dtype="float64")
        data.attach_grad()
        with autograd.record():
            loss, stat = xbm(data, mx.nd.array(labels, dtype="float64"))
        loss.backward()
        refs, ref_labels = xbm.references()
        own = (step * 10 + np.arange(10)) % 25
        want = mx.nd.array(x, dtype="float64")
        want.attach_grad()
        with autograd.record():
            want_loss, want_stat = xbm.score_in_operators(
                want, mx.nd.array(labels, dtype="float64"), x, labels.astype(np.float64), refs,
                ref_labels, own)
        want_loss.backward()
        assert loss.asscalar() == pytest.approx(want_loss.asscalar(), rel=1e-6, abs=1e-9)
        assert stat.asscalar() == pytest.approx(want_stat.asscalar(), rel=1e-6, abs=1e-9)
        assert np.allclose(data.grad.asnumpy(), want.grad.asnumpy(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n", [1, 63, 64, 65, 200])
def test_tiled_symmetrization(n):
    g = np.random.default_rng(n).normal(size=(n, n)).astype(np.float32)
    want = g + g.T
    simkernels.symmetrize(g)
    assert np.array_equal(g, want)


def test_the_engine_is_drained_at_exit_before_mxnet_shuts_down():
    """A loop that ends without a sync leaves the fused operator's last backward pass queued;
    MXNet's own exit hook waiting for it while Python is torn down hung a training script (one
    run in three). dml's hook, registered after MXNet's and so run before it, waits first."""
    import subprocess
    import sys

    from runhelpers import ROOT

    script = ("import mxnet as mx\n"
              "import dml.losses.simop  # (what a fused loss imports on first use)\n"
              "drain = mx.nd.waitall\n"
              "def marked():\n"
              "    print('drained at exit', flush=True)\n"
              "    drain()\n"
              "mx.nd.waitall = marked\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert proc.stdout.strip() == "drained at exit"
