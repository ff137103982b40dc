import numpy as np
import pytest

import mining_views
from dml.losses import mining
from dml.losses.mining import anchor_negative_mask, anchor_positive_mask
from mining_views import semihard_negatives
from reference import naive_allowed_negatives, naive_semihard_choice, numeric_gradient


def test_masks():
    labels = np.array([0, 1, 0, 2])
    pos = anchor_positive_mask(labels)
    neg = anchor_negative_mask(labels)
    assert pos.tolist() == [[False, False, True, False], [False] * 4, [True, False, False, False],
                            [False] * 4]
    assert not (pos & neg).any()
    assert not np.diag(neg).any()


def random_case(seed, integer_distances):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    labels = rng.integers(0, int(rng.integers(1, 6)), size=n)
    d = rng.integers(0, 4, size=(n, n)).astype(float) if integer_distances else rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    return d, labels


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("integer_distances", [False, True])
def test_semihard_choice_is_allowed_by_the_definition(seed, integer_distances):
    d, labels = random_case(seed, integer_distances)
    chosen, valid = semihard_negatives(d, labels)
    allowed = naive_semihard_choice(d, labels)
    assert set(zip(*np.nonzero(valid))) == set(allowed)
    for (a, p), options in allowed.items():
        assert chosen[a, p] in options, (a, p)


@pytest.mark.parametrize("selector", ["hardest", "random_hard", "semihard"])
@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("integer_distances", [False, True])
def test_negative_selectors_choose_only_allowed_negatives(selector, seed, integer_distances):
    d, labels = random_case(seed, integer_distances)
    margin = 1.0 if integer_distances else 0.3
    chosen, valid = mining_views.select_negatives(d, labels, selector, margin,
                                            rng=np.random.RandomState(seed))
    allowed = naive_allowed_negatives(d, labels, selector, margin)
    # exactly the pairs with an allowed negative are kept (so the counts are the definition's)
    assert set(zip(*np.nonzero(valid))) == {pair for pair, options in allowed.items() if options}
    for a, p in zip(*np.nonzero(valid)):
        assert chosen[a, p] in allowed[(a, p)], (a, p)
    np.testing.assert_array_equal(mining_views.candidate_pairs(labels, unordered=True),
                                  np.array([[(a, p) in allowed for p in range(len(d))]
                                            for a in range(len(d))]))


@pytest.mark.parametrize("selector", ["random_hard", "semihard"])
def test_random_selectors_reach_every_allowed_negative(selector):
    d = np.array([[0, 1, 1.5, 1.2, 3.0],
                  [1, 0, 2.0, 2.0, 2.0],
                  [1.5, 2.0, 0, 1, 1],
                  [1.2, 2.0, 1, 0, 1],
                  [3.0, 2.0, 1, 1, 0]])
    labels = np.array([0, 0, 1, 1, 1])
    allowed = naive_allowed_negatives(d, labels, selector, 1.0)[(0, 1)]
    rng = np.random.RandomState(0)
    seen = {mining_views.select_negatives(d, labels, selector, 1.0, rng=rng)[0][0, 1] for _ in range(200)}
    assert seen == allowed and len(allowed) == 2


def test_unknown_negative_selector_is_rejected():
    with pytest.raises(ValueError, match="selector"):
        mining_views.select_negatives(np.zeros((2, 2)), [0, 1], "easy")


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("integer_distances", [False, True])
def test_batch_hard_matches_brute_force(seed, integer_distances):
    d, labels = random_case(seed, integer_distances)
    pos, neg, valid = mining_views.batch_hard(d, labels)
    for a in range(len(d)):
        positives = [p for p in range(len(d)) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(len(d)) if labels[n] != labels[a]]
        assert valid[a] == bool(positives and negatives)
        if valid[a]:
            assert pos[a] in positives and d[a, pos[a]] == max(d[a, p] for p in positives)
            assert neg[a] in negatives and d[a, neg[a]] == min(d[a, n] for n in negatives)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("unordered", [False, True])
@pytest.mark.parametrize("integer_distances", [False, True])
def test_triplet_sums_match_brute_force(seed, unordered, integer_distances):
    d, labels = random_case(seed, integer_distances)
    margin = 1.0
    sums, active, total = mining_views.triplet_sums(d, labels, margin, unordered)
    for a in range(len(d)):
        negatives = [n for n in range(len(d)) if labels[n] != labels[a]]
        for p in range(len(d)):
            is_pair = p != a and labels[p] == labels[a] and (p > a or not unordered)
            terms = [d[a, p] - d[a, n] + margin for n in negatives] if is_pair else []
            assert sums[a, p] == pytest.approx(sum(max(t, 0) for t in terms), abs=1e-9)
            assert active[a, p] == sum(t > 0 for t in terms)
            assert total[a, p] == len(terms)


@pytest.mark.parametrize("unordered", [False, True])
def test_triplet_sums_gradient_matches_finite_differences(unordered):
    rng = np.random.default_rng(1)
    d, labels = rng.random((12, 12)) * 2, rng.integers(0, 3, size=12)
    weights = rng.random((12, 12))
    grad = mining_views.triplet_sums_grad(d, labels, 0.5, weights, unordered)
    # the op hands the forward's active counts to the backward: the same gradient
    active = mining_views.triplet_sums(d, labels, 0.5, unordered)[1]
    np.testing.assert_array_equal(
        mining_views.triplet_sums_grad(d, labels, 0.5, weights, unordered, active=active), grad)
    numeric = numeric_gradient(
        lambda v: np.sum(weights * mining_views.triplet_sums(v, labels, 0.5, unordered)[0]), d, h=1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_pair_selectors_match_the_definition(seed):
    d, labels = random_case(seed + 20, integer_distances=False)
    positive, negative = mining.select_pairs(d, labels, "all_positive")
    n = len(d)
    upper = np.triu(np.ones((n, n), dtype=bool), 1)
    same = labels[:, None] == labels[None, :]
    np.testing.assert_array_equal(positive, upper & same)
    np.testing.assert_array_equal(negative, upper & ~same)
    hard_pos, hard_neg = mining.select_pairs(d, labels, "hard_negative")
    np.testing.assert_array_equal(hard_pos, positive)
    assert hard_neg.sum() == min(positive.sum(), negative.sum())
    assert not (hard_neg & ~negative).any()
    if hard_neg.any() and (negative & ~hard_neg).any():
        assert d[hard_neg].max() <= d[negative & ~hard_neg].min()
    with pytest.raises(ValueError, match="pair selector"):
        mining.select_pairs(d, labels, "hardest")
