"""``python -m dml.bench serve``: what using a trained run costs on this machine.

1. Embedding throughput (images/s) of ResNet-18 embedding networks at 32 x 32 and 224 x 224
   (inference, hybridized), beside the training step of the same network and batch (forward,
   backward, update: the floor a training run pays per image), and ``dml.load_run`` start-up:
   a fresh process from its start to the first embedding, and ``load_run`` alone.
2. Search over a synthetic gallery (``--gallery`` x ``--dim``, default 1,000,000 x 128) of
   clustered, L2-normalized vectors (``--clusters`` Gaussian clusters: real embeddings are
   clustered; uniform noise is the worst case of every approximate index), ``--queries`` queries
   from the same clusters, k = 10: build time, batch and per-query latency (p50, p99), recall@10
   against the exact result, and index memory, for faiss' exact, IVF and HNSW indexes and for
   our own numpy top-k (:func:`dml.index.brute_force`) on the same data in the same run.
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from .distances import unit_rows


def _images_per_second(size, batch, repeats, train=False):
    import mxnet as mx
    from mxnet import autograd, gluon

    from .train.builders import build_net
    from .losses import TripletSemiHardLoss

    ctx = mx.cpu()
    net = build_net(ctx, embedding_dim=128, l2_normalize=True)
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.uniform(shape=(batch, 3, size, size), ctx=ctx)
    labels = mx.nd.array(np.arange(batch) // 4, ctx=ctx)
    loss_fn = TripletSemiHardLoss()
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 1e-4}) if train \
        else None

    def step():
        if train:
            with autograd.record():
                loss = loss_fn(net(x), labels)
            loss.backward()
            trainer.step(batch)
            loss.wait_to_read()
        else:
            net(x).wait_to_read()

    step()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return batch / float(np.median(times))


STARTUP = """
import sys, time
started = time.perf_counter()
import numpy as np
import dml
t = time.perf_counter()
run = dml.load_run(sys.argv[1])
loaded = time.perf_counter() - t
run.embed(np.zeros((1, 32, 32, 3), dtype=np.uint8))
print(time.perf_counter() - started, loaded)
"""


def _startup(repeats):
    """(process start to first embedding, load_run alone), medians, on a 1-epoch digits run."""
    with tempfile.TemporaryDirectory(prefix="dml-bench-") as out:
        subprocess.run([sys.executable, "-m", "dml", "train", "--epochs", "1", "--dataset",
                        "digits", "--output-root", out], check=True, capture_output=True,
                       timeout=1800)
        run = [os.path.join(r, f) for r, dirs, _ in os.walk(out) for f in dirs
               if f[:4].isdigit()][0]
        rows = []
        for _ in range(repeats):
            proc = subprocess.run([sys.executable, "-c", STARTUP, run], capture_output=True,
                                  text=True, check=True, timeout=600)
            rows.append([float(v) for v in proc.stdout.split()])
    rows = np.array(rows)
    return float(np.median(rows[:, 0])), float(np.median(rows[:, 1]))


def synthetic(n, dim, clusters, seed, noise_seed=None):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    if noise_seed is not None:
        rng = np.random.default_rng(noise_seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100000):
        stop = min(n, start + 100000)
        chunk = centres[rng.integers(0, clusters, stop - start)] + 0.5 * rng.normal(
            size=(stop - start, dim)).astype(np.float32)
        out[start:stop] = unit_rows(chunk)
    return out


def _latencies(search, queries, singles):
    times = []
    for q in queries[:singles]:
        started = time.perf_counter()
        search(q[None])
        times.append(1000.0 * (time.perf_counter() - started))
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _index_bytes(index):
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def cmd_serve(args):
    from .errors import DmlError
    from .index import SearchIndex, brute_force

    if args.clusters > args.gallery:
        raise DmlError("--clusters %d is more than the --gallery %d vectors"
                       % (args.clusters, args.gallery))
    if args.gallery < 10:
        raise DmlError("--gallery %d: the search measures 10 neighbours; give at least 10"
                       % args.gallery)

    print("## Embedding (ResNet-18, 128-D, one CPU context, %d threads)\n"
          % int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    print("| input | batch | embed images/s | train step images/s | embed / train |")
    print("|---|---:|---:|---:|---:|")
    for size, batch in ((32, 128), (224, 16)):
        embed = _images_per_second(size, batch, args.repeats)
        train = _images_per_second(size, batch, args.repeats, train=True)
        print("| %d x %d | %d | %.0f | %.0f | %.1fx |" % (size, size, batch, embed, train,
                                                          embed / train))
    if not args.skip_startup:
        total, load = _startup(args.repeats)
        print("\nload_run start-up (1-epoch digits run, median of %d fresh processes): %.2f s "
              "from process start to the first embedding, of which load_run %.2f s"
              % (args.repeats, total, load))
    sys.stdout.flush()

    n, k = args.gallery, 10
    gallery = synthetic(n, args.dim, args.clusters, 0)
    # queries from the same clusters, not gallery points: centres of seed 0, noise of seed 1
    queries = synthetic(args.queries, args.dim, args.clusters, 0, noise_seed=1)
    print("\n## Search: %d x %d gallery (%d clusters), %d queries, k = %d, euclidean\n"
          % (n, args.dim, args.clusters, args.queries, k))
    print("| index | build s | batch ms/query | single p50 ms | single p99 ms | recall@10 | "
          "memory MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    started = time.perf_counter()
    _, truth = brute_force(queries, gallery, k)
    numpy_batch = 1000.0 * (time.perf_counter() - started) / len(queries)
    p50, p99 = _latencies(lambda q: brute_force(q, gallery, k), queries, args.singles)
    print("| numpy top-k (ours) | 0 | %.2f | %.1f | %.1f | 1.000 | %.0f |" % (
        numpy_batch, p50, p99, gallery.nbytes / 2 ** 20))
    sys.stdout.flush()
    for kind in args.kinds:
        started = time.perf_counter()
        index = SearchIndex.build(gallery, "euclidean", kind)
        build = time.perf_counter() - started
        started = time.perf_counter()
        _, found = index.search(queries, k)
        batch = 1000.0 * (time.perf_counter() - started) / len(queries)
        p50, p99 = _latencies(lambda q: index.search(q, k), queries, args.singles)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)])
        label = kind + (" (nlist %d, nprobe %d)" % (index.nlist, _nprobe(index)) if kind == "ivf"
                        else " (M 32, ef 64)" if kind == "hnsw" else "")
        print("| faiss %s | %.1f | %.3f | %.2f | %.2f | %.3f | %.0f |" % (
            label, build, batch, p50, p99, recall, _index_bytes(index.index) / 2 ** 20))
        sys.stdout.flush()
        del index
    return 0


def _nprobe(index):
    from .index import default_nprobe

    return default_nprobe(index.nlist)


def add_parser(sub):
    serve = sub.add_parser("serve", help="embedding throughput, load_run start-up, and search "
                           "(faiss exact/IVF/HNSW against numpy top-k)")
    from .argtypes import bounded_int, name_list
    from .index import KINDS

    serve.add_argument("--gallery", type=bounded_int(1, 10 ** 8), default=1000000)
    serve.add_argument("--dim", type=bounded_int(1, 4096), default=128)
    serve.add_argument("--clusters", type=bounded_int(1, 10 ** 7), default=10000,
                       help="the gallery's clusters (at most --gallery)")
    serve.add_argument("--queries", type=bounded_int(1, 10 ** 7), default=1000)
    serve.add_argument("--singles", type=bounded_int(0, 10 ** 6), default=200,
                       help="queries searched one at a time for the latency percentiles")
    serve.add_argument("--kinds", type=name_list(KINDS), default=list(KINDS), metavar="KINDS",
                       help="comma-separated subset of " + ", ".join(KINDS))
    serve.add_argument("--repeats", type=bounded_int(1, 1000), default=5)
    serve.add_argument("--skip-startup", action="store_true",
                       help="leave out the load_run start-up (it trains a 1-epoch digits run)")
    serve.set_defaults(func=cmd_serve)
    return serve
