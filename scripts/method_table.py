"""Train every method (and selector) with its defaults on a dataset and print one table of the
test metrics and training time: the numbers in the README's method table.

    python scripts/method_table.py                      # every method on digits, seed 0
    python scripts/method_table.py --methods siamese,triplet --seeds 0,1 -- --epochs 5

Arguments after ``--`` go to every ``dml train``. Each run is a separate process, one after the
other (they would compete for the cores otherwise); run folders go under --output-root.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

RUNS = [("siamese", None), ("triplet", None), ("triplet_semihard", None),
        ("triplet_batch_hard", None), ("triplet_batch_all", None),
        ("online_contrastive", "hard_negative"), ("online_contrastive", "all_positive"),
        ("online_triplet", "semihard"), ("online_triplet", "hardest"),
        ("online_triplet", "random_hard"), ("online_triplet", "all"), ("softmax", None)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--output-root", default=None, help="default: a temporary folder")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for dml train")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    wanted = set(filter(None, args.methods.split(",")))
    runs = [r for r in RUNS if not wanted or r[0] in wanted]
    root = args.output_root or tempfile.mkdtemp(prefix="dml-methods-")
    header = "%-19s %-13s %4s %14s %11s %9s %8s" % ("method", "selector", "seed", "precision_at_1",
                                                   "r_precision", "map_at_r", "train_s")
    rows = []
    for method, selector in runs:
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = os.path.join(root, "%s-%s-%d" % (method, selector or "default", seed))
            cmd = [sys.executable, "-m", "dml", "train", "--method", method, "--dataset",
                   args.dataset, "--seed", str(seed), "--output-root", out] + extra
            if selector:
                cmd += ["--selector", selector]
            started = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append("%-19s %-13s %4d  failed (exit %d): %s" % (
                    method, selector or "-", seed, proc.returncode,
                    (proc.stderr.strip().splitlines() or [""])[-1]))
            else:
                run = proc.stdout.split("run folder:")[1].split()[0]
                m = json.load(open(os.path.join(run, "metrics.json")))
                rows.append("%-19s %-13s %4d %14.4f %11.4f %9.4f %8.0f" % (
                    method, selector or "-", seed, m["precision_at_1"], m["r_precision"],
                    m["map_at_r"], m["train_seconds"]))
            print(rows[-1], "(%.0f s wall)" % (time.time() - started), file=sys.stderr, flush=True)
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
