import numpy as np
import pytest

from dml.losses.mining import anchor_negative_mask, anchor_positive_mask, semihard_negatives
from reference import naive_semihard_choice


def test_masks():
    labels = np.array([0, 1, 0, 2])
    pos = anchor_positive_mask(labels)
    neg = anchor_negative_mask(labels)
    assert pos.tolist() == [[False, False, True, False], [False] * 4, [True, False, False, False],
                            [False] * 4]
    assert not (pos & neg).any()
    assert not np.diag(neg).any()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("integer_distances", [False, True])
def test_semihard_choice_is_allowed_by_the_definition(seed, integer_distances):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    labels = rng.integers(0, int(rng.integers(1, 6)), size=n)
    d = rng.integers(0, 4, size=(n, n)).astype(float) if integer_distances else rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    chosen, valid = semihard_negatives(d, labels)
    allowed = naive_semihard_choice(d, labels)
    assert set(zip(*np.nonzero(valid))) == set(allowed)
    for (a, p), options in allowed.items():
        assert chosen[a, p] in options, (a, p)
