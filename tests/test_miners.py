"""Miners compose with losses (PML's pattern): the selections of the fused losses as miners
(semi-hard, batch-hard, the online-triplet selectors, hard-negative pairs), each against brute
force; every miner with every pair and triplet loss (``loss(x, labels, indices=miner(x,
labels))``) against the loop reference on the same tuples (triplets become pairs and pairs
triplets, as PML converts them); and each fused loss equal to its generic form on its own
miner's tuples."""
import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import modern_reference as R
from reference import numeric_gradient
from dml.losses import (CircleLoss, ContrastiveLoss, GeneralizedLiftedStructureLoss, MarginLoss,
                        MultiSimilarityLoss, NTXentLoss, OnlineContrastiveLoss, OnlineTripletLoss,
                        SupConLoss, TripletBatchHardLoss, TripletMarginLoss,
                        TripletSemiHardLoss)
from dml.miners import (BatchHardMiner, DistanceWeightedMiner, HardNegativePairMiner,
                        MultiSimilarityMiner, OnlineTripletMiner, TripletSemiHardMiner,
                        pairs_to_triplets, triplets_to_pairs)


def batch(seed=0, b=12, classes=3, dim=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, dim)), np.arange(b) % classes


def dist(x):
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


MINERS = {
    "multi_similarity": lambda: MultiSimilarityMiner(),
    "distance_weighted": lambda: DistanceWeightedMiner(rng=np.random.RandomState(0)),
    "semihard": lambda: TripletSemiHardMiner(),
    "batch_hard": lambda: BatchHardMiner(),
    "hardest": lambda: OnlineTripletMiner("hardest", margin=0.5),
    "random_hard": lambda: OnlineTripletMiner("random_hard", margin=0.5,
                                              rng=np.random.RandomState(1)),
    "semihard_random": lambda: OnlineTripletMiner("semihard", margin=0.5,
                                                  rng=np.random.RandomState(2)),
    "all_triplets": lambda: OnlineTripletMiner("all"),
    "hard_negative_pairs": lambda: HardNegativePairMiner(),
}


def triplet_ref(x, labels, indices, margin=0.2):
    d = dist(x)
    a, p, n = pairs_to_triplets(indices)
    if not len(a):
        return 0.0
    return float(np.mean([max(d[i, j] - d[i, k] + margin, 0) for i, j, k in zip(a, p, n)]))


def contrastive_ref(x, labels, indices, margin=1.0):
    d = dist(x)
    a1, p, a2, n = triplets_to_pairs(indices)
    terms = [0.5 * d[i, j] ** 2 for i, j in zip(a1, p)]
    terms += [0.5 * max(margin - d[i, j], 0) ** 2 for i, j in zip(a2, n)]
    return float(np.mean(terms)) if terms else 0.0


LOSSES = {
    "multi_similarity": (MultiSimilarityLoss, lambda x, y, i: R.ms(x, y, indices=i)),
    "circle": (CircleLoss, lambda x, y, i: R.circle(x, y, indices=i)),
    "supcon": (SupConLoss, lambda x, y, i: R.supcon(x, y, indices=i)),
    "ntxent": (NTXentLoss, lambda x, y, i: R.ntxent(x, y, indices=i)),
    "lifted": (GeneralizedLiftedStructureLoss, lambda x, y, i: R.lifted(x, y, indices=i)),
    "margin": (MarginLoss, lambda x, y, i: R.margin_loss(x, y, indices=pairs_to_triplets(i))),
    "triplet": (lambda: OnlineTripletLoss(margin=0.2), triplet_ref),
    "contrastive": (lambda: OnlineContrastiveLoss(margin=1.0), contrastive_ref),
    # the tuple losses (siamese, triplet nets) take a miner's tuples as well
    "triplet_margin": (lambda: TripletMarginLoss(margin=0.2), triplet_ref),
    "pair_contrastive": (lambda: ContrastiveLoss(margin=1.0), contrastive_ref),
}


def scored(loss, x, labels, indices, hybridize=False):
    if hybridize:
        loss.hybridize()
    out = loss(mx.nd.array(x, dtype="float64"), mx.nd.array(labels, dtype="float64"),
               indices=indices)
    return (out[0] if isinstance(out, tuple) else out).asscalar()


@pytest.mark.parametrize("miner", sorted(MINERS))
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_miner_composes_with_every_pair_and_triplet_loss(miner, loss):
    x, labels = batch(seed=len(miner) + 3 * len(loss))
    indices = MINERS[miner]()(x, labels)
    indices = tuple(np.asarray(i) for i in indices)
    make, reference = LOSSES[loss]
    got = scored(make(), x, labels, indices, hybridize=len(miner) % 2 == 0)
    want = reference(x, labels, tuple(list(i) for i in triplets_to_pairs(indices))
                     if loss in ("multi_similarity", "circle", "supcon", "ntxent", "lifted")
                     else indices)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9), (got, want)


def test_the_mined_triplet_loss_gradient_matches_finite_differences():
    x, labels = batch(seed=4)
    indices = OnlineTripletMiner("all")(x, labels)
    data = mx.nd.array(x, dtype="float64")
    data.attach_grad()
    with autograd.record():
        loss = OnlineTripletLoss(margin=0.5)(data, mx.nd.array(labels, dtype="float64"),
                                             indices=indices)
    loss.backward()
    numeric = numeric_gradient(lambda z: triplet_ref(z, labels, indices, 0.5), x)
    assert np.allclose(data.grad.asnumpy(), numeric, atol=1e-6)


def test_semihard_and_batch_hard_miners_against_brute_force():
    x, labels = batch(seed=9, b=15)
    d = dist(x)
    want_semihard, want_batch_hard = set(), set()
    for a in range(len(x)):
        positives = [p for p in range(len(x)) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(len(x)) if labels[n] != labels[a]]
        for p in positives:
            farther = [n for n in negatives if d[a, n] > d[a, p]]
            n = min(farther, key=lambda k: d[a, k]) if farther else max(negatives,
                                                                       key=lambda k: d[a, k])
            want_semihard.add((a, p, n))
        want_batch_hard.add((a, max(positives, key=lambda k: d[a, k]),
                             min(negatives, key=lambda k: d[a, k])))
    assert set(zip(*TripletSemiHardMiner()(x, labels))) == want_semihard
    assert set(zip(*BatchHardMiner()(x, labels))) == want_batch_hard


def test_online_triplet_and_pair_miners_against_brute_force():
    x, labels = batch(seed=10, b=15)
    d, margin = dist(x), 0.5
    pairs = [(a, p) for a in range(len(x)) for p in range(a + 1, len(x)) if labels[a] == labels[p]]
    negatives = {a: [n for n in range(len(x)) if labels[n] != labels[a]] for a in range(len(x))}
    loss = lambda a, p, n: d[a, p] - d[a, n] + margin  # noqa: E731
    hardest = {(a, p, min(negatives[a], key=lambda k: d[a, k])) for a, p in pairs}
    hardest = {t for t in hardest if loss(*t) > 0}
    assert set(zip(*OnlineTripletMiner("hardest", margin)(x, labels))) == hardest
    every = {(a, p, n) for a, p in pairs for n in negatives[a]}
    assert set(zip(*OnlineTripletMiner("all", margin)(x, labels))) == every
    for selector, ok in (("random_hard", lambda t: loss(*t) > 0),
                         ("semihard", lambda t: 0 < loss(*t) < margin)):
        chosen = list(zip(*OnlineTripletMiner(selector, margin, rng=np.random.RandomState(3))(
            x, labels)))
        assert chosen and all(ok(t) for t in chosen)
        have = {(a, p) for a, p in pairs if any(ok((a, p, n)) for n in negatives[a])}
        assert {(a, p) for a, p, _ in chosen} == have  # one triplet per pair that has one
    a1, p, a2, n = HardNegativePairMiner()(x, labels)
    assert set(zip(a1, p)) == set(pairs)
    negative_pairs = sorted(((a, b) for a in range(len(x)) for b in range(a + 1, len(x))
                             if labels[a] != labels[b]), key=lambda t: d[t])
    assert set(zip(a2, n)) == set(negative_pairs[:len(pairs)])


@pytest.mark.parametrize("fused,miner", [
    (lambda: TripletSemiHardLoss(margin=0.2), TripletSemiHardMiner),
    (lambda: TripletBatchHardLoss(margin=0.2), BatchHardMiner),
    (lambda: OnlineTripletLoss(margin=0.2, selector="hardest"),
     lambda: OnlineTripletMiner("hardest", margin=0.2)),
    (lambda: OnlineContrastiveLoss(margin=1.0, pair_selector="hard_negative"),
     HardNegativePairMiner),
])
def test_each_fused_loss_equals_its_generic_form_on_its_own_miner(fused, miner):
    x, labels = batch(seed=12, b=16, classes=4)
    loss = fused()
    data, y = mx.nd.array(x, dtype="float32"), mx.nd.array(labels, dtype="float32")
    assert loss(data, y).asscalar() == pytest.approx(
        loss(data, y, indices=miner()(x, labels)).asscalar(), rel=1e-5)


def test_conversions_between_pairs_and_triplets():
    pairs = (np.array([0, 0, 1]), np.array([2, 3, 4]), np.array([0, 0, 5]), np.array([7, 8, 9]))
    triplets = pairs_to_triplets(pairs)
    assert sorted(zip(*triplets)) == [(0, 2, 7), (0, 2, 8), (0, 3, 7), (0, 3, 8)]
    assert [list(v) for v in triplets_to_pairs(triplets)] == [
        list(triplets[0]), list(triplets[1]), list(triplets[0]), list(triplets[2])]
    assert pairs_to_triplets(triplets) == triplets
    with pytest.raises(ValueError, match="indices must be"):
        OnlineTripletLoss()(mx.nd.ones((4, 2)), mx.nd.array([0, 0, 1, 1]), indices=(1, 2))
    assert math.isnan(scored(OnlineTripletLoss(), np.full((4, 2), np.nan), [0, 0, 1, 1],
                             (np.array([0]), np.array([1]), np.array([2]))))
