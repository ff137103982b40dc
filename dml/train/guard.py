"""The stop guard: signals (Ctrl-C, SIGTERM) and the one non-finite check of the loop.
"""
import logging
import signal
import threading

import mxnet as mx
import numpy as np

from ..events import GUARD, BatchEnd, EpochEnd, TrainStart
from .state import NonFiniteLoss, TrainingInterrupted

log = logging.getLogger("dml")


def non_finite_parameters(block):
    """The names of ``block``'s parameters (weights and BatchNorm statistics) that hold a NaN or
    an infinity; one host synchronisation when every one is finite."""
    arrays = [(name, p.list_data()[0]) for name, p in block.collect_params().items()
              if p._data is not None]  # pylint: disable=protected-access
    if not arrays:
        return []
    poison = mx.nd.add_n(*[(a * 0).sum().as_in_context(arrays[0][1].context) for _, a in arrays])
    if np.isfinite(poison.asscalar()):
        return []
    return [name for name, a in arrays if not np.isfinite((a * 0).sum().asscalar())]


_STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopGuard(TrainStart, BatchEnd, EpochEnd):
    """What stops a run early: a signal, or a value that is no longer finite.

    While active, Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and ``timeout`` send before
    killing) only set ``requested``: the loop finishes its step, the recorder writes a
    checkpoint and the run stops. A second signal stops at once: :class:`TrainingInterrupted`
    with ``at_once`` and the last complete checkpoint (nothing more is written). Signals are
    caught only in the main thread.

    :meth:`check` is the one non-finite check: the loss (NaN whenever an embedding is, see
    :func:`dml.losses.base.propagate_non_finite`) and every parameter of ``model``; it runs every
    ``log_interval`` steps (the only host synchronisation of the loop) and at each epoch's end,
    before its checkpoint. It is ``state.guard`` (the recorder reads ``requested``).
    """
    priority = GUARD

    def __init__(self, model, log_interval=10):
        self.model, self.log_interval = model, log_interval
        self.requested = None  # the signal number once a stop was asked for
        self._previous = {}
        self._state = None

    def train_start(self, state):
        self._state = state
        state.guard = self

    def _handle(self, signum, frame):
        if self.requested is not None:  # the second signal: stop now, nothing more written
            raise TrainingInterrupted(self._state.last_good if self._state else None, signum,
                                      at_once=True)
        self.requested = signum
        log.warning("%s: stopping after this step with a checkpoint (again to stop at once)",
                    _STOP_SIGNALS.get(signum, signum))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        return False

    def check(self, loss, where, last_good):
        """Raise :class:`NonFiniteLoss` when ``loss`` (a number or 1-element array) or a
        parameter is NaN or infinite; ``where`` says when (``"at step 40 (epoch 2)"``)."""
        value = float(loss.asscalar() if hasattr(loss, "asscalar") else loss)
        if not np.isfinite(value):
            raise NonFiniteLoss("the loss is %s %s" % (value, where), last_good)
        bad = non_finite_parameters(self.model)
        if bad:
            raise NonFiniteLoss("the weights hold NaN or inf %s (%d arrays, first %s)"
                                % (where, len(bad), bad[0]), last_good)
        return value

    def batch_end(self, state):
        state.checked_loss = None
        if state.step % self.log_interval == 0:
            state.checked_loss = self.check(state.batch_loss, "at step %d (epoch %d)"
                                            % (state.step, state.epoch), state.last_good)

    def epoch_end(self, state):
        state.mean_loss = self.check(state.epoch_loss, "in epoch %d" % state.epoch,
                                     state.last_good) / max(state.seen, 1)
