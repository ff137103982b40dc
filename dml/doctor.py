"""``python -m dml doctor``: what is installed, which devices this build can run, and one tiny
ResNet-18 + semi-hard-loss training step on each, so a machine is checked in seconds."""
import os
import sys
import time

from .gpus import WHEEL_CAPABILITIES, gpu_report, installed_build, supports


def environment():
    """``[(what, value)]``: the Python, MXNet build and its CUDA, numpy, numba, threads, GPUs."""
    import mxnet as mx
    import numba
    import numpy as np

    build = installed_build() or "unknown"
    cuda = mx.runtime.Features().is_enabled("CUDA")
    rows = [("python", sys.version.split()[0]),
            ("mxnet", "%s (%s, %s)" % (mx.__version__, build,
                                       "CUDA %s" % build.split("-cu")[-1] if cuda else "CPU only")),
            ("numpy", np.__version__), ("numba", numba.__version__),
            ("cpu cores", str(os.cpu_count())),
            ("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "(unset)"))]
    gpus, problem = gpu_report()
    seen = mx.context.num_gpus() if cuda else 0
    if problem:
        rows.append(("gpus", "unknown: %s" % problem))
    elif not gpus:
        rows.append(("gpus", "none listed by nvidia-smi"))
    for gpu in gpus:
        if not cuda:
            verdict = "not usable: this is the CPU build of mxnet"
        elif build in WHEEL_CAPABILITIES and not supports(build, gpu.capability):
            low, high = WHEEL_CAPABILITIES[build]
            verdict = "NOT usable: %s has code for %d.%d to %d.%d only" % ((build,) + low + high)
        else:
            verdict = "usable" if gpu.index < seen else "not seen by mxnet"
        rows.append(("gpu %d" % gpu.index, "%s, compute capability %s: %s"
                     % (gpu.name, gpu.capability_text, verdict)))
    return rows


def usable_contexts():
    import mxnet as mx

    from .gpus import usable_gpus

    gpus = usable_gpus(mx.context.num_gpus()) if mx.runtime.Features().is_enabled("CUDA") else []
    return [mx.cpu()] + [mx.gpu(i) for i in gpus]


def smoke_test(ctx, batch=16, size=32):
    """One forward/backward/update of ResNet-18 + TripletSemiHardLoss on ``ctx`` -> seconds;
    raises if anything fails or the loss is not finite."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from .losses import TripletSemiHardLoss
    from .nets import EmbeddingNet

    net = EmbeddingNet(16, l2_normalize=True)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize()
    loss_fn = TripletSemiHardLoss(margin=0.2)
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-3})
    x = mx.nd.random.normal(shape=(batch, 3, size, size), ctx=ctx)
    labels = mx.nd.array(np.arange(batch) % 4, ctx=ctx)
    started = time.time()
    with autograd.record():
        loss = loss_fn(net(x), labels)
    loss.backward()
    trainer.step(1)
    mx.nd.waitall()  # the update too: MXNet aborts at exit with work still queued
    value = loss.asscalar()
    if not np.isfinite(value):
        raise FloatingPointError("the loss is %s" % value)
    return time.time() - started
