"""``dml compare ROOT``: every run under a folder, seeds grouped, best first."""
import os

from ..errors import DmlError
from .common import _Formatter, log



def add_parser(sub):
    """The ``compare`` subcommand's parser."""
    compare = sub.add_parser(
        "compare", help="tabulate every run under a folder, seeds grouped",
        description="One row per experiment found under ROOT, best map_at_r first: runs that "
        "differ only in --seed (and in where or on what devices they ran) are grouped, and each "
        "metric is their mean with a 95% confidence interval (Student's t) and the count. "
        "Columns: the first run, method, dataset, split, epochs, the seeds, the options that "
        "tell two experiments of one method apart, every metric, training time.",
        formatter_class=_Formatter)
    compare.set_defaults(func=cmd_compare)
    compare.add_argument("root", metavar="ROOT", help="a folder holding run folders, at any depth")
    compare.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    compare.add_argument("--plot", default=None, metavar="OUT.png",
                         help="also draw a grouped bar chart of the metrics, one bar per row "
                         "(with its 95%% interval)")
    compare.add_argument("--runs", action="store_true",
                         help="one row per run instead of per experiment (no grouping)")


def cmd_compare(args):
    from ..compare import compare_rows, differing_options, find_results, format_table
    from ..serve import check_writable

    if not os.path.isdir(args.root):
        raise DmlError("no folder at %s" % args.root)
    if args.plot is not None:
        if not args.plot.lower().endswith(".png"):
            raise DmlError("--plot %s: name a .png file" % args.plot)
        check_writable(args.plot)
    results = find_results(args.root)  # read once: one warning per unreadable run
    rows = compare_rows(args.root, group=not args.runs, results=results)
    if not rows:
        raise DmlError("no finished runs under %s (a run folder holds metrics.json and "
                       "config.json)" % args.root)
    differing = differing_options(args.root, results=results)
    table, metric_keys = format_table(rows, args.format, differing)
    print(table)
    if args.plot:
        from ..plots import metrics_bars

        try:
            if args.runs:
                labels = ["%s %s" % (r["method"], os.path.basename(r["run"])) for r in rows]
            else:  # an experiment: its method, what sets it apart, its runs
                labels = [" ".join(part for part in (r["method"], differing.get(r["run"], ""),
                                                    "(n=%d)" % r["n"]) if part) for r in rows]
            if len(set(labels)) < len(labels):  # the same method and time stamp twice: full paths
                labels = [r["run"] for r in rows]
            metrics_bars([dict(r, label=l) for r, l in zip(rows, labels)], metric_keys, args.plot,
                         label_key="label",
                         title="%d %s under %s" % (len(rows), "runs" if args.runs else
                                                   "experiments (mean, 95% interval)",
                                                   os.path.basename(os.path.normpath(args.root))
                                                   or args.root))
        except OSError as err:
            raise DmlError("cannot write --plot %s (%s)" % (args.plot, err.strerror or err)) from None
        log.info("bar chart: %s", args.plot)
    return 0
