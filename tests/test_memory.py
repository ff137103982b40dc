"""Cross-batch memory (XBM): the ring buffer, every wrapped loss against the pair-by-pair loop of
PML's definition over the batch x memory pairs (each anchor's own copy left out), the online
contrastive loss on every distance and selector against its loop and the in-batch loss, gradients
by finite differences, the multi-similarity miner over the memory, NaN input, two workers (their
gathered batches) equal to one worker fed both shards, and --memory-size end to end with an
exact resume of the memory in a new process."""
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import modern_reference as R
from dml.cli import main
from dml.losses import (CircleLoss, GeneralizedLiftedStructureLoss, MultiSimilarityLoss,
                        NPairsLoss, NTXentLoss, OnlineContrastiveLoss, SupConLoss)
from dml.losses.memory import CrossBatchMemory
from dml.miners import MultiSimilarityMiner
from reference import numeric_gradient
from runhelpers import ROOT, only_run_dir, refused

LOSSES = {
    "ms": (lambda: MultiSimilarityLoss(), R.ms),
    "circle": (lambda: CircleLoss(), R.circle),
    "supcon": (lambda: SupConLoss(), R.supcon),
    "ntxent": (lambda: NTXentLoss(), R.ntxent),
    "lifted": (lambda: GeneralizedLiftedStructureLoss(), R.lifted),
}


def call(xbm, x, labels):
    """The loss of a float64 batch (with its gradient)."""
    data = mx.nd.array(x, dtype="float64")
    data.attach_grad()
    with autograd.record():
        loss = xbm(data, mx.nd.array(labels, dtype="float64"))
    loss.backward()
    return loss.asscalar(), data.grad.asnumpy()


def test_the_ring_buffer_keeps_the_newest_rows_in_place():
    xbm = CrossBatchMemory(MultiSimilarityLoss(), 5)
    rows = xbm.enqueue(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 2]))
    assert list(rows) == [0, 1, 2] and xbm.filled == 3
    rows = xbm.enqueue(np.full((3, 2), 9, dtype=np.float32), np.array([7, 7, 7]))
    assert list(rows) == [3, 4, 0] and xbm.filled == 5  # the oldest row is overwritten
    refs, labels = xbm.references()
    assert list(labels) == [7, 1, 2, 7, 7] and refs[0].tolist() == [9, 9]
    with pytest.raises(ValueError, match="does not fit a memory of 5"):
        xbm.enqueue(np.zeros((6, 2), dtype=np.float32), np.zeros(6))
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="memory_size must be a whole number"):
            CrossBatchMemory(MultiSimilarityLoss(), bad)
    with pytest.raises(ValueError, match="not NPairsLoss"):
        CrossBatchMemory(NPairsLoss(), 8)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_wrapped_loss_matches_the_loop_over_batch_and_memory(name):
    make, reference = LOSSES[name]
    rng = np.random.default_rng(3)
    xbm = CrossBatchMemory(make(), 20)
    for step in range(5):  # 40 embeddings through a memory of 20: it wraps
        x, labels = rng.normal(size=(8, 6)), rng.integers(0, 3, size=8)
        got, _ = call(xbm, x, labels)
        refs, ref_labels = xbm.references()
        own = [(step * 8 + i) % 20 for i in range(8)]
        want = reference(x, labels, refs=refs.astype(np.float64), ref_labels=ref_labels, own=own)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (step, got, want)


@pytest.mark.parametrize("name", ["ms", "supcon", "lifted"])
def test_gradients_reach_the_batch_only_and_match_finite_differences(name):
    make, reference = LOSSES[name]
    rng = np.random.default_rng(5)
    xbm = CrossBatchMemory(make(), 24)
    call(xbm, rng.normal(size=(8, 4)), rng.integers(0, 3, size=8))  # memory of an earlier batch
    x, labels = rng.normal(size=(8, 4)), rng.integers(0, 3, size=8)
    state = xbm.state()
    _, grad = call(xbm, x, labels)
    refs, ref_labels = xbm.references()
    refs = refs.astype(np.float64)
    own = list(range(8, 16))

    def f(z):  # the memory holds the batch as written (constants): only the anchors move
        return reference(z, labels, refs=refs, ref_labels=ref_labels, own=own)

    assert np.allclose(grad, numeric_gradient(f, x), atol=1e-5, rtol=1e-4)
    xbm.load_state(state)  # (restores the memory before this batch: the state round-trips)
    assert xbm.filled == 8


def ms_mined_against(x, labels, refs, ref_labels, epsilon=0.1):
    """Brute force: PML's multi-similarity miner over the batch x memory pairs, self pairs
    included (the loss then drops every anchor's own copy)."""
    s = R.cos(x, refs)
    a1, p, a2, n = [], [], [], []
    for i in range(len(x)):
        pos = [j for j in range(len(refs)) if ref_labels[j] == labels[i]]
        neg = [j for j in range(len(refs)) if ref_labels[j] != labels[i]]
        if not pos or not neg:
            continue
        hardest_pos, hardest_neg = min(s[i, j] for j in pos), max(s[i, j] for j in neg)
        a2 += [i for j in neg if s[i, j] + epsilon > hardest_pos]
        n += [j for j in neg if s[i, j] + epsilon > hardest_pos]
        a1 += [i for j in pos if s[i, j] - epsilon < hardest_neg]
        p += [j for j in pos if s[i, j] - epsilon < hardest_neg]
    return a1, p, a2, n


def test_the_multi_similarity_miner_mines_the_batch_against_the_memory():
    rng = np.random.default_rng(7)
    xbm = CrossBatchMemory(MultiSimilarityLoss(), 30, miner=MultiSimilarityMiner(0.1))
    for step in range(3):
        x, labels = rng.normal(size=(10, 5)), rng.integers(0, 3, size=10)
        got, _ = call(xbm, x, labels)
        refs, ref_labels = xbm.references()
        refs = refs.astype(np.float64)
        own = [(step * 10 + i) % 30 for i in range(10)]
        want = R.ms(x, labels, indices=ms_mined_against(x, labels, refs, ref_labels), refs=refs,
                    ref_labels=ref_labels, own=own)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-9)


def contrastive(selector, distance, margin=1.0):
    return OnlineContrastiveLoss(margin=margin, pair_selector=selector, distance=distance,
                                 return_active_fraction=True)


def call_pair(xbm, x, labels):
    """(loss, fraction, gradient) of a float64 batch."""
    data = mx.nd.array(x, dtype="float64")
    data.attach_grad()
    with autograd.record():
        loss, fraction = xbm(data, mx.nd.array(labels, dtype="float64"))
    loss.backward()
    return loss.asscalar(), fraction.asscalar(), data.grad.asnumpy()


CONTRASTIVE = [(s, d) for s in ("all_positive", "hard_negative")
               for d in ("euclidean", "squared", "cosine")]


@pytest.mark.parametrize("selector,distance", CONTRASTIVE)
def test_the_contrastive_loss_over_the_memory_matches_its_loop(selector, distance):
    rng = np.random.default_rng(13)
    margin = {"euclidean": 3.0, "squared": 9.0, "cosine": 0.8}[distance]  # some active negatives
    xbm = CrossBatchMemory(contrastive(selector, distance, margin), 20)
    for step in range(5):  # 40 embeddings through a memory of 20: it wraps
        x, labels = rng.normal(size=(8, 6)), rng.integers(0, 3, size=8)
        got, fraction, _ = call_pair(xbm, x, labels)
        refs, ref_labels = xbm.references()
        own = [(step * 8 + i) % 20 for i in range(8)]
        want, want_fraction = R.contrastive(x, labels, refs.astype(np.float64), ref_labels, own,
                                            margin, distance, selector)
        assert 0 < fraction < 1, fraction  # both kinds of term, active and not
        assert got == pytest.approx(want, rel=1e-6), (step, got, want)
        assert fraction == pytest.approx(want_fraction)


@pytest.mark.parametrize("selector,distance", CONTRASTIVE)
def test_contrastive_gradients_reach_the_batch_only_and_match_finite_differences(selector,
                                                                                 distance):
    margin = {"euclidean": 3.0, "squared": 9.0, "cosine": 0.8}[distance]
    for seed in range(17, 40):
        rng = np.random.default_rng(seed)
        xbm = CrossBatchMemory(contrastive(selector, distance, margin), 24)
        call_pair(xbm, rng.normal(size=(8, 4)), rng.integers(0, 3, size=8))
        x, labels = rng.normal(size=(8, 4)), rng.integers(0, 3, size=8)
        _, _, grad = call_pair(xbm, x, labels)
        refs, ref_labels = xbm.references()
        refs, own = refs.astype(np.float64), list(range(8, 16))
        # hard_negative's cut must not fall between two equal distances (the batch's pair (i, j)
        # is in the memory as (j, i) too), else a one-sided derivative meets a two-sided one
        negatives = np.sort([R.pair_dist(x[i], refs[j], distance) for i in range(8)
                             for j in range(16) if ref_labels[j] != labels[i]])
        cut = sum(labels[i] == ref_labels[j] and j != own[i] for i in range(8) for j in range(16))
        if selector == "all_positive" or negatives[cut] - negatives[cut - 1] > 1e-3:
            break
    else:
        pytest.fail("no batch without a tie at the hard-negative cut")

    def f(z):
        return R.contrastive(z, labels, refs, ref_labels, own, margin, distance, selector)[0]

    assert np.abs(grad).max() > 0
    assert np.allclose(grad, numeric_gradient(f, x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("selector,distance", CONTRASTIVE)
def test_a_memory_of_one_batch_gives_the_in_batch_contrastive_loss(selector, distance):
    """Every unordered pair of the batch is two (anchor, reference) pairs: the same loss and
    fraction, and half the gradient (it reaches the anchor only)."""
    rng = np.random.default_rng(19)
    x, labels = rng.normal(size=(12, 5)), rng.integers(0, 3, size=12)
    margin = {"euclidean": 3.0, "squared": 9.0, "cosine": 0.8}[distance]
    want = call_pair(contrastive(selector, distance, margin), x, labels)
    got = call_pair(CrossBatchMemory(contrastive(selector, distance, margin), 12), x, labels)
    assert got[0] == pytest.approx(want[0], rel=1e-6) and got[1] == pytest.approx(want[1])
    assert np.allclose(2 * got[2], want[2], atol=1e-6)


def test_the_contrastive_loss_scores_a_miners_pairs_against_the_memory():
    rng = np.random.default_rng(23)
    xbm = CrossBatchMemory(contrastive("all_positive", "euclidean", 3.0), 30,
                           miner=MultiSimilarityMiner(0.1))
    for step in range(3):
        x, labels = rng.normal(size=(10, 5)), rng.integers(0, 3, size=10)
        got, _, _ = call_pair(xbm, x, labels)
        refs, ref_labels = xbm.references()
        refs = refs.astype(np.float64)
        own = [(step * 10 + i) % 30 for i in range(10)]
        want, _ = R.contrastive(x, labels, refs, ref_labels, own, 3.0, "euclidean",
                                indices=ms_mined_against(x, labels, refs, ref_labels))
        assert got == pytest.approx(want, rel=1e-6)


def test_a_contrastive_batch_without_a_pair_trains_nothing_and_says_so(caplog):
    xbm = CrossBatchMemory(contrastive("all_positive", "euclidean"), 16)
    x = np.random.default_rng(0).normal(size=(4, 3))
    loss, fraction, grad = call_pair(xbm, x, np.arange(4))  # 4 classes, an empty memory
    assert loss == 0 and fraction == 0 and not grad.any()
    assert "forms no positive and negative pair with the references" in caplog.text
    x[1, 2] = np.inf
    loss, fraction, grad = call_pair(xbm, x, np.array([0, 0, 1, 1]))
    assert np.isnan(loss) and np.isnan(fraction) and np.isnan(grad).all()


def test_a_nan_embedding_gives_a_nan_loss():
    xbm = CrossBatchMemory(SupConLoss(), 16)
    x = np.random.default_rng(0).normal(size=(8, 4))
    x[3, 1] = np.nan
    loss, grad = call(xbm, x, np.arange(8) % 3)
    assert np.isnan(loss) and np.isnan(grad).all()


def test_two_workers_hold_the_memory_and_loss_of_one_worker_fed_both_shards():
    """Each worker's memory receives every worker's batch (the gather), in worker order; the
    mean of the workers' losses is the loss of one worker whose batch is both shards (the
    multi-similarity loss is a mean over anchors, and each anchor's pairs are the same)."""
    rng = np.random.default_rng(11)
    shards = [[(rng.normal(size=(6, 5)), rng.integers(0, 4, size=6)) for _ in range(2)]
              for _ in range(5)]  # 5 steps x 2 workers

    def gather_for(rank, step):
        def gather(x, labels):
            return (np.concatenate([s[0] for s in shards[step]]).astype(np.float32),
                    np.concatenate([s[1] for s in shards[step]]).astype(np.float64), rank * 6)
        return gather

    single = CrossBatchMemory(MultiSimilarityLoss(), 30, miner=MultiSimilarityMiner())
    workers = [CrossBatchMemory(MultiSimilarityLoss(), 30, miner=MultiSimilarityMiner())
               for _ in range(2)]
    for step in range(5):
        both = np.concatenate([s[0] for s in shards[step]])
        both_labels = np.concatenate([s[1] for s in shards[step]])
        want, want_grad = call(single, both, both_labels)
        losses, grads = [], []
        for rank, xbm in enumerate(workers):
            xbm.gather = gather_for(rank, step)
            loss, grad = call(xbm, *shards[step][rank])
            losses.append(loss)
            grads.append(grad)
        for xbm in workers:
            assert np.array_equal(xbm.references()[0], single.references()[0])
            assert np.array_equal(xbm.references()[1], single.references()[1])
        assert np.mean(losses) == pytest.approx(want, rel=1e-6)
        # each worker's gradient is its share: averaged over the workers (the kvstore sums,
        # trainer.step divides by the 2 workers) it is the one worker's gradient
        assert np.allclose(np.concatenate(grads) / 2, want_grad, atol=1e-9)


TINY = ["--dataset", "digits", "--n-classes", "4", "--n-samples", "4", "--embedding-dim", "8",
        "--num-workers", "1"]


def tiny(root):
    return ["--dataset", "cifar10", "--data-root", root, "--n-classes", "4", "--n-samples", "4",
            "--embedding-dim", "8", "--num-workers", "1"]


def test_memory_size_trains_and_resumes_the_memory_exactly(tiny_cifar, tmp_path):
    """1 epoch, then --resume to 2 in a new process, equal the uninterrupted 2 epochs (the
    memory is part of the checkpoint)."""
    args = ["train", "--method", "multi_similarity", "--memory-size", "64"] + tiny(tiny_cifar)
    straight = str(tmp_path / "straight")
    with redirect_stdout(io.StringIO()):
        assert main(args + ["--epochs", "2", "--output-root", straight]) == 0
    want = json.load(open(os.path.join(only_run_dir(straight, "cifar10", "multi_similarity"),
                                       "metrics.json")))
    stopped = str(tmp_path / "stopped")
    with redirect_stdout(io.StringIO()):
        assert main(args + ["--epochs", "1", "--output-root", stopped]) == 0
    run_dir = only_run_dir(stopped, "cifar10", "multi_similarity")
    assert os.path.isfile(os.path.join(run_dir, "params", "memory-0001.npz"))
    assert json.load(open(os.path.join(run_dir, "config.json")))["memory_size"] == 64
    proc = subprocess.run([sys.executable, "-m", "dml", "train", "--resume", run_dir, "--epochs",
                           "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.load(open(os.path.join(run_dir, "metrics.json")))
    for key in ("map_at_r", "precision_at_1", "nmi"):
        assert got[key] == want[key], key
    history = json.load(open(os.path.join(run_dir, "logs", "history.json")))
    straight_history = json.load(open(os.path.join(
        only_run_dir(straight, "cifar10", "multi_similarity"), "logs", "history.json")))
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in straight_history]


def test_online_contrastive_trains_with_a_memory(tiny_cifar, tmp_path):
    """The XBM paper's own loss from the command line: the memory is checkpointed and the
    losses are the memory's (not the in-batch loss's)."""
    out = str(tmp_path / "out")
    args = ["train", "--method", "online_contrastive", "--selector", "all_positive",
            "--memory-size", "48", "--epochs", "2", "--output-root", out] + tiny(tiny_cifar)
    with redirect_stdout(io.StringIO()):
        assert main(args) == 0
    run_dir = only_run_dir(out, "cifar10", "online_contrastive")
    memory = np.load(os.path.join(run_dir, "params", "memory-0002.npz"))
    assert memory["embeddings"].shape == (48, 8) and np.isfinite(memory["embeddings"]).all()
    history = json.load(open(os.path.join(run_dir, "logs", "history.json")))
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] > 0 for h in history)
    assert json.load(open(os.path.join(run_dir, "config.json")))["memory_size"] == 48
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert 0 < metrics["map_at_r"] <= 1


def test_a_checkpoint_without_memory_refills_it(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    args = ["train", "--method", "supcon", "--memory-size", "32"] + tiny(tiny_cifar)
    with redirect_stdout(io.StringIO()):
        assert main(args + ["--epochs", "1", "--output-root", out]) == 0
    run_dir = only_run_dir(out, "cifar10", "supcon")
    params = os.path.join(run_dir, "params")
    state_file = os.path.join(params, "state-0001.json")
    state = json.load(open(state_file))
    del state["files"]["memory-0001.npz"]
    os.remove(os.path.join(params, "memory-0001.npz"))
    json.dump(state, open(state_file, "w"))
    proc = subprocess.run([sys.executable, "-m", "dml", "train", "--resume", run_dir, "--epochs",
                           "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "holds no cross-batch memory: it refills from the next 32 embeddings" in proc.stderr


MEMORY_ERRORS = [
    (["--method", "triplet_semihard", "--memory-size", "64"],
     "--memory-size 64: a cross-batch memory wraps the pair losses online_contrastive, "
     "multi_similarity, circle, supcon, lifted, not triplet_semihard"),
    (["--method", "supcon", "--memory-size", "8"], "--memory-size 8 is smaller than a batch (16"),
    (["--method", "supcon", "--memory-size", "64", "--kvstore", "dist_async"],
     "needs the synchronous kvstore"),
    (["--method", "supcon", "--memory-size", "-3"], "'-3' must be >= 0"),
]


@pytest.mark.parametrize("extra,message", MEMORY_ERRORS, ids=[" ".join(e) for e, _ in MEMORY_ERRORS])
def test_memory_bad_input(tmp_path, capsys, extra, message):
    out = str(tmp_path / "out")
    code, err = refused(["train", "--epochs", "1", "--output-root", out] + TINY + extra, capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(out)


# ------------------------------------------------------------------------------------------------
# The losses' own score_references: PML's loss(embeddings, labels, indices_tuple, ref_emb,
# ref_labels), which CrossBatchMemory calls (it reads nothing else of a loss).


def _with_references(loss, x, labels, refs, ref_labels, indices=None):
    data = mx.nd.array(x, dtype="float64")
    data.attach_grad()
    with autograd.record():
        out = loss(data, mx.nd.array(labels, dtype="float64"), indices, ref_emb=refs,
                   ref_labels=ref_labels)
    (out[0] if isinstance(out, (list, tuple)) else out).backward()
    return out, data.grad.asnumpy()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_pair_loss_scores_a_batch_against_given_references_as_pml_does(name):
    """Every anchor x reference pair (no anchor is a reference: nothing left out), or a miner's
    pairs of anchor rows and reference rows: the loop reference, and finite differences."""
    make, reference = LOSSES[name]
    rng = np.random.default_rng(21)
    x, labels = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    refs, ref_labels = rng.normal(size=(9, 4)), rng.integers(0, 3, size=9).astype(np.float64)
    nobody = [-1] * 6
    got, grad = _with_references(make(), x, labels, refs, ref_labels)
    want = reference(x, labels, refs=refs, ref_labels=ref_labels, own=nobody)
    assert got.asscalar() == pytest.approx(want, rel=1e-6, abs=1e-9)

    def f(z):
        return reference(z, labels, refs=refs, ref_labels=ref_labels, own=nobody)
    if name != "circle":  # PML's circle loss detaches its weights: not the formula's gradient
        assert np.allclose(grad, numeric_gradient(f, x), atol=1e-5, rtol=1e-4)
    indices = MultiSimilarityMiner(epsilon=0.3)(x, labels, refs, ref_labels)
    assert 0 < len(indices[0]) < 6 * 9  # some pairs kept, not all
    got, _ = _with_references(make(), x, labels, refs, ref_labels, indices)
    want = reference(x, labels, indices=indices, refs=refs, ref_labels=ref_labels, own=nobody)
    assert got.asscalar() == pytest.approx(want, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("selector,distance", CONTRASTIVE)
def test_the_contrastive_loss_scores_a_batch_against_given_references(selector, distance):
    margin = {"euclidean": 3.0, "squared": 9.0, "cosine": 0.8}[distance]
    rng = np.random.default_rng(23)
    x, labels = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    refs, ref_labels = rng.normal(size=(9, 4)), rng.integers(0, 3, size=9).astype(np.float64)
    (loss, fraction), grad = _with_references(contrastive(selector, distance, margin), x, labels,
                                              refs, ref_labels)
    want, want_fraction = R.contrastive(x, labels, refs, ref_labels, [-1] * 6, margin, distance,
                                        selector)
    assert loss.asscalar() == pytest.approx(want, rel=1e-6)
    assert fraction.asscalar() == pytest.approx(want_fraction)

    def f(z):
        return R.contrastive(z, labels, refs, ref_labels, [-1] * 6, margin, distance,
                             selector)[0]
    assert np.allclose(grad, numeric_gradient(f, x), atol=1e-5, rtol=1e-4)


def test_losses_without_references_say_so_and_return_stat_is_one_name():
    from dml.losses import OnlineContrastiveLoss, TripletMarginLoss, TripletSemiHardLoss

    x, labels = mx.nd.array(np.random.default_rng(0).normal(size=(6, 4))), mx.nd.arange(6) % 2
    with pytest.raises(ValueError, match="NPairsLoss picks its own pairs .* no reference"):
        NPairsLoss()(x, labels, ref_emb=x, ref_labels=labels)
    with pytest.raises(ValueError, match="TripletMarginLoss scores the tuples of a batch"):
        TripletMarginLoss()(x, labels, ref_emb=x, ref_labels=labels)
    for loss in (OnlineContrastiveLoss(return_stat=True), TripletSemiHardLoss(return_stat=True),
                 OnlineContrastiveLoss(return_active_fraction=True), MultiSimilarityLoss(
                     return_stat=True)):
        assert loss.return_stat is True and len(loss(x, labels)) == 2
    assert TripletSemiHardLoss().return_stat is False
