"""``dml evaluate RUN_DIR``: re-evaluate a run's checkpoint, or score a query folder against a gallery folder."""
import os

from ..errors import DmlError
from ..registry import SPLITS
from .common import (_absolute_data_root, _check_gpus, _Formatter, _metrics_table,
                     _shown_metrics, parse_gpus)



def add_parser(sub):
    """The ``evaluate`` subcommand's parser."""
    evaluate = sub.add_parser(
        "evaluate", help="re-evaluate a run folder's checkpoint",
        description="Load a run's config.json and a checkpoint, embed the split, compute every "
        "metric (retrieval, clustering, kNN; verification for siamese runs), rewrite metrics.json "
        "and add the projector embedding and the plots to the run's logs/ and plots/.",
        formatter_class=_Formatter)
    evaluate.set_defaults(func=cmd_evaluate)
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by dml train")
    evaluate.add_argument("--split", choices=SPLITS, default=None,
                          help="test: the test split, every class; unseen: the test images of "
                          "the classes the run did not train on (runs trained with --split "
                          "unseen). Default: the split the run trained with")
    evaluate.add_argument("--checkpoint", default=None, metavar="last|best|PATH",
                          help="last: params/net-<last epoch>.params; best: params/best/ (the "
                          "selected checkpoint); or a net-*.params or exported embedding-*.params "
                          "file (default: the one training reported, metrics.json's checkpoint)")
    evaluate.add_argument("--gpus", type=parse_gpus, default=None, metavar="0,1",
                          help="GPUs to embed on (default: all GPUs mxnet sees, else the CPU)")
    evaluate.add_argument("--data-root", default=None, metavar="PATH",
                          help="where the run's data is now, if it moved (default: the run's "
                          "--data-root, stored in config.json); it must hold the run's classes")

    evaluate.add_argument("--verification", action="store_true",
                          help="also report, over every pair of the evaluated split, the false "
                          "non-match rate at false match rates 1e-2 and 1e-3 and the distance "
                          "threshold of each (a pair closer than it is 'same class'), into "
                          "metrics.json")
    evaluate.add_argument("--query", default=None, metavar="DIR",
                          help="with --gallery: score retrieval of the images of DIR/<class>/ "
                          "against those of the gallery folder instead of the run's split "
                          "(printed, and written to --out; the run's metrics.json is left alone)")
    evaluate.add_argument("--gallery", default=None, metavar="DIR",
                          help="the gallery folder (DIR/<class>/<image>) of --query; both must "
                          "hold the same classes")
    evaluate.add_argument("--out", default=None, metavar="FILE.json",
                          help="with --query/--gallery: also write the metrics to FILE.json")


def cmd_evaluate(args):
    _absolute_data_root(args)
    if args.query is not None or args.gallery is not None or args.out is not None:
        return _evaluate_folders(args)
    from ..train.job import reevaluate

    gpus = None
    if args.gpus is not None:
        _check_gpus(args.gpus)
        gpus = args.gpus
    metrics, figures, run = reevaluate(args.run_dir, args.checkpoint, args.split, gpus,
                                         args.data_root, verification=args.verification)
    print(_metrics_table(metrics, _shown_metrics(metrics)))
    if args.verification:
        print(_verification_table(metrics))
    print("metrics:     %s" % run.metrics_file)
    print("plots:       %s" % ", ".join(figures))
    print("tensorboard: tensorboard --logdir %s" % run.logs)
    return 0


def _evaluate_folders(args):
    """``dml evaluate RUN --query DIR --gallery DIR [--out FILE.json]``."""
    from ..runs import write_json
    from ..serve import check_writable, query_gallery_metrics, load_run

    if args.query is None or args.gallery is None:
        raise DmlError("--query and --gallery go together (--out only with them)")
    for option in ("split", "verification", "data_root"):
        if getattr(args, option):
            raise DmlError("--%s applies to the run's own dataset, not to --query/--gallery"
                           % option.replace("_", "-"))
    for option, folder in (("--query", args.query), ("--gallery", args.gallery)):
        if not os.path.isdir(folder):
            raise DmlError("%s %s: no such folder" % (option, folder))
    if args.out is not None:
        if not args.out.lower().endswith(".json"):
            raise DmlError("--out %s: name a .json file" % args.out)
        check_writable(args.out)
    gpus = args.gpus
    if gpus:
        _check_gpus(gpus[:1])
    import mxnet as mx

    run = load_run(args.run_dir, args.checkpoint, mx.gpu(gpus[0]) if gpus else mx.cpu())
    metrics = query_gallery_metrics(run, args.query, args.gallery)
    print(_metrics_table(metrics, _shown_metrics(metrics)))
    print("queries: %d, gallery: %d images" % (metrics["num_queries"], metrics["num_gallery"]))
    if args.out is not None:
        write_json(args.out, metrics)
        print("metrics:     %s" % args.out)
    return 0


def _verification_table(metrics):
    from ..evaluation import VERIFICATION_FMRS, _fmr_key

    lines = ["verification over %d genuine and %d impostor pairs (same class when the distance "
             "is below the threshold):" % (metrics["verification_genuine_pairs"],
                                             metrics["verification_impostor_pairs"]),
             "%-10s  %-10s  %s" % ("FMR", "FNMR", "threshold")]
    for fmr in VERIFICATION_FMRS:
        key = _fmr_key(fmr)
        if "fnmr_at_fmr_" + key in metrics:
            lines.append("%-10s  %-10.4f  %.6g" % (key, metrics["fnmr_at_fmr_" + key],
                                                  metrics["threshold_at_fmr_" + key]))
        else:
            lines.append("%-10s  left out: fewer than %d impostor pairs cannot resolve it"
                         % (key, round(1 / fmr)))
    return "\n".join(lines)
