"""What the loop and its hooks share: the :class:`TrainState`, the two ways a run stops
early (:class:`TrainingInterrupted`, :class:`NonFiniteLoss`) and the RNG states a checkpoint keeps.
"""
import logging
import signal
import time

import mxnet as mx
import numpy as np

log = logging.getLogger("dml")


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run stopped cleanly; ``checkpoint`` is the id of the checkpoint it
    wrote, ``signum`` the signal that asked for the stop."""

    def __init__(self, checkpoint, signum=signal.SIGINT, at_once=False):
        super().__init__("interrupted")
        self.checkpoint = checkpoint
        self.signum = signum
        self.at_once = at_once  # a second signal: stopped without a new checkpoint


class NonFiniteLoss(FloatingPointError):
    """The loss or the weights became NaN or infinite; ``checkpoint`` is the last good
    checkpoint's id (or None), written before they went bad and left as it was."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainState:
    """What the loop and its hooks share: the pieces being trained and where training stands.
    ``epoch_loss``/``epoch_stat`` are the running sums (1-element arrays) over the ``seen``
    batches of ``epoch``; ``record`` the finished epoch's history entry; ``evaluation`` the
    latest ``(metrics, embeddings, labels)``.

    A user's own loop builds it with what its hooks read (``TrainState(net=net, epochs=3)`` for
    the health monitor) and calls :meth:`begin_epoch` and :meth:`add_batch`."""

    def __init__(self, cfg=None, splits=None, net=None, model=None, loss_fn=None, trainer=None,
                 method=None, ctx=None, workers=None, epochs=None):
        self.cfg, self.splits, self.net, self.model = cfg, splits, net, model
        self.epochs = epochs if epochs is not None else cfg.epochs  # the run's last epoch
        self.loss_fn, self.trainer, self.method, self.ctx, self.workers = (
            loss_fn, trainer, method, ctx, workers)
        # devices sharing BatchNorm statistics: each device's passes in a thread of their own
        self.parallel = getattr(net, "sync_devices", 0) > 1
        self.epoch, self.step, self.seen, self.skip = 0, 0, 0, 0
        self.history, self.best_map, self.last_good = [], -1.0, None
        self.epoch_loss = self.epoch_stat = self.batch_loss = self.record = None
        self.partial = None  # the partial-epoch sums of a run resumed mid-epoch
        self.evaluation = None
        self.input_shape = None  # one image's C x H x W (for the export)
        self.done_seconds, self.started, self.train_seconds = 0.0, time.time(), None
        self.batches = 0  # batches in this epoch
        self.checked_loss = None  # the batch loss when the guard checked it this step, else None
        self.mean_loss = None  # the epoch's mean loss, checked (epoch_end)
        self.guard = None  # the StopGuard (its ``requested`` is the signal that asked to stop)
        self.metrics = None  # the final metrics (train_end)
        self.reported_epoch = None  # the epoch whose weights metrics.json reports (train_end)
        self.epoch_zero = None  # the count of zero-loss batches of the epoch (1-element array)
        self.health = {}  # the epoch's training-health statistics (dml.health), history keys
        self.health_baseline = None  # the untrained network's (kept in checkpoints)
        self.baselines = None  # raw pixels and the untrained network on the evaluated split

    def elapsed(self):
        """Training seconds, the stopped processes' included."""
        return self.done_seconds + time.time() - self.started

    def add_batch(self, loss, stat=None):
        """One step's ``loss`` (1-element array) and the loss's ``stat`` (or None)."""
        stat = loss * 0 if stat is None else stat
        self.step += 1
        self.seen += 1
        self.batch_loss = loss
        self.epoch_loss = loss if self.epoch_loss is None else self.epoch_loss + loss
        self.epoch_stat = stat if self.epoch_stat is None else self.epoch_stat + stat
        zero = loss <= 0
        self.epoch_zero = zero if self.epoch_zero is None else self.epoch_zero + zero

    def begin_epoch(self, epoch, batches):
        """Epoch ``epoch`` with ``batches`` batches, continuing the sums of a resumed partial
        epoch."""
        self.epoch, self.seen, self.epoch_loss = epoch, 0, None
        self.epoch_stat, self.batches, self.epoch_zero, self.health = None, batches, None, {}
        if self.partial is not None:
            ctx = self.ctx[0]
            self.epoch_loss = mx.nd.array([self.partial["loss_sum"]], ctx=ctx)
            self.epoch_stat = mx.nd.array([self.partial["stat_sum"]], ctx=ctx)
            self.epoch_zero = mx.nd.array([self.partial.get("zero_sum", 0.0)], ctx=ctx)
            self.seen = self.partial["batches"]
        self.partial = None

    @property
    def final_epoch(self):
        return self.epoch == self.epochs


def rng_state():
    """numpy's and Python's global RNG states (the random selectors draw from numpy's), as JSON."""
    import random

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state):
    import random

    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
