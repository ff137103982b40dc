"""One batch over several devices: each device embeds its slice and the embeddings meet on the
first (:func:`gather_embeddings`); with BatchNorm shared over the devices (SyncBatchNorm) each
device's passes run in a thread of their own (:func:`in_threads`, :class:`ParallelStep`).
:mod:`dml.methods` builds every method's training step on these."""
import threading

import mxnet as mx
from mxnet import autograd


def gather_embeddings(net, parts, ctx):
    """``(embeddings, labels)`` of a batch split over devices (``parts[i]``: the ``(images,
    labels)`` on ``ctx[i]``), in batch order on ``ctx[0]``: each device embeds its slice and the
    embeddings are copied by a recorded ``as_in_context``, so inside ``autograd.record()`` the
    gradient of a loss on the whole batch flows back to every device."""
    embeddings = [net(images) for images, _ in parts]
    labels = [lab for _, lab in parts]
    if len(parts) == 1:
        return embeddings[0], labels[0]
    return (mx.nd.concat(*[e.as_in_context(ctx[0]) for e in embeddings], dim=0),
            mx.nd.concat(*[lab.as_in_context(ctx[0]) for lab in labels], dim=0))


def in_threads(fn, argument_lists):
    """``[fn(*arguments) for arguments in argument_lists]``, each call in a thread of its own, all
    at once; the first exception is raised again here. SyncBatchNorm's devices meet at a barrier in
    every BatchNorm layer, forward and backward, so their passes must be issued concurrently: one
    thread issuing device after device waits at the first barrier for ever (GluonCV's
    DataParallelModel runs each device in a thread for the same reason)."""
    results = [None] * len(argument_lists)
    errors = []

    def run(i, arguments):
        try:
            results[i] = fn(*arguments)
        except BaseException as err:  # pylint: disable=broad-except
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, a), daemon=True)
               for i, a in enumerate(argument_lists)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _recorded(fn, *args):
    """``fn(*args)`` recorded for autograd, in training mode (autograd's state is per thread)."""
    with autograd.record():
        return fn(*args)


def _backward_device(outputs, grads, extra=None):
    """Back-propagate ``grads`` from ``outputs`` (one device's part), and ``extra`` (a term whose
    gradient must be written too)."""
    with autograd.record():
        head = (outputs * grads).sum()
        if extra is not None:
            head = head + extra()
    head.backward()


class ParallelStep:
    """One training step over several devices whose network shares BatchNorm statistics
    (SyncBatchNorm): each device's forward and backward pass run in a thread of their own
    (:func:`in_threads`). ``loss`` and ``stat`` are on ``ctx[0]``; :meth:`backward` back-propagates
    the step. The gradient is the one of the one-thread step."""

    def __init__(self, loss, stat, backward):
        self.loss, self.stat, self._backward = loss, stat, backward

    def backward(self):
        self._backward()
