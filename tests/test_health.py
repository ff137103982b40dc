"""The training-health monitor (dml.health): its statistics against numpy/scipy references, the
held-out sample, and its warnings: one line when held-out retrieval falls below the untrained
network's or the embedding collapses, nothing on a healthy run."""
import logging

import numpy as np
import pytest
from scipy.spatial.distance import pdist
from scipy.stats import entropy

from dml import health


def test_effective_rank_and_spectral_decay_against_references():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)) * np.linspace(3, 0.1, 16)
    centred = x - x.mean(axis=0)
    # the singular values as the square roots of the covariance's eigenvalues
    eig = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    s = np.sqrt(np.maximum(eig, 0))
    assert np.allclose(health.singular_values(x), s, rtol=1e-6)
    p = s / s.sum()
    assert health.effective_rank(s) == pytest.approx(np.exp(entropy(p)), rel=1e-9)
    uniform = np.full(len(p), 1.0 / len(p))
    assert health.spectral_decay(s) == pytest.approx(entropy(uniform, p), rel=1e-9)
    # isotropic data uses every direction; data on a line uses one
    assert health.effective_rank(health.singular_values(rng.normal(size=(5000, 8)))) > 7.8
    line = np.outer(rng.normal(size=200), rng.normal(size=8))
    assert health.effective_rank(health.singular_values(line)) < 1.01
    assert health.effective_rank(np.zeros(4)) == 0.0


@pytest.mark.parametrize("distance,metric", [("euclidean", "euclidean"),
                                             ("squared", "sqeuclidean"), ("cosine", "cosine")])
def test_spread_is_the_mean_pairwise_distance(distance, metric):
    x = np.random.default_rng(1).normal(size=(137, 5))
    assert health.mean_pairwise_distance(x, distance) == pytest.approx(
        pdist(x, metric).mean(), rel=1e-9)
    big = np.random.default_rng(2).normal(size=(2100, 3))
    assert health.mean_pairwise_distance(big, distance) == pytest.approx(
        pdist(big, metric).mean(), rel=1e-9)  # computed in two chunks of rows


def test_embedding_health_holds_every_key():
    from dml.evaluation import retrieval_metrics

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), 5)
    x = rng.normal(size=(10, 8))[labels] + 0.3 * rng.normal(size=(50, 8))
    stats = health.embedding_health(x, labels)
    assert set(stats) == set(health.HEALTH_KEYS)
    assert stats["map_at_r"] == retrieval_metrics(x, labels)["map_at_r"]


def test_heldout_sample_takes_whole_classes_of_at_least_two_images():
    class Data:
        labels = np.concatenate([np.repeat(np.arange(300), 7), [300]])  # one singleton class

    chosen = health.heldout_sample(Data, max_points=200, seed=0)
    labels = Data.labels[chosen]
    classes, counts = np.unique(labels, return_counts=True)
    assert (counts == 7).all() and 300 not in classes
    assert 190 <= len(chosen) <= 200
    assert np.array_equal(chosen, health.heldout_sample(Data, max_points=200, seed=0))
    assert not np.array_equal(chosen, health.heldout_sample(Data, max_points=200, seed=1))


class _State:
    """What the monitor reads of a TrainState."""

    def __init__(self, epochs):
        import mxnet as mx

        self.net, self.epoch, self.history, self.health = None, 0, [], {}
        self.health_baseline, self.seen, self.cfg_epochs = None, 4, epochs
        self.epoch_zero = mx.nd.array([1.0])

    @property
    def final_epoch(self):
        return self.epoch == self.cfg_epochs


def _monitor(sequence):
    """A monitor whose 'network' is the next embedding of ``sequence``."""
    labels = np.repeat(np.arange(20), 4)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    frames = {"good": centres[labels] + 0.1 * rng.normal(size=(80, 16)),
              "noisy": centres[labels] + 3.0 * rng.normal(size=(80, 16)),
              "collapsed": np.outer(rng.normal(size=80), np.ones(16)) * 1e-3}
    calls = iter(sequence)
    return health.HealthMonitor(None, lambda net, data: (frames[next(calls)], labels),
                                what="the test classes")


def _train(monitor, epochs):
    state = _State(epochs)
    monitor.train_start(state)
    for epoch in range(1, epochs + 1):
        state.epoch = epoch
        monitor.epoch_end(state)
        state.history.append(dict(epoch=epoch, **state.health))
    return state


def test_warns_once_when_training_hurts_and_again_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="dml")
    state = _train(_monitor(["good", "good", "noisy", "noisy", "noisy"]), 4)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("training is hurting retrieval on the test classes")
    assert "since epoch 2" in warnings[0] and "at epoch 2" in warnings[0]
    assert "at epoch 4" in warnings[1] and "since epoch 2" in warnings[1]
    assert "lr" in warnings[0]
    assert state.history[0]["health_map_at_r"] > state.history[0]["health_untrained_map_at_r"] - 1
    assert state.history[-1]["health_zero_loss_batches"] == 0.25
    assert state.history[-1]["health_untrained_map_at_r"] == state.health_baseline["map_at_r"]


def test_silent_on_a_healthy_run(caplog):
    caplog.set_level(logging.INFO, logger="dml")
    _train(_monitor(["noisy", "good", "good", "good"]), 3)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_warns_when_the_embedding_collapses(caplog):
    caplog.set_level(logging.INFO, logger="dml")
    _train(_monitor(["noisy", "good", "collapsed", "collapsed"]), 3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith("the embedding is collapsing at epoch 2") for w in warnings)
    assert sum("collapsing" in w for w in warnings) == 1  # said once
