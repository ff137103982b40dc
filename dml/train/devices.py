"""Devices and workers: the contexts a run trains on, the seeds, MXNet's CPU engine threads and
the kvstore job's workers (:class:`Workers`: ranks, shards, gathering, the run name).
"""
import logging
import os
import random

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..errors import DmlError

log = logging.getLogger("dml")


def make_contexts(gpus=(), cpus=0):
    """``mx.gpu(i)`` for each of ``gpus``; else ``cpus`` CPU contexts (>1 exercises the multi-device
    code path without GPUs); else one CPU."""
    if gpus:
        from ..gpus import check_gpus

        check_gpus(gpus)
        available = mx.context.num_gpus()
        missing = [g for g in gpus if g >= available]
        if missing:
            raise DmlError("gpus=%s: this machine's mxnet sees %d GPU(s)%s: drop `gpus` to train "
                           "on the CPU" % (",".join(map(str, gpus)), available,
                                           " (CPU-only build or no GPU)" if available == 0 else ""))
        return [mx.gpu(g) for g in gpus]
    if cpus > 1:
        return [mx.cpu(i) for i in range(cpus)]
    return [mx.cpu()]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


CPU_SYNC_NOTE = (
    "%d CPU contexts with MXNet's engine on one thread per device (MXNET_CPU_WORKER_NTHREADS "
    "unset or 1): SyncBatchNorm could hang there, so each BatchNorm layer normalizes over its own "
    "share of the batch, and the loss and update differ from one context's; set "
    "MXNET_CPU_WORKER_NTHREADS=4 before MXNet loads (python -m dml train --cpus N does) to share "
    "the statistics")


def cpu_engine_threads():
    """MXNet's engine threads per CPU device (``MXNET_CPU_WORKER_NTHREADS``, read when MXNet
    loads; 1 by default)."""
    try:
        return int(os.environ.get("MXNET_CPU_WORKER_NTHREADS", "1"))
    except ValueError:
        return 1


DIST_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER",
            "DMLC_NUM_SERVER")


_RUN_NAME_KEY = 1 << 24  # an integer kvstore key far above the Trainer's parameter indices


_RUN_NAME_BYTES = 4096


_GATHER_KEYS = {"embeddings": _RUN_NAME_KEY + 1, "labels": _RUN_NAME_KEY + 2}


def make_kvstore(kind):
    """The kvstore object of a distributed ``kind`` (``dist_*``), or None: the local kinds are
    created by the Trainer itself. A distributed kvstore needs the environment that MXNet's
    launcher (``dmlc_tracker``, wrapped by ``scripts/launch.py``) gives each process."""
    if not kind.startswith("dist"):
        return None
    missing = [name for name in DIST_ENV if name not in os.environ]
    if missing:
        raise DmlError("kvstore=%s needs the environment of MXNet's launcher (%s not set): start "
                       "the job with python scripts/launch.py -n WORKERS -s SERVERS -- python -m "
                       "dml train ..." % (kind, ", ".join(missing)))
    return mx.kv.create(kind)


class Workers:
    """Where this process stands in the job: ``rank`` of ``count`` workers (1 without a
    distributed kvstore). Only rank 0 writes the run folder."""

    def __init__(self, kv=None):
        self.kv = kv
        self.rank = kv.rank if kv is not None else 0
        self.count = kv.num_workers if kv is not None else 1
        # dist_async: the servers run the optimizer and apply each worker's push on its own
        self.asynchronous = kv is not None and "async" in kv.type
        self._pulled = False
        self._gather_keys = set()

    @property
    def writes(self):
        return self.rank == 0

    @property
    def step_scale(self):
        """What ``trainer.step`` divides the gradient by: synchronous jobs sum the workers'
        gradients (average them); dist_async applies each worker's push on its own."""
        return 1 if self.asynchronous else self.count

    @property
    def saves_trainer(self):
        """Trainer states can be saved unless the optimizer runs on the servers (dist_async)."""
        return not self.asynchronous

    def pull_weights_before_pushing(self, trainer):
        """Called between the first backward pass and the first update: the Trainer broadcasts
        rank 0's initial weights (a pull per parameter) in its first step, and the gradients then
        travel under the same kvstore keys. Nothing orders a worker's weight pull before its own
        gradient push, and a pull served after both workers' pushes were merged returns their
        summed gradients instead of the weights. Initialising here and waiting closes that gap
        (seen with two workers: one started from the gradient sum)."""
        if self.kv is None or self.count == 1 or self._pulled:
            return
        trainer._init_kvstore()  # pylint: disable=protected-access
        trainer._init_params()  # pylint: disable=protected-access
        mx.nd.waitall()
        self._pulled = True

    def all_gather(self, embeddings, labels):
        """Every worker's ``embeddings`` (numpy N x D) and ``labels``, concatenated in worker
        order, and this worker's offset in them: what a cross-batch memory enqueues, so that
        every worker's memory holds the same rows. Each worker writes its rows into a zero
        buffer of the whole; the kvstore sums the workers' pushes (a synchronous job's servers
        keep the sum: no optimizer runs on them) and every worker pulls the sum. Every worker
        must call it once per step, with the same N."""
        if self.kv is None or self.count == 1:
            return embeddings, labels, 0
        n = len(embeddings)
        out = []
        for name, part in (("embeddings", embeddings.reshape(n, -1)),
                           ("labels", np.asarray(labels, dtype=np.float32).reshape(n, 1))):
            whole = np.zeros((self.count * n, part.shape[1]), dtype=np.float32)
            whole[self.rank * n:(self.rank + 1) * n] = part
            value = mx.nd.array(whole)
            key = _GATHER_KEYS[name]
            if key not in self._gather_keys:
                self.kv.init(key, mx.nd.zeros_like(value))
                self._gather_keys.add(key)
            self.kv.push(key, value)
            self.kv.pull(key, out=value)
            out.append(value.asnumpy())
        return out[0], out[1].reshape(-1).astype(np.float64), self.rank * n

    def agree(self, run_dir):
        """Rank 0's ``run_dir``, on every worker (broadcast through the kvstore)."""
        if self.kv is None or self.count == 1:
            return run_dir
        code = np.zeros(_RUN_NAME_BYTES, dtype=np.float32)
        if self.rank == 0:
            raw = np.frombuffer(os.path.abspath(run_dir).encode("utf-8"), dtype=np.uint8)
            if len(raw) >= _RUN_NAME_BYTES:
                raise DmlError("the run folder path is longer than %d bytes" % _RUN_NAME_BYTES)
            code[:len(raw)] = raw
        value = mx.nd.array(code)
        self.kv.broadcast(_RUN_NAME_KEY, value, out=value)
        raw = value.asnumpy().astype(np.uint8)
        return bytes(raw[:np.argmax(raw == 0)]).decode("utf-8")


def split_batch(batch, ctx):
    """A numpy batch -> per device, the tuple of its slices (``parts[i]`` on ``ctx[i]``)."""
    return list(zip(*[gluon.utils.split_and_load(a, ctx, even_split=False) for a in batch]))
