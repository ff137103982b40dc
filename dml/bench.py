"""Benchmarks that print tables: ``python -m dml.bench losses``, ``python -m dml.bench train`` and
``python -m dml.bench serve`` (:mod:`dml.bench_serve`).

``losses``: for each batch loss and batch size B, the median time of one forward + backward pass
on random B x D embeddings (P x K labels, ``--samples-per-class`` each), and the peak resident
memory of a fresh process that runs only that measurement. Beside it: the same loss written the
naive way (every (a, p, n) triplet in a B x B x B tensor, as the classic repositories do) where that
fits in memory, and the ratio to the floor, numpy's x @ x.T alone (timed in the same process,
right after the loss).

``memory``: the cost of a cross-batch memory: the loss of a B x D batch against a full memory
of M embeddings (forward + backward) beside one ResNet-18 training step of the same batch.

``checks``: the full decode check of a folder's images (:mod:`dml.data.checks`) at its first
load and at a second load, which decodes only the files that changed (none).

``train``: images per second of full training steps (data loading, forward, backward, update) of
each method on the same backbone and batch, and the share of the step its loss takes (the loss's
forward + backward alone on embeddings of the step's shape, over the step time).

Times are medians of ``--repeats`` runs after one warm-up run. On a shared machine compare rows
of one run of the command rather than runs of different days.

(About 520 lines, one command: its four tables share the timing helpers, the subprocess that
measures peak memory and one parser; ``serve`` has its own module, :mod:`dml.bench_serve`.)
"""
import json
import os
import subprocess
import sys
import time

from .errors import DmlError
from .argtypes import check_omp_threads
from .registry import PK_METHODS

# the batch losses timed (one fused host operator each): every P x K method's loss, NT-Xent,
# and multi-similarity with its miner (the multi_similarity method's default)
LOSSES = PK_METHODS + ("ntxent", "multi_similarity+miner")
TRAIN_METHODS = ("softmax",) + PK_METHODS  # softmax: the step without a metric loss
NAIVE_MAX_CUBE = 1 << 28  # B^3 entries: B <= 645, about 1 GB per float32 tensor


def _loss(name, margin=0.2):
    from . import losses

    make = {
        "triplet_semihard": lambda: losses.TripletSemiHardLoss(margin=margin),
        "triplet_batch_hard": lambda: losses.TripletBatchHardLoss(margin=margin),
        "triplet_batch_all": lambda: losses.TripletBatchAllLoss(margin=margin),
        "online_triplet": lambda: losses.OnlineTripletLoss(margin=margin, selector="random_hard"),
        "online_contrastive": lambda: losses.OnlineContrastiveLoss(
            margin=1.0, pair_selector="hard_negative"),
        "multi_similarity": losses.MultiSimilarityLoss,
        "circle": losses.CircleLoss,
        "supcon": losses.SupConLoss,
        "lifted": losses.GeneralizedLiftedStructureLoss,
        "npairs": losses.NPairsLoss,
        "margin": losses.MarginLoss,
        "ntxent": losses.NTXentLoss,
        "multi_similarity+miner": _mined_multi_similarity,
    }
    return make[name]()


def _mined_multi_similarity():
    from .losses import MultiSimilarityLoss
    from .methods import MinedLoss
    from .miners import MultiSimilarityMiner

    return MinedLoss(MultiSimilarityLoss(), MultiSimilarityMiner())


def _pair_masks(F, labels):
    labels = labels.reshape((-1,))
    same = F.broadcast_equal(labels.reshape((-1, 1)), labels.reshape((1, -1)))
    idx = F.contrib.arange_like(labels)
    not_self = 1 - F.broadcast_equal(idx.reshape((-1, 1)), idx.reshape((1, -1)))
    return same, not_self


def naive_loss(name, margin=0.2):
    """The B x B x B formulation of ``name`` (None where the classic code is not cubic)."""
    import mxnet as mx

    from .ops.distance import pairwise_distance

    class NaiveBatchAll(mx.gluon.HybridBlock):
        """Every valid triplet in a B x B x B tensor (omoindrot's batch_all_triplet_loss)."""

        def hybrid_forward(self, F, x, labels):
            d = pairwise_distance(F, x, "euclidean")
            same, not_self = _pair_masks(F, labels)
            positive = same * not_self
            negative = 1 - same
            loss = F.relu(F.broadcast_add(d.expand_dims(2), margin - d.expand_dims(1)))
            valid = F.broadcast_mul(positive.expand_dims(2), negative.expand_dims(1))
            loss = loss * valid
            return F.sum(loss) / F.maximum(F.sum(loss > 1e-16), 1)

    class NaiveSemiHard(mx.gluon.HybridBlock):
        """TensorFlow's triplet_semihard_loss: for every (a, p) the masked minimum over n of a
        B x B x B tensor."""

        def hybrid_forward(self, F, x, labels):
            d = pairwise_distance(F, x, "euclidean")
            same, not_self = _pair_masks(F, labels)
            positive = same * not_self
            negative = 1 - same
            d_an = F.broadcast_mul(negative, d).expand_dims(1)  # a x 1 x n
            neg = negative.expand_dims(1)
            farther = F.broadcast_mul(F.broadcast_greater(d_an, d.expand_dims(2)), neg)  # a x p x n
            big = 1e6
            semihard = F.min(F.broadcast_add(d_an, (1 - farther) * big), axis=2)
            farthest = F.max(F.broadcast_mul(d_an, neg) - (1 - neg) * big, axis=2)
            has = F.sum(farther, axis=2) > 0
            chosen = F.where(has, semihard, F.broadcast_like(farthest, semihard))
            loss = F.relu(d - chosen + margin) * positive
            return F.sum(loss) / F.maximum(F.sum(positive), 1)

    return {"triplet_batch_all": NaiveBatchAll, "triplet_semihard": NaiveSemiHard}.get(name)


def _warm_up(fn, rounds=12, tolerance=0.15, clock=time.perf_counter):
    """Call ``fn`` until two calls in a row take times within ``tolerance`` of each other (at
    least 3 calls, at most ``rounds``): the first steps of a method build graphs, allocate and
    fill caches, and a single warm-up call left the first method of a table 10x slow. ``clock``
    gives the time in seconds."""
    times = []
    for _ in range(rounds):
        started = clock()
        fn()
        times.append(clock() - started)
        if len(times) >= 3 and abs(times[-1] - times[-2]) <= tolerance * min(times[-2:]):
            break


def _median_ms(fn, repeats):
    fn()  # warm-up: graph building, allocation
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    times.sort()
    return 1000.0 * times[len(times) // 2]


def _peak_rss_mb():
    """This process's peak resident memory. VmHWM starts afresh at exec; ru_maxrss (the fallback
    off Linux) would also count the parent's memory at fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _embeddings(batch, dim, samples_per_class, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype(np.float32)
    labels = (np.arange(batch) // samples_per_class).astype(np.float32)
    return x, labels


def measure_loss(name, batch, dim, samples_per_class, repeats, naive=False):
    """One (loss, B) measurement in this process: {"ms": ..., "peak_mb": ...}."""
    import mxnet as mx
    from mxnet import autograd

    x_np, labels_np = _embeddings(batch, dim, samples_per_class)
    if naive:
        block_cls = naive_loss(name)
        loss_fn = block_cls()
    else:
        loss_fn = _loss(name)
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    x, labels = mx.nd.array(x_np), mx.nd.array(labels_np)
    x.attach_grad()

    def step():
        with autograd.record():
            loss = loss_fn(x, labels)
        loss.backward()
        x.grad.wait_to_read()

    ms = _median_ms(step, repeats)
    # the floor in the same process, just after: the ratio does not drift with the machine's load
    return {"ms": ms, "peak_mb": _peak_rss_mb(), "floor_ms": floor_ms(batch, dim, repeats)}


def floor_ms(batch, dim, repeats):
    """numpy's x @ x.T: the least any loss over all pairs must do."""
    x, _ = _embeddings(batch, dim, 1)
    return _median_ms(lambda: x @ x.T, repeats)


def _in_subprocess(args):
    proc = subprocess.run([sys.executable, "-m", "dml.bench"] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": last[:80]}
    if not proc.stdout.strip():
        return {"error": "no output"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cmd_losses(args):
    names = args.losses
    sizes = args.batch_sizes
    for batch in sizes:
        if batch % args.samples_per_class or batch < 2 * args.samples_per_class:
            raise BenchError("--batch-sizes %d: a batch must hold at least two classes of "
                             "--samples-per-class %d (a multiple of it)"
                             % (batch, args.samples_per_class))
    base = _in_subprocess(["_baseline"])
    print("peak RSS of a process that only imports mxnet and dml: %.0f MB" % base["peak_mb"])
    header = "%-24s %6s %10s %9s %10s %9s %9s" % ("loss", "B", "ms", "peak MB", "naive ms",
                                                 "naive MB", "x floor")
    print(header)
    print("-" * len(header))
    for name in names:
        for batch in sizes:
            got = _in_subprocess(["_one", name, batch, args.dim, args.samples_per_class, args.repeats, 0])
            naive = {}
            if naive_loss(name) is not None and batch ** 3 <= NAIVE_MAX_CUBE:
                naive = _in_subprocess(["_one", name, batch, args.dim, args.samples_per_class,
                                        args.repeats, 1])
            floor = got.get("floor_ms") or floor_ms(batch, args.dim, args.repeats)
            if "error" in got:
                print("%-24s %6d  failed: %s" % (name, batch, got["error"]))
                continue
            print("%-24s %6d %10.1f %9.0f %10s %9s %9.1f" % (
                name, batch, got["ms"], got["peak_mb"],
                "%.1f" % naive["ms"] if "ms" in naive else "-",
                "%.0f" % naive["peak_mb"] if "peak_mb" in naive else "-",
                got["ms"] / max(floor, 1e-3)))
            sys.stdout.flush()
    return 0


def cmd_train(args):
    """Images/s of real training steps on digits, and the loss's share of a step."""
    import mxnet as mx
    from mxnet import autograd

    from .config import RunConfig, defaults_for
    from .data import load_digits
    from .train.builders import (build_loss, build_net, build_train_loader, build_trainer,
                                 net_options)
    from .train.devices import make_contexts, seed_everything
    from .train.loop import train_step
    from .methods import get_method

    methods = args.methods
    splits = load_digits()
    print("%-20s %6s %10s %12s %12s %10s" % ("method", "batch", "images/s", "step ms",
                                             "loss ms", "loss share"))
    for name in methods:
        values = defaults_for(name, "digits")
        method = get_method(name)
        if method.pk_batches:
            values.update(n_classes=args.n_classes, n_samples=args.n_samples, batch_size=0)
        else:
            values.update(batch_size=args.n_classes * args.n_samples)
        values.update(method=name, dataset="digits", backbone=args.backbone,
                      num_workers=args.num_workers, augment=True)
        cfg = RunConfig.from_dict(values)
        ctx = make_contexts([], 0)
        seed_everything(0)
        net = build_net(ctx, **net_options(cfg))
        model = method.build_model(net, splits.num_classes, ctx, cfg.margin, cfg.scale)
        model.hybridize(static_alloc=True, static_shape=True)
        loss_fn = build_loss(cfg)
        loss_fn.hybridize(static_alloc=True, static_shape=True)
        trainer = build_trainer(cfg, model)
        loader = build_train_loader(cfg, splits)
        batch_images = args.n_classes * args.n_samples

        def batches():
            while True:
                for batch in loader:
                    yield batch

        source = batches()

        def steps():
            for _ in range(args.steps):
                loss, _ = train_step(method, model, loss_fn, trainer, next(source), ctx)
            loss.wait_to_read()

        _warm_up(steps)
        step_ms = _median_ms(steps, args.repeats) / args.steps

        # the loss alone, on embeddings (or logits) of the step's shape
        x_np, labels_np = _embeddings(batch_images, cfg.embedding_dim, args.n_samples)
        x, labels = mx.nd.array(x_np), mx.nd.array(labels_np)
        if name == "softmax":
            x = mx.nd.array(x_np[:, :splits.num_classes])
        x.attach_grad()

        def loss_only():
            with autograd.record():
                out = loss_fn(x, labels)
                value = out[0] if isinstance(out, (list, tuple)) else out
            value.backward()
            x.grad.wait_to_read()

        loss_ms = _median_ms(loss_only, args.repeats) if method.pk_batches or name == "softmax" \
            else float("nan")
        print("%-20s %6d %10.1f %12.1f %12.2f %9.1f%%" % (
            name, batch_images, 1000.0 * batch_images / step_ms, step_ms, loss_ms,
            100.0 * loss_ms / step_ms))
        sys.stdout.flush()
    return 0


def cmd_memory(args):
    """A cross-batch memory's loss (forward + backward, memory full) against a ResNet-18 step."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    from .losses import MultiSimilarityLoss, OnlineContrastiveLoss, SupConLoss
    from .losses.memory import CrossBatchMemory
    from .miners import MultiSimilarityMiner
    from .nets import EmbeddingNet

    b, d, side = args.batch, args.dim, args.image_size
    small = [m for m in args.memory_sizes if m < b]
    if small:
        raise BenchError("--memory-sizes %d is smaller than --batch %d: a memory holds at least "
                         "the batch it scores" % (small[0], b))
    rng = np.random.default_rng(0)
    net = EmbeddingNet(d, args.backbone, l2_normalize=True)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    loss_fn = MultiSimilarityLoss()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-4})
    images = mx.nd.array(rng.normal(size=(b, 3, side, side)).astype(np.float32))
    labels = mx.nd.array((np.arange(b) // 4).astype(np.float32))

    def step():
        with autograd.record():
            loss = loss_fn(net(images), labels)
        loss.backward()
        trainer.step(1)
        loss.wait_to_read()

    step_ms = _median_ms(step, args.repeats)
    print("one %s step, batch %d of %d x %d images, %d-D: %.1f ms" % (args.backbone, b, side,
                                                                     side, d, step_ms))
    header = "%-26s %8s %10s %12s" % ("memory loss", "M", "loss ms", "of a step")
    print(header)
    print("-" * len(header))
    for label, make in (("multi_similarity+miner", lambda m: CrossBatchMemory(
            MultiSimilarityLoss(), m, miner=MultiSimilarityMiner())),
                        ("supcon", lambda m: CrossBatchMemory(SupConLoss(), m)),
                        ("contrastive/hard_negative", lambda m: CrossBatchMemory(
                            OnlineContrastiveLoss(pair_selector="hard_negative"), m)),
                        ("contrastive/all_positive", lambda m: CrossBatchMemory(
                            OnlineContrastiveLoss(pair_selector="all_positive"), m))):
        for memory in args.memory_sizes:
            xbm = make(memory)
            xbm.enqueue(rng.normal(size=(memory, d)).astype(np.float32),
                        (np.arange(memory) // 4) % 512)
            x = mx.nd.array(rng.normal(size=(b, d)).astype(np.float32))
            x.attach_grad()

            def memory_step():
                with autograd.record():
                    loss = xbm(x, labels)
                loss.backward()
                x.grad.wait_to_read()

            ms = _median_ms(memory_step, args.repeats)
            print("%-26s %8d %10.1f %11.1f%%" % (label, memory, ms, 100.0 * ms / step_ms))
            sys.stdout.flush()
    return 0


def cmd_checks(args):
    """The decode check of ``--images`` random JPEGs, first and second load (a fresh record in a
    temporary folder; the files dated an hour back, so that the first check records them)."""
    import shutil
    import tempfile

    import numpy as np
    from PIL import Image

    root = tempfile.mkdtemp(prefix="dml-bench-checks-")
    previous = os.environ.get("DML_CACHE_DIR")
    os.environ["DML_CACHE_DIR"] = os.path.join(root, "cache")
    try:
        from .data.checks import check_images

        rng = np.random.default_rng(0)
        paths, past = [], time.time() - 3600
        for i in range(args.images):
            path = os.path.join(root, "images", "c%d" % (i % 30), "%d.jpg" % i)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (args.side * 3 // 4, args.side, 3),
                                         dtype=np.uint8)).save(path, quality=90)
            os.utime(path, (past, past))
            paths.append(path)
        header = "%-12s %8s %10s %10s" % ("load", "images", "decoded", "seconds")
        print("%d JPEGs of %d x %d, checked at %d px (centre crop)" % (
            args.images, args.side, args.side * 3 // 4, args.image_size))
        print(header)
        print("-" * len(header))
        for label in ("first", "second"):
            start = time.perf_counter()
            decoded = check_images(paths, args.image_size, "center_crop")
            print("%-12s %8d %10d %10.2f" % (label, len(paths), decoded,
                                             time.perf_counter() - start))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if previous is None:
            os.environ.pop("DML_CACHE_DIR", None)
        else:
            os.environ["DML_CACHE_DIR"] = previous
    return 0


class BenchError(Exception):
    """A benchmark's settings that cannot be measured: one line, exit 2."""


def build_parser():
    from .argtypes import Parser, bounded_int, int_list, name_list

    parser = Parser(prog="python -m dml.bench", description="Benchmarks that print tables, the "
                    "floor of each measurement timed in the same run: losses, memory, checks, "
                    "train, serve. Times are medians after a warm-up.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    repeats = dict(type=bounded_int(1, 1000), default=5, help="timed repetitions (the median)")
    dim = dict(type=bounded_int(1, 4096), default=128, help="embedding dimensions")
    losses = sub.add_parser("losses", help="forward + backward time and peak memory per loss and "
                            "batch size, against numpy's x @ x.T")
    losses.add_argument("--batch-sizes", type=int_list(2, 65536),
                        default=[128, 512, 1024, 2048, 4096, 8192], metavar="B1,B2")
    losses.add_argument("--dim", **dim)
    losses.add_argument("--samples-per-class", type=bounded_int(1, 65536), default=16,
                        help="K of the P x K labels (B / K classes)")
    losses.add_argument("--losses", type=name_list(LOSSES), default=list(LOSSES),
                        metavar="NAMES", help="comma-separated subset of " + ", ".join(LOSSES))
    losses.add_argument("--repeats", **repeats)
    losses.set_defaults(func=cmd_losses)
    memory = sub.add_parser("memory", help="a cross-batch memory's cost beside a training step")
    memory.add_argument("--batch", type=bounded_int(2, 65536), default=128)
    memory.add_argument("--dim", **dim)
    memory.add_argument("--memory-sizes", type=int_list(2, 1 << 22), default=[1024, 8192],
                        metavar="M1,M2", help="memory sizes, each at least --batch")
    memory.add_argument("--image-size", type=bounded_int(16, 1024), default=32)
    memory.add_argument("--backbone", default="resnet18_v1")
    memory.add_argument("--repeats", **repeats)
    memory.set_defaults(func=cmd_memory)
    checks = sub.add_parser("checks", help="the image decode check, first and second load")
    checks.add_argument("--images", type=bounded_int(1, 1000000), default=3000)
    checks.add_argument("--side", type=bounded_int(16, 8192), default=256,
                        help="the JPEGs' width")
    checks.add_argument("--image-size", type=bounded_int(16, 1024), default=224)
    checks.set_defaults(func=cmd_checks)
    train = sub.add_parser("train", help="images/s and the loss's share of a training step")
    train.add_argument("--methods", type=name_list(TRAIN_METHODS), default=list(TRAIN_METHODS),
                       metavar="NAMES", help="comma-separated subset of " +
                       ", ".join(TRAIN_METHODS))
    train.add_argument("--n-classes", type=bounded_int(2, 4096), default=8,
                       help="classes per batch (P)")
    train.add_argument("--n-samples", type=bounded_int(1, 4096), default=16,
                       help="samples per class (K); the batch is P x K = 128 by default")
    train.add_argument("--backbone", default="resnet18_v1")
    train.add_argument("--steps", type=bounded_int(1, 10000), default=10,
                       help="training steps per timed repetition")
    train.add_argument("--repeats", **repeats)
    train.add_argument("--num-workers", type=bounded_int(0, 64), default=2)
    train.set_defaults(func=cmd_train)
    from .bench_serve import add_parser

    add_parser(sub)
    return parser


def main(argv=None):
    if "OMP_NUM_THREADS" in os.environ and check_omp_threads(os.environ, ""):
        pass  # reported below, before MXNet loads
    else:
        os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_baseline":
        import mxnet  # noqa: F401

        from . import losses  # noqa: F401

        print(json.dumps({"peak_mb": _peak_rss_mb()}))
        return 0
    if argv and argv[0] == "_one":
        name, batch, dim, k, repeats, naive = argv[1:7]
        print(json.dumps(measure_loss(name, int(batch), int(dim), int(k), int(repeats),
                                      naive=bool(int(naive)))))
        return 0
    problem = check_omp_threads(os.environ, "python -m dml.bench")
    if problem:
        sys.stderr.write(problem)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (BenchError, DmlError) as err:
        sys.stderr.write("python -m dml.bench %s: error: %s\n" % (args.command, err))
        return 2


if __name__ == "__main__":
    sys.exit(main())
