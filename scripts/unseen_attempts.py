"""The attempts at beating raw pixels on unseen digits (train on digits 0-4, retrieve 5-9): each
configuration trained with ``dml train --split unseen`` over seeds, and scored on the unseen test
images twice, on the embedding and on the backbone's pooled features; beside them raw pixels, the
best linear map the training classes give (PCA of their pixels) and an untrained network. The
table in doc/evaluation.md.

    python scripts/unseen_attempts.py --output-root /tmp/unseen-attempts
    python scripts/unseen_attempts.py --output-root R --only default,lr1e-4-val2 --seeds 0

Each run is a separate process, one after the other; an existing run folder is reused.
"""
import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ATTEMPTS = [
    ("default", ""),
    ("lr1e-4", "--lr 1e-4"),
    ("epochs3", "--epochs 3"),
    ("dim512", "--embedding-dim 512"),
    ("wd5e-4", "--wd 5e-4"),
    ("noaug", "--augment none"),
    ("size64", "--image-size 64"),
    ("supcon", "--method supcon"),
    ("multi_similarity", "--method multi_similarity"),
    ("proxy_anchor", "--method proxy_anchor"),
    ("val2", "--val-classes 2"),
    ("lr1e-4-val2", "--lr 1e-4 --val-classes 2"),
    ("lr1e-5-val2", "--lr 1e-5 --epochs 20 --val-classes 2"),
    ("dim512-lr1e-4-val2", "--embedding-dim 512 --lr 1e-4 --val-classes 2"),
    ("rrc-lr1e-4-val2", "--augment resized-crop-flip --lr 1e-4 --val-classes 2"),
    ("size64-lr1e-4-val2", "--image-size 64 --lr 1e-4 --val-classes 2"),
    ("freezebn-lr1e-4-val2", "--freeze-bn --lr 1e-4 --val-classes 2"),
    ("resnet20-lr1e-4-val2", "--backbone cifar_resnet20_v1 --lr 1e-4 --val-classes 2"),
    ("supcon-lr1e-4-val2", "--method supcon --lr 1e-4 --val-classes 2"),
    ("ms-lr1e-4-val2", "--method multi_similarity --lr 1e-4 --val-classes 2"),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-root", required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--only", default="", help="comma-separated attempt names")
    args = parser.parse_args()
    import mxnet as mx
    import numpy as np

    from dml.data import BatchLoader, SequentialBatches, apply_split, load_digits
    from dml.engine import build_net
    from dml.evaluation import embed, retrieval_metrics
    from dml.serve import load_run

    splits = apply_split(load_digits(), "unseen")
    loader = BatchLoader(splits.test, SequentialBatches(len(splits.test), 256), splits.mean,
                         splits.std, num_workers=0)
    seeds = [int(s) for s in args.seeds.split(",")]

    def score(net, distance="euclidean"):
        embeddings, labels = embed(net, loader, mx.cpu())
        return retrieval_metrics(embeddings.reshape(len(embeddings), -1), labels,
                                 distance)["map_at_r"]

    print("%-22s %5s %10s %9s %8s  %s" % ("attempt", "seed", "map_at_r", "pooled", "epoch",
                                         "options"))
    pixels = splits.test.images.reshape(len(splits.test), -1).astype(np.float64) / 255.0
    print("%-22s %5s %10.4f %9s %8s  %s" % ("raw pixels", "-", retrieval_metrics(
        pixels, splits.test.labels)["map_at_r"], "-", "-", "32 x 32 x 3 values"))
    # the best a linear map learned from the training classes does: PCA of their pixels (cosine,
    # the training classes' mean removed), at several dimensions
    train = splits.train.images.reshape(len(splits.train), -1).astype(np.float64) / 255.0
    mean = train.mean(axis=0)
    _, _, components = np.linalg.svd(train - mean, full_matrices=False)
    for dims in (8, 16, 32, 64):
        projected = (pixels - mean) @ components[:dims].T
        print("%-22s %5s %10.4f %9s %8s  %s" % ("pixels, PCA %d" % dims, "-", retrieval_metrics(
            projected, splits.test.labels, "cosine")["map_at_r"], "-", "-",
            "fit on the training classes"), flush=True)
    for seed in seeds:
        mx.random.seed(seed)
        net = build_net([mx.cpu()], 128, "resnet18_v1", True)
        print("%-22s %5d %10.4f %9.4f %8s  %s" % ("untrained", seed, score(net),
                                                  score(net.features), "-",
                                                  "ResNet-18, random weights"), flush=True)
    wanted = set(filter(None, args.only.split(",")))
    for name, options in ATTEMPTS:
        if wanted and name not in wanted:
            continue
        for seed in seeds:
            out = os.path.join(args.output_root, "%s-%d" % (name, seed))
            found = [d for d, _, f in os.walk(out) if "metrics.json" in f]
            if not found:
                proc = subprocess.run([sys.executable, "-m", "dml", "train", "--split", "unseen",
                                       "--seed", str(seed), "--output-root", out]
                                      + options.split(), capture_output=True, text=True)
                if proc.returncode:
                    print("%-22s %5d failed: %s" % (name, seed, (proc.stderr.strip().splitlines()
                                                               or [""])[-1]), flush=True)
                    continue
                found = [d for d, _, f in os.walk(out) if "metrics.json" in f]
            metrics = json.load(open(os.path.join(found[0], "metrics.json")))
            run = load_run(found[0])
            pooled = score(getattr(run.net, "features", run.net), run.config.distance)
            print("%-22s %5d %10.4f %9.4f %8s  %s" % (name, seed, metrics["map_at_r"], pooled,
                                                      metrics["epochs"], options or "(defaults)"),
                  flush=True)


if __name__ == "__main__":
    main()
