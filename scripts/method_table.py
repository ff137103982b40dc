"""Train every method (and selector) with its defaults on a dataset and print one table of the
test metrics and training time: the numbers in the README's method table.

    python scripts/method_table.py                      # every method on digits, seed 0
    python scripts/method_table.py --methods siamese,triplet --seeds 0,1 -- --epochs 5
    python scripts/method_table.py --seeds 0,1 -- --split unseen   # the unseen-digits table
    python scripts/method_table.py --output-root R --collect --plot doc/methods_digits.png

Arguments after ``--`` go to every ``dml train``. Each run is a separate process, one after the
other (they would compete for the cores otherwise); run folders go under --output-root. With
several seeds a second table follows, one row per method: each metric's mean over the seeds with
its 95% confidence interval, grouped as ``dml compare`` groups runs (``dml.compare``).
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dml.registry import METHOD_SELECTORS, METHODS  # noqa: E402  (no MXNet import)

# every method, once per --selector where it takes one
RUNS = [(m, s) for m in METHODS for s in METHOD_SELECTORS.get(m, (None,))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--methods", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--output-root", default=None, help="default: a temporary folder")
    parser.add_argument("--collect", action="store_true",
                        help="train nothing: tabulate the runs already under --output-root")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw precision_at_1 and map_at_r per method into PNG")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for dml train")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    wanted = set(filter(None, args.methods.split(",")))
    runs = [r for r in RUNS if not wanted or r[0] in wanted]
    root = args.output_root or tempfile.mkdtemp(prefix="dml-methods-")
    header = "%-19s %-13s %4s %14s %11s %9s %8s" % ("method", "selector", "seed", "precision_at_1",
                                                   "r_precision", "map_at_r", "train_s")
    rows, results = [], []
    for method, selector in runs:
        for seed in [int(s) for s in args.seeds.split(",")]:
            out = os.path.join(root, "%s-%s-%d" % (method, selector or "default", seed))
            cmd = [sys.executable, "-m", "dml", "train", "--method", method, "--dataset",
                   args.dataset, "--seed", str(seed), "--output-root", out] + extra
            if selector:
                cmd += ["--selector", selector]
            started = time.time()
            if args.collect:
                found = sorted(glob.glob(os.path.join(out, "*", method, "*", "metrics.json")))
                if not found:
                    continue
                run, error = os.path.dirname(found[-1]), None
            else:
                proc = subprocess.run(cmd, capture_output=True, text=True)
                run = proc.stdout.split("run folder:")[1].split()[0] if proc.returncode == 0 else None
                error = None if run else "failed (exit %d): %s" % (
                    proc.returncode, (proc.stderr.strip().splitlines() or [""])[-1])
            if error:
                rows.append("%-19s %-13s %4d  %s" % (method, selector or "-", seed, error))
            else:
                m = json.load(open(os.path.join(run, "metrics.json")))
                results.append((method if not selector else "%s\n%s" % (method, selector), m))
                rows.append("%-19s %-13s %4d %14.4f %11.4f %9.4f %8.0f" % (
                    method, selector or "-", seed, m["precision_at_1"], m["r_precision"],
                    m["map_at_r"], m["train_seconds"]))
            print(rows[-1], "(%.0f s wall)" % (time.time() - started), file=sys.stderr, flush=True)
    print(header)
    print("\n".join(rows))
    if len(args.seeds.split(",")) > 1:
        print()
        print(seed_table(root))
    if args.plot and results:
        plot(results, args.plot, args.dataset)


def seed_table(root):
    """The runs under ``root`` grouped over their seeds (``dml compare``'s grouping): method,
    number of runs, and mean +- 95% interval of precision_at_1, r_precision and map_at_r."""
    from dml.compare import compare_rows

    from dml.compare import confidence_interval, find_results

    keys = ("precision_at_1", "r_precision", "map_at_r")
    lines = ["%-36s %3s %19s %19s %19s" % (("method", "n") + keys)]

    def line(name, n, values):
        cells = []
        for key in keys:
            mean, half = values[key]
            cells.append("%.4f +- %.4f" % (mean, half) if half is not None else "%.4f" % mean)
        lines.append("%-36s %3d %19s %19s %19s" % (name, n, *cells))

    for row in compare_rows(root):
        line(row["method"], row["n"], {k: (row[k], row.get(k + "_ci95")) for k in keys})
    # the baselines every run recorded (dml.baselines): raw pixels of the evaluated split, and
    # the default method's network before training, over the seeds
    results = find_results(root)
    pixels = [m for _, m, _ in results if "pixels_map_at_r" in m]
    if pixels:
        line("raw pixels (32 x 32, cosine)", 1,
             {k: (pixels[0]["pixels_" + k], None) for k in keys})
    untrained = {c.get("seed"): m for _, m, c in results
                 if c.get("method") == "triplet_semihard" and "untrained_map_at_r" in m}
    if untrained:
        line("untrained network (triplet_semihard)", len(untrained),
             {k: confidence_interval([m["untrained_" + k] for m in untrained.values()])
              for k in keys})
    return "\n".join(lines)


def plot(results, path, dataset):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [name for name, _ in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(results)), 4))
    width = 0.4
    ax.bar([i - width / 2 for i in x], [m["precision_at_1"] for _, m in results], width,
           label="precision_at_1")
    ax.bar([i + width / 2 for i in x], [m["map_at_r"] for _, m in results], width, label="map_at_r")
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=7, rotation=30, ha="right")
    ax.set_ylim(0.5, 1.1)
    ax.axhline(0.8, color="grey", linewidth=0.8, linestyle="--")
    ax.set_title("%s test split, each method's defaults" % dataset)
    ax.legend(loc="upper right", ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
