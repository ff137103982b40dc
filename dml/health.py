"""Training health: is training helping or hurting retrieval of images it does not train on?

A network trained on some classes can get *worse* at retrieving others than it was before training
(it memorizes what tells the training classes apart and forgets the rest) while its loss goes
down. :class:`HealthMonitor` makes that visible: before the first step and after every epoch it
embeds a fixed held-out set (the validation classes, or without them a fixed sample of the training
classes) and records

- ``map_at_r`` and ``precision_at_1`` of retrieval within that set (:mod:`dml.evaluation`), beside
  the same of the network as it was before training (``untrained_map_at_r``);
- ``spread``: the mean distance between two held-out embeddings (the run's distance), which goes
  to 0 when the embedding collapses;
- ``effective_rank``: exp(H(p)), p_i = s_i / sum_j s_j over the singular values s of the centred
  held-out embedding matrix (Roy and Vetterli 2007): how many directions the embedding uses;
- ``spectral_decay``: KL(U || p) = -log d - (1/d) sum_i log p_i over the d = min(N, D) values,
  the "rho" of Roth et al. 2020 (Revisiting Training Strategies and Generalization Performance in
  Deep Metric Learning), who found a fast decay (a large value) to predict poor generalization;
- ``zero_loss_batches``: the fraction of the epoch's batches whose loss was exactly 0 (nothing
  to learn from), beside the method's own statistic (``active_fraction``, ...).

It warns, in one line while training runs, when the held-out ``map_at_r`` falls below the
untrained network's (what, since which epoch, what to try), and when the embedding collapses
(every image at nearly one point, or on nearly one line).
"""
import logging

import numpy as np

from .events import MEASURE, EpochEnd, TrainStart

log = logging.getLogger("dml")

HEALTH_KEYS = ("map_at_r", "precision_at_1", "spread", "effective_rank", "spectral_decay")
MAX_POINTS = 2000  # held-out images embedded per check
COLLAPSED_RANK = 1.5  # an embedding on (nearly) one line
_EPS = 1e-12


def singular_values(embeddings):
    """The singular values of the centred ``embeddings`` (N x D), largest first."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return np.linalg.svd(x, compute_uv=False)


def effective_rank(values):
    """exp of the entropy of the singular values normalized to sum 1 (0 values contribute 0)."""
    s = np.asarray(values, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def spectral_decay(values):
    """KL(U || p) of the normalized singular values p against the uniform distribution U."""
    s = np.asarray(values, dtype=np.float64)
    total = s.sum()
    if not total > 0:
        return float("inf")
    p = np.maximum(s / total, _EPS)
    return float(-np.log(len(p)) - np.mean(np.log(p)))


def mean_pairwise_distance(embeddings, distance="euclidean"):
    """The mean distance over the N (N - 1) / 2 pairs of distinct rows."""
    from .evaluation import pairwise_distances_np

    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n < 2:
        return 0.0
    total = 0.0
    step = max(1, (1 << 22) // n)
    for start in range(0, n, step):
        d = pairwise_distances_np(x[start:start + step], x, distance)
        rows = np.arange(d.shape[0])
        upper = np.arange(n)[None, :] > (start + rows)[:, None]
        total += d[upper].sum()
    return float(total / (n * (n - 1) / 2))


def embedding_health(embeddings, labels, distance="euclidean"):
    """Every statistic of the module docstring for one held-out embedding."""
    from .evaluation import retrieval_metrics

    metrics = retrieval_metrics(embeddings, labels, distance)
    values = singular_values(embeddings)
    return {"map_at_r": metrics["map_at_r"], "precision_at_1": metrics["precision_at_1"],
            "spread": mean_pairwise_distance(embeddings, distance),
            "effective_rank": effective_rank(values), "spectral_decay": spectral_decay(values)}


def heldout_sample(dataset, max_points=MAX_POINTS, seed=0):
    """The indices of a fixed sample of ``dataset``: whole classes drawn at random (``seed``)
    until ``max_points`` images, only classes of at least 2 images (a query needs another image
    of its class)."""
    labels = np.asarray(dataset.labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    chosen, total = [], 0
    for c in np.random.default_rng(seed).permutation(classes[counts >= 2]):
        size = int(counts[classes == c][0])
        if total + size > max_points and chosen:
            continue
        chosen.append(c)
        total += size
        if total >= max_points:
            break
    return np.flatnonzero(np.isin(labels, chosen))


def _embedder(mean, std, batch_size):
    """``embed(net, dataset)`` on the contexts of ``net``'s parameters
    (:func:`dml.evaluation.embed_dataset`)."""
    if mean is None or std is None:
        raise ValueError("HealthMonitor needs embed, or the normalization's mean and std")

    def embed(net, dataset):
        from .evaluation import embed_dataset

        return embed_dataset(net, dataset, mean, std, batch_size=batch_size)
    return embed


class HealthMonitor(TrainStart, EpochEnd):
    """The training-health hook (module docstring). ``dataset``: the held-out images (a dml
    dataset of uint8 images and labels: the validation classes, or a sample of the training
    split, :func:`heldout_sample`); ``what`` names it in messages; ``embed(net, dataset)`` returns
    ``(embeddings, labels)`` as evaluation embeds them (without it: the images normalized with
    ``mean`` and ``std``, as :func:`dml.evaluation.evaluate` does). Statistics go to ``state.health`` (the
    epoch's, as ``health_<key>`` entries of the history) and ``state.health_baseline`` (the
    untrained network's, kept in checkpoints). It measures after the stop guard and before the
    recorder (``MEASURE``), which copies ``state.health`` into the epoch's history."""
    priority = MEASURE

    def __init__(self, dataset, embed=None, distance="euclidean", what="held-out classes",
                 mean=None, std=None, batch_size=256):
        if embed is None:  # as dml.evaluation.evaluate embeds, normalized with mean and std
            embed = _embedder(mean, std, batch_size)
        self.dataset, self.embed, self.distance, self.what = dataset, embed, distance, what
        self._warned_collapse = False
        self._records = []  # this process's epochs (a user's loop keeps no history)

    def measure(self, net):
        embeddings, labels = self.embed(net, self.dataset)
        return embedding_health(embeddings, labels, self.distance)

    def train_start(self, state):
        if state.health_baseline is None:
            state.health_baseline = self.measure(state.net)
            base = state.health_baseline
            log.info("before training, on %s: map_at_r %.4f, effective rank %.1f, spread %.3f",
                     self.what, base["map_at_r"], base["effective_rank"], base["spread"])

    def epoch_end(self, state):
        health = self.measure(state.net)
        health["untrained_map_at_r"] = state.health_baseline["map_at_r"]
        health["zero_loss_batches"] = (float(state.epoch_zero.asscalar()) / max(state.seen, 1)
                                       if state.epoch_zero is not None else 0.0)
        state.health = {"health_" + k: v for k, v in health.items()}
        self._warn(state, health)
        self._records.append({"epoch": state.epoch, "health_map_at_r": health["map_at_r"]})

    def _below_since(self, state, health):
        """The first epoch of the current stretch of epochs below the untrained network."""
        since = state.epoch
        for record in reversed(state.history or self._records):
            value = record.get("health_map_at_r")
            if value is None or value >= health["untrained_map_at_r"]:
                break
            since = record["epoch"]
        return since

    def _warn(self, state, health):
        base = state.health_baseline
        if health["map_at_r"] < base["map_at_r"]:
            since = self._below_since(state, health)
            if since == state.epoch or state.final_epoch:
                log.warning(
                    "training is hurting retrieval on %s: map_at_r %.4f at epoch %d, below the "
                    "untrained network's %.4f since epoch %d; try a lower learning rate (lr), "
                    "more classes per batch (n_classes) or validation classes (val_classes) "
                    "to keep the best epoch", self.what, health["map_at_r"], state.epoch,
                    base["map_at_r"], since)
        rank = health["effective_rank"]
        collapsed = health["spread"] <= 1e-6 * max(base["spread"], _EPS) or (
            rank < COLLAPSED_RANK <= base["effective_rank"])
        if collapsed and not self._warned_collapse:
            self._warned_collapse = True
            log.warning("the embedding is collapsing at epoch %d: effective rank %.2f (%.1f "
                        "before training), spread %.3g (%.3g); try a lower learning rate (lr) "
                        "or a larger margin", state.epoch, rank, base["effective_rank"],
                        health["spread"], base["spread"])
