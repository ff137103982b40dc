"""What the commands share: argparse types and bounds, the run and image options of the serving
commands, the device checks, the console log and the metrics table."""
import argparse
import logging
import sys

from ..argtypes import finite_float as _finite_float
from ..argtypes import whole
from ..errors import DmlError

log = logging.getLogger("dml")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when there is one (None means: the method's or dataset's default,
    which the help text states)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _positive_int(text):
    value = whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError("%r must be >= 1" % text)
    return value


def _non_negative_int(text):
    value = whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError("%r must be >= 0" % text)
    return value


def _bounded_int(low, high):
    """A whole number in [low, high]: sizes that would exhaust memory are refused up front."""
    def parse(text):
        value = _positive_int(text) if low >= 1 else _non_negative_int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError("%r must be between %d and %d" % (text, low, high))
        return value
    return parse


def _positive_float(text):
    value = _finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("%r must be > 0" % text)
    return value


def _non_negative_float(text):
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError("%r must be >= 0" % text)
    return value


def _seed(text):
    value = whole(text)
    if not 0 <= value < 2 ** 32:  # numpy's seed range
        raise argparse.ArgumentTypeError("%r must be between 0 and %d" % (text, 2 ** 32 - 1))
    return value


# Upper bounds of the sizes a user can type: beyond them a run would exhaust memory rather than
# train (a batch of 120 images of 1024 x 1024 is already 1.5 GB of float32 input).
MAX_IMAGE_SIZE = 1024


MIN_IMAGE_SIZE = 16  # ResNet's five stride-2 stages need at least this much input


MAX_EMBEDDING_DIM = 65536


MAX_BATCH_IMAGES = 65536


MAX_CONTEXTS = 256


MAX_MEMORY = 1 << 20  # a million 512-D embeddings: 2 GB of float32


def parse_gpus(text):
    """``"0,1"`` -> ``[0, 1]``; ``""`` -> ``[]``."""
    text = text.strip()
    if not text:
        return []
    try:
        gpus = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a comma-separated list of GPU numbers, e.g. --gpus 0,1" % text) from None
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise argparse.ArgumentTypeError(
            "%r: GPU numbers must be distinct and >= 0, e.g. --gpus 0,1" % text)
    return gpus


def _val_classes(text):
    """``--val-classes``: a whole number of classes, or a fraction of them in (0, 1)."""
    value = _finite_float(text)
    if value < 0 or (value >= 1 and value != int(value)):
        raise argparse.ArgumentTypeError("%r is neither a whole number of classes nor a fraction "
                                         "between 0 and 1" % text)
    return int(value) if value >= 1 else value


def _epoch_list(text):
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("%r is not a comma-separated list of epochs" % text) from None


def _run_options(parser, checkpoint=True):
    if checkpoint:
        parser.add_argument("--checkpoint", default=None, metavar="last|best|PATH",
                            help="which of the run's checkpoints embeds (as in dml evaluate; "
                            "default: the one training reported)")
    parser.add_argument("--gpu", type=_non_negative_int, default=None, metavar="N",
                        help="embed on GPU N (default the CPU)")
    parser.add_argument("--batch-size", type=_bounded_int(1, MAX_BATCH_IMAGES), default=256,
                        help="images per forward pass")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (exit 2) on the first file that is not a decodable image, "
                        "instead of skipping it with a warning")


INPUT_HELP = ("a folder (searched recursively; an image's label is its first folder level "
              "below it, when there is one), an image file, or a list file (.txt/.lst/.csv: one "
              "path per line, relative to the list file, optionally a tab or comma and a label)")


def _collection_arguments(parser, positional, metavar, verb, out_metavar, out_help):
    """RUN_DIR, the images (or ``--dataset``) and ``-o`` of ``dml embed`` and ``dml index``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by dml train")
    parser.add_argument(positional, metavar=metavar, nargs="*", help=INPUT_HELP)
    parser.add_argument("--dataset", choices=("train", "test", "gallery"), default=None,
                        dest="dataset_split",
                        help="%s this split of the run's own dataset instead of %s (test: "
                        "In-Shop's queries; gallery: its gallery)"
                        % (verb, metavar))
    parser.add_argument("-o", "--out", required=True, metavar=out_metavar, help=out_help)


def _context(args):
    import mxnet as mx

    if args.gpu is None:
        return mx.cpu()
    _check_gpus([args.gpu])
    seen = mx.context.num_gpus()
    if args.gpu >= seen:
        raise DmlError("--gpu %d: this machine's mxnet sees %d GPU(s)%s: drop --gpu to use the CPU"
                       % (args.gpu, seen, " (CPU-only build or no GPU)" if seen == 0 else ""))
    return mx.gpu(args.gpu)


def _inputs(args, run, inputs):
    from ..serve import collect

    if args.dataset_split is not None and inputs:
        raise DmlError("give images or --dataset, not both")
    if args.dataset_split is None and not inputs:
        raise DmlError("give the images (a folder, image files or a list file) or --dataset "
                       "train|test")
    return collect(inputs, run=run, dataset_split=args.dataset_split)


def _report_problems(problems, total):
    if problems:
        log.warning("%d of %d images could not be decoded and were skipped (see the warnings "
                    "above; --strict refuses them)", len(problems), total)


def _absolute_data_root(args):
    """``--data-root`` as an absolute path (:func:`dml.config.absolute_data_root`), so that
    evaluate finds the data from any folder."""
    from ..config import absolute_data_root

    args.data_root = absolute_data_root(getattr(args, "data_root", None))


def _all_gpus():
    """Every GPU mxnet sees that the installed build can run (the others with a warning)."""
    import mxnet as mx

    from ..gpus import usable_gpus

    return usable_gpus(mx.context.num_gpus())


def _check_gpus(gpus):
    from ..gpus import check_gpus

    check_gpus(gpus)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (it may be replaced after set-up, e.g. by tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _setup_console_logging():
    logger = logging.getLogger("dml")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _metrics_table(metrics, keys):
    """The metrics, one a line; with the run's baselines (dml.baselines) beside the retrieval
    metrics: the untrained network's and raw pixels' values."""
    width = max(len(k) for k in keys)
    columns = [(prefix, title) for prefix, title in (("untrained_", "untrained"),
                                                      ("pixels_", "raw pixels"))
               if any(prefix + k in metrics for k in keys)]

    def cell(value):
        return "%.4f" % value if isinstance(value, float) else str(value)

    lines = ["%-*s  %-9s" % (width, "metric", "value") + "".join(
        "  %-10s" % title for _, title in columns)]
    for key in keys:
        lines.append(("%-*s  %-9s" % (width, key, cell(metrics[key])) + "".join(
            "  %-10s" % (cell(metrics[prefix + key]) if prefix + key in metrics else "")
            for prefix, _ in columns)).rstrip())
    return "\n".join(lines)


def _shown_metrics(metrics):
    from ..evaluation import METRIC_KEYS

    return [k for k in METRIC_KEYS + ("verification_auc",) if k in metrics]
