#!/usr/bin/env python
"""Time and memory of the evaluation metrics on random embeddings: prints one table row per size.

    python scripts/bench_metrics.py                       # N = 10,000 and 60,000, 10 classes, 128-D
    python scripts/bench_metrics.py --sizes 2000 --all    # also clustering and kNN

Peak memory is numpy's own allocations during the call (tracemalloc), next to what the full
N x N float64 distance matrix would take; scikit-learn's kNN works in buffers tracemalloc cannot
see, so its peak is not shown.
"""
import argparse
import os
import sys
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(fn):
    tracemalloc.start()
    started = time.perf_counter()
    fn()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2 ** 20


def main():
    from dml.evaluation import clustering_metrics, knn_accuracy, retrieval_metrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,60000")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--all", action="store_true", help="also nmi/ami (k-means) and knn_accuracy")
    args = parser.parse_args()
    print("%-14s %7s %8s %5s %9s %10s %13s" % ("metric", "N", "classes", "dim", "seconds",
                                               "peak MB", "N x N MB"))
    for n in (int(v) for v in args.sizes.split(",")):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, args.classes, n)
        x = rng.normal(size=(n, args.dim)).astype(np.float32) + labels[:, None] * 0.05
        runs = [("retrieval", lambda: retrieval_metrics(x, labels))]
        if args.all:
            runs += [("clustering", lambda: clustering_metrics(x, labels)),
                     ("knn_accuracy", lambda: knn_accuracy(x, labels, x[: n // 5], labels[: n // 5]))]
        for name, fn in runs:
            seconds, peak = measure(fn)
            shown = "n/a" if name == "knn_accuracy" else "%.0f" % peak
            print("%-14s %7d %8d %5d %9.1f %10s %13.0f" % (name, n, args.classes, args.dim,
                                                          seconds, shown, n * n * 8 / 2 ** 20))
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
