"""``python -m dml <command>``: the command line. User errors are one line on stderr and exit 2."""
import argparse
import logging
import re
import os
import sys

from .errors import DmlError, WriteFailed, error_summary
from .registry import DATASETS, DISTANCES, METHODS
from .version import __version__
from .argtypes import Parser as _Parser
from .argtypes import check_omp_threads, whole
from .argtypes import finite_float as _finite_float

# (the registry imports no MXNet: OMP_NUM_THREADS is set before MXNet loads)
from .registry import (AUGMENTS, BENCHMARKS, KVSTORES, MARGIN_HEAD_METHODS,  # noqa: E402
                       MEMORY_METHODS, METHOD_MINERS, MINER_METHODS, MINERS, PROXY_METHODS,
                       LR_SCHEDULES, SPLITS, STEMS)
# what --resume lets change: the run's length and where it runs; everything else is the run's
RESUME_MAY_CHANGE = ("epochs", "gpus", "cpus", "kvstore", "num_workers", "data_root")

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


def build_parser():
    parser = _Parser(prog="dml", description="Deep metric learning on MXNet Gluon: train, "
                     "evaluate and compare embedding networks; embed, index and search images "
                     "with a trained run and export it to ONNX.")
    parser.add_argument("--version", action="version", version="dml " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser(
        "train", help="train an embedding network and evaluate it",
        description="Train an embedding network, log it to TensorBoard, checkpoint it and evaluate "
        "it on the test split. Writes <output-root>/<dataset>/<method>/<YYYYmmddHHMM>/ with logs/, "
        "params/, config.json and metrics.json. Options left out take the method's and dataset's "
        "defaults (see README).",
        formatter_class=_Formatter)
    train.set_defaults(func=cmd_train)
    g = train.add_argument_group("what to train")
    g.add_argument("--method", default=None, metavar="NAME",
                   help="one of %s (default triplet_semihard)" % ", ".join(METHODS))
    g.add_argument("--dataset", default=None, metavar="NAME",
                   help="one of %s (default digits)" % ", ".join(DATASETS))
    g.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest complete checkpoint, with its own "
                   "settings (config.json), into the same folder; --epochs may raise the epoch "
                   "count, and the device options (--gpus, --cpus, --kvstore, --num-workers) "
                   "may change")
    g.add_argument("--data-root", default=None, metavar="PATH",
                   help="where the dataset's files are (default: ~/.mxnet/datasets/<dataset>; "
                   "for folder: ROOT holding train/<class>/ and test/<class>/; for %s: the "
                   "folder of the official files, see README); stored as an absolute path. With "
                   "--resume: where the run's data is now, if it moved" % ", ".join(BENCHMARKS))
    g.add_argument("--split", choices=SPLITS, default=None,
                   help="test: train on the training split, evaluate on the test split (on the "
                   "benchmarks and class-disjoint folders: classes training never saw); unseen: "
                   "train on the first half of the classes, evaluate on the test images of the "
                   "other half (default test)")
    g.add_argument("--val-classes", type=_val_classes, default=None, metavar="N|FRACTION",
                   help="hold out N training classes (or this fraction of them; never test "
                   "classes) as validation: --eval-period and params/best/ select on them, and "
                   "the test split is scored once, at the end, with the selected weights "
                   "(implies --eval-period 1 unless given; default 0: no selection, the final "
                   "epoch is the model)")
    g.add_argument("--select-on-test", action="store_true", default=None,
                   help="let --eval-period select params/best/ on the test split itself "
                   "(test-set feedback: its metrics are then no longer those of unseen data)")
    g.add_argument("--image-size", type=_bounded_int(MIN_IMAGE_SIZE, MAX_IMAGE_SIZE), default=None,
                   help="side of the square network input for digits, folder and the "
                   "benchmarks (default 32; 224 for the benchmarks)")
    g.add_argument("--augment", choices=AUGMENTS, default=None,
                   help="training augmentation: crop (a random crop of the zero-padded image), "
                   "crop-flip (and a horizontal flip), resized-crop-flip (a random resized crop "
                   "of 8-100%% of the image, and a flip) or none. Default per dataset: crop for "
                   "digits and mnist (a mirrored digit is no digit), crop-flip for cifar, "
                   "fashion-mnist and folder, resized-crop-flip for the benchmarks")
    g.add_argument("--no-augment", dest="augment", action="store_const", const="none",
                   help="the same as --augment none")
    g = train.add_argument_group("network and loss")
    g.add_argument("--backbone", default=None,
                   help="GluonCV model-zoo name: resnet18_v1 (default), resnet50_v1 (the "
                   "benchmarks' default), googlenet, or another with a features block")
    g.add_argument("--stem", choices=("auto",) + STEMS, default=None,
                   help="the ResNet's first layers: imagenet (a 7 x 7 stride-2 convolution and a "
                   "max pool: the input shrinks 4x) or small (a 3 x 3 stride-1 convolution and "
                   "the max pool: 2x, about 2.3x the compute); auto: small for inputs of at most "
                   "64 px trained from random weights, imagenet otherwise (default: auto for "
                   "glyphs and folder, imagenet elsewhere)")
    g.add_argument("--pretrained", action="store_true", default=None,
                   help="start from GluonCV's ImageNet weights in ~/.mxnet/models, downloaded "
                   "once when missing (the benchmarks' default)")
    g.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="start from random weights")
    g.add_argument("--freeze-bn", action="store_true", default=None,
                   help="BatchNorm in inference mode: running statistics, scale and shift frozen "
                   "(the benchmarks' default, as their papers train a pretrained backbone)")
    g.add_argument("--no-freeze-bn", dest="freeze_bn", action="store_false",
                   help="train BatchNorm as usual")
    g.add_argument("--embedding-dim", type=_bounded_int(1, MAX_EMBEDDING_DIM), default=None,
                   help="default 128")
    g.add_argument("--l2-normalize", action="store_true", default=None,
                   help="L2-normalize the embedding (the default for triplet_semihard)")
    g.add_argument("--no-l2-normalize", dest="l2_normalize", action="store_false",
                   help="do not L2-normalize the embedding")
    g.add_argument("--margin", type=_positive_float, default=None,
                   help="loss margin (> 0); arcface, subcenter_arcface: angle m < pi/2 (0.5), "
                   "cosface: m < 1 (0.35), sphereface: integer m (4), circle: relaxation m < 1 "
                   "(0.4), lifted: neg_margin (1), margin: m (0.2), proxy_anchor: delta (0.1), "
                   "soft_triple: delta (0.01); multi_similarity, supcon, npairs, proxy_nca and "
                   "normalized_softmax have none")
    g.add_argument("--scale", type=_positive_float, default=None, metavar="S",
                   help="%s: the logit scale s (defaults in README)" % ", ".join(MARGIN_HEAD_METHODS))
    g.add_argument("--distance", choices=DISTANCES, default=None,
                   help="distance the loss and the evaluation use")
    g.add_argument("--miner", default=None, choices=MINERS,
                   help="the tuples the loss scores: multi_similarity (pairs, for %s; the "
                   "default of multi_similarity), distance_weighted (triplets, margin's "
                   "default) or none (every pair or triplet)"
                   % ", ".join(m for m in MINER_METHODS if "multi_similarity" in METHOD_MINERS[m]))
    g.add_argument("--memory-size", type=_bounded_int(0, MAX_MEMORY), default=None, metavar="M",
                   help="%s: a cross-batch memory (XBM) of the last M embeddings, which every "
                   "batch is also scored against (default 0: none; at least the batch)"
                   % ", ".join(MEMORY_METHODS))
    g.add_argument("--loss-lr-mult", type=_positive_float, default=None, metavar="M",
                   help="%s: the proxies learn M times faster than the network (default 100 "
                   "for proxy_anchor and soft_triple, as their papers; 1 for the others)"
                   % ", ".join(PROXY_METHODS))
    g.add_argument("--selector", default=None, metavar="NAME",
                   help="online_triplet: random_hard|all|hardest|semihard (default random_hard); "
                   "online_contrastive: hard_negative|all_positive (default hard_negative)")
    g = train.add_argument_group("optimization")
    g.add_argument("--epochs", type=_positive_int, default=None)
    g.add_argument("--n-classes", type=_bounded_int(1, MAX_BATCH_IMAGES), default=None,
                   help="classes per batch (balanced sampler of the online-mining methods)")
    g.add_argument("--n-samples", type=_bounded_int(1, MAX_BATCH_IMAGES), default=None,
                   help="images per class per batch (balanced sampler of the online-mining methods)")
    g.add_argument("--batch-size", type=_bounded_int(1, MAX_BATCH_IMAGES), default=None,
                   help="pairs (siamese), triplets (triplet) or images (softmax) per batch")
    g.add_argument("--optimizer", choices=("adam", "sgd"), default=None, help="default adam")
    g.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    g.add_argument("--wd", type=_non_negative_float, default=None, help="weight decay")
    g.add_argument("--lr-steps", type=_epoch_list, default=None, metavar="E1,E2",
                   help="epochs after which the learning rate is multiplied by --lr-factor")
    g.add_argument("--lr-factor", type=_positive_float, default=None)
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="step: --lr, times --lr-factor after each epoch of --lr-steps; cosine: "
                   "from --lr down to 0 over the run's batches, half a cosine wave (default per "
                   "dataset: cosine for folder and glyphs, step elsewhere)")
    g.add_argument("--seed", type=_seed, default=None, help="0 to 2^32-1 (default 0)")
    g = train.add_argument_group("devices and output")
    g.add_argument("--gpus", type=parse_gpus, default=None, metavar="0,1",
                   help="GPUs to train on (default: all GPUs mxnet sees, else the CPU)")
    g.add_argument("--cpus", type=_bounded_int(0, MAX_CONTEXTS), default=None,
                   help="N CPU contexts in one process (tests the multi-device path without GPUs)")
    g.add_argument("--num-workers", type=_non_negative_int, default=None,
                   help="data loading threads (0: load in the training thread)")
    g.add_argument("--kvstore", default=None, choices=KVSTORES,
                   help="how gradients are summed: over this process's devices (local: on the "
                   "CPU, device: on the GPUs), or over the workers of a job started by "
                   "scripts/launch.py (dist_sync, dist_device_sync, dist_async; default device)")
    g.add_argument("--save-period", type=_non_negative_int, default=None,
                   help="write a checkpoint (for --resume) every E epochs (0: at the end only; "
                   "default 1)")
    g.add_argument("--keep-checkpoints", type=_non_negative_int, default=None, metavar="N",
                   help="keep the newest N epoch checkpoints, delete older ones once the next is "
                   "complete (0: keep all; default 1)")
    g.add_argument("--eval-period", type=_non_negative_int, default=None,
                   help="every E epochs score the retrieval metrics of the validation classes "
                   "(--val-classes; or the test split with --select-on-test), log them and keep "
                   "the best map_at_r in params/best/ (0: at the end only)")
    g.add_argument("--output-root", default=None, help="where run folders go (default .)")

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
    _serving_parsers(sub)
    doctor = sub.add_parser(
        "doctor", help="check this machine: installed versions, usable GPUs, one training step",
        description="Print the Python, MXNet build (and its CUDA), numpy, numba, threads and every "
        "GPU nvidia-smi lists with its compute capability and whether this build can run it; then "
        "run one ResNet-18 + semi-hard-loss training step on the CPU and each usable GPU. Exit 1 "
        "when a step fails.", formatter_class=_Formatter)
    doctor.set_defaults(func=cmd_doctor)
    return parser


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


def _serving_parsers(sub):
    embed = sub.add_parser(
        "embed", help="embed images with a trained run",
        description="Embed images with a run's network and exactly its evaluation preprocessing. "
        "Writes OUT.npy (float32 N x D) and beside it OUT.csv (index, path, label).",
        formatter_class=_Formatter)
    embed.set_defaults(func=cmd_embed)
    _collection_arguments(embed, "inputs", "INPUT", "embed", "OUT.npy",
                          "the .npy file to write (and OUT.csv beside it)")
    _run_options(embed)

    index = sub.add_parser(
        "index", help="build a nearest-neighbour index of a gallery",
        description="Embed a gallery with a run's network and build a faiss index in the run's "
        "distance, in a new folder INDEX_DIR (index.faiss, items.csv, index.json with the run's "
        "identity: a search with another network is refused).", formatter_class=_Formatter)
    index.set_defaults(func=cmd_index)
    _collection_arguments(index, "gallery", "GALLERY", "index", "INDEX_DIR",
                          "the folder to create (it must not exist)")
    index.add_argument("--kind", choices=("exact", "ivf", "hnsw"), default="exact",
                       help="exact: every gallery image is compared (brute force results); ivf "
                       "or hnsw: approximate and faster on large galleries (doc/serving.md)")
    index.add_argument("--nlist", type=_positive_int, default=None,
                       help="ivf: the number of k-means cells (default about 4 sqrt(N))")
    _run_options(index)

    search = sub.add_parser(
        "search", help="find the nearest gallery images of query images",
        description="Embed the queries with the network that built INDEX_DIR and print each "
        "one's K nearest gallery images (rank, distance, label, path).",
        formatter_class=_Formatter)
    search.set_defaults(func=cmd_search)
    search.add_argument("index_dir", metavar="INDEX_DIR", help="a folder written by dml index")
    search.add_argument("queries", metavar="QUERY", nargs="+", help=INPUT_HELP)
    search.add_argument("-k", type=_positive_int, default=10, help="neighbours per query")
    search.add_argument("--out", default=None, metavar="OUT.csv",
                        help="also write the results (query, query_label, rank, path, label, "
                        "distance)")
    search.add_argument("--grid", default=None, metavar="OUT.png",
                        help="also draw each query and its neighbours, framed green (same label) "
                        "or red (another label) when labels are known")
    search.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="the run that built the index, if it moved (default: the one "
                        "index.json names); it must be the same network")
    search.add_argument("--checkpoint", default=None, metavar="last|best|PATH",
                        help="with --run: its checkpoint (default: the index's)")
    search.add_argument("--nprobe", type=_positive_int, default=None,
                        help="ivf: cells visited per query (more: better recall, slower)")
    search.add_argument("--ef", type=_positive_int, default=None,
                        help="hnsw: candidates kept per query (default max(64, k))")
    _run_options(search, checkpoint=False)

    export = sub.add_parser(
        "export", help="export a run's network to ONNX",
        description="Write the run's embedding network as ONNX (input 'data': float32 N x 3 x H "
        "x W with the run's normalization, recorded in the model's metadata; output "
        "'embedding'), with a dynamic batch axis. ONNX Runtime checks it against MXNet before "
        "the file is written.", formatter_class=_Formatter)
    export.set_defaults(func=cmd_export)
    export.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by dml train")
    export.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="the file to write")
    export.add_argument("--checkpoint", default=None, metavar="last|best|PATH",
                        help="which of the run's checkpoints to export (default: the one "
                        "training reported)")


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
    from .serve import collect

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


def cmd_embed(args):
    from .serve import check_writable, embed_items, load_run, write_embeddings

    if not args.out.lower().endswith(".npy"):
        raise DmlError("-o %s: name a .npy file" % args.out)
    check_writable(args.out)
    run = load_run(args.run_dir, args.checkpoint, _context(args))
    items = _inputs(args, run, args.inputs)
    embeddings, kept, problems = embed_items(run, items, args.batch_size, args.strict)
    csv_path = write_embeddings(args.out, embeddings, kept)
    _report_problems(problems, len(items))
    print("embedded %d images (%d dimensions) with %s" % (len(kept), embeddings.shape[1],
                                                          run.checkpoint))
    print("embeddings:  %s" % args.out)
    print("paths:       %s" % csv_path)
    return 0


def cmd_index(args):
    from .serve import build_index, check_new_folder, load_run

    check_new_folder(args.out)
    run = load_run(args.run_dir, args.checkpoint, _context(args))
    items = _inputs(args, run, args.gallery)
    gallery, problems = build_index(run, items, args.out, args.kind, args.nlist, args.strict)
    _report_problems(problems, len(items))
    print("indexed %d images (%s, %s distance, %d dimensions) with %s" % (
        gallery.index.count, args.kind, gallery.meta["distance"], gallery.index.dim,
        run.checkpoint))
    print("index:       %s" % args.out)
    print("search:      python -m dml search %s QUERY... -k 10" % args.out)
    return 0


def cmd_search(args):
    import csv
    import io

    from .serve import (check_writable, collect, open_index, result_rows, run_for_index,
                        save_text, search)
    from .runs import write_atomic

    for option, path, ext in (("--out", args.out, ".csv"), ("--grid", args.grid, ".png")):
        if path is not None:
            if not path.lower().endswith(ext):
                raise DmlError("%s %s: name a %s file" % (option, path, ext))
            check_writable(path)
    if args.checkpoint is not None and args.run is None:
        raise DmlError("--checkpoint applies with --run (the index names its own checkpoint)")
    gallery = open_index(args.index_dir)
    gallery.index.check_k(args.k)  # before the run loads
    run = run_for_index(gallery, args.run, args.checkpoint, _context(args))
    queries = collect(args.queries)
    kept, distances, indices, problems = search(run, gallery, queries, args.k, args.nprobe,
                                                args.ef, args.strict)
    _report_problems(problems, len(queries))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["query", "query_label", "rank", "path", "label", "distance"])
    for query, dist, idx in zip(kept, distances, indices):
        print("%s%s" % (query.source, " (label %s)" % query.label if query.label else ""))
        for rank, (d, i) in enumerate(zip(dist, idx), 1):
            if i < 0:
                continue
            item = gallery.items[i]
            print("  %3d  %-10.5g  %-12s  %s" % (rank, d, item.label or "-", item.source))
            writer.writerow([query.source, query.label, rank, item.source, item.label,
                             "%.6g" % d])
    if args.out:
        write_atomic(lambda tmp: save_text(tmp, text.getvalue()), args.out)
        print("results:     %s" % args.out)
    if args.grid:
        from .plots import neighbour_grid

        rows = result_rows(run, gallery, kept, distances, indices)
        neighbour_grid(rows, args.grid, title="%d nearest of %d gallery images (%s distance)"
                       % (args.k, gallery.index.count, gallery.meta["distance"]))
        print("grid:        %s" % args.grid)
    return 0


def cmd_export(args):
    from .export import export_onnx
    from .serve import check_writable, load_run

    if not args.onnx.lower().endswith(".onnx"):
        raise DmlError("--onnx %s: name a .onnx file" % args.onnx)
    check_writable(args.onnx)
    import importlib.util

    for module, pin in (("onnx", "onnx==1.14.1"), ("onnxruntime", "onnxruntime==1.16.3")):
        if importlib.util.find_spec(module) is None:
            raise DmlError("%s is not installed: run make install (it installs %s)"
                           % (module, pin))
    run = load_run(args.run_dir, args.checkpoint)
    path, diff = export_onnx(run, args.onnx)
    height, width = run.input_size
    print("exported %s to %s (input data: N x 3 x %d x %d float32, output embedding: N x %d)"
          % (run.checkpoint, path, height, width, run.config.embedding_dim))
    print("ONNX Runtime vs MXNet: max abs difference %.2g" % diff)
    return 0


def cmd_doctor(args):
    from .doctor import environment, smoke_test, usable_contexts

    rows = environment()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print("%-*s  %s" % (width, key, value))
    failed = 0
    for ctx in usable_contexts():
        try:
            seconds = smoke_test(ctx)
            print("%-*s  ok: one ResNet-18 + semi-hard training step in %.2f s"
                  % (width, "step on %s" % ctx, seconds))
        except Exception as err:  # pylint: disable=broad-except
            failed += 1
            print("%-*s  FAILED: %s" % (width, "step on %s" % ctx, error_summary(err)))
    return 1 if failed else 0


def config_from_args(args):
    from .config import RunConfig, defaults_for, validate

    if args.resume is not None:
        return resume_config(args)
    args.method = args.method or "triplet_semihard"
    args.dataset = args.dataset or "digits"
    if args.method not in METHODS:
        raise DmlError("unknown method %r: choose one of %s" % (args.method, ", ".join(METHODS)))
    if args.dataset not in DATASETS:
        raise DmlError("unknown dataset %r: choose one of %s" % (args.dataset, ", ".join(DATASETS)))
    from .methods import get_method

    method = get_method(args.method)
    if args.selector is not None and not method.selectors:
        raise DmlError("--selector applies to online_triplet and online_contrastive, not %s"
                       % args.method)
    if args.selector is not None and args.selector not in method.selectors:
        raise DmlError("unknown selector %r for %s: choose one of %s"
                       % (args.selector, args.method, ", ".join(method.selectors)))
    if method.pk_batches and args.batch_size is not None:
        raise DmlError("%s batches --n-classes x --n-samples images; --batch-size applies to "
                       "siamese, triplet and softmax" % args.method)
    if not method.pk_batches and (args.n_classes is not None or args.n_samples is not None):
        raise DmlError("%s takes --batch-size; --n-classes and --n-samples apply to the "
                       "online-mining methods" % args.method)
    if args.scale is not None and not method.scaled:
        raise DmlError("--scale applies to %s, not %s" % (", ".join(MARGIN_HEAD_METHODS),
                                                           args.method))
    if args.miner is not None and args.method not in MINER_METHODS:
        raise DmlError("--miner applies to %s, not %s" % (", ".join(MINER_METHODS), args.method))
    if args.miner is not None and args.miner not in METHOD_MINERS[args.method]:
        raise DmlError("--miner %s does not apply to %s: choose %s" % (
            args.miner, args.method, " or ".join(METHOD_MINERS[args.method])))
    if args.loss_lr_mult is not None and args.method not in PROXY_METHODS:
        raise DmlError("--loss-lr-mult applies to the proxy methods (%s), not %s"
                       % (", ".join(PROXY_METHODS), args.method))
    _absolute_data_root(args)
    values = defaults_for(args.method, args.dataset)
    if args.margin is not None and values["margin"] is None:
        from .registry import LOSS_PARAMETERS

        raise DmlError("--margin does not apply to %s: its loss has no margin (%s)"
                       % (args.method, LOSS_PARAMETERS[args.method]))
    for key in values:
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    if args.val_classes and args.eval_period is None:
        values["eval_period"] = 1  # validation classes are there to select on
    from .config import resolve_stem

    values["stem"] = resolve_stem(values.get("stem", "auto"), values["image_size"],
                                  values["pretrained"], values["backbone"])
    if args.gpus is None:
        values["gpus"] = _all_gpus()
    cfg = RunConfig.from_dict(values)
    validate(cfg)
    return cfg


def resume_config(args):
    """The stored config of ``--resume RUN_DIR`` with the options that may change; any other
    option given must agree with the run's."""
    from .config import RunConfig, validate
    from .runs import RunDir

    run_dir = args.resume
    if not os.path.isdir(run_dir):
        raise DmlError("--resume %s: no such run folder" % run_dir)
    _absolute_data_root(args)
    stored = RunDir(run_dir).read(RunDir.CONFIG)
    cfg = RunConfig.from_dict(stored)
    stored = cfg.to_dict()
    for key, value in vars(args).items():
        if key not in stored or value is None:
            continue
        if key in RESUME_MAY_CHANGE:
            setattr(cfg, key, value)
        elif key == "method" and value != stored[key]:
            raise DmlError("--resume %s is a %s run, not %s" % (run_dir, stored[key], value))
        elif value != stored[key]:
            raise DmlError("--resume %s: the run has --%s %s; a resumed run keeps its settings "
                           "(only %s may change)" % (
                               run_dir, key.replace("_", "-"), _shown(stored[key]),
                               ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)))
    if args.cpus is not None and args.gpus is None:
        cfg.gpus = []
    if args.gpus is not None and args.cpus is None:
        cfg.cpus = 0
    validate(cfg)
    return cfg


def _allocation_failure(err):
    """MXNet's way of saying it ran out of memory (an MXNetError, not a MemoryError)."""
    text = str(err).lower()
    return type(err).__name__ == "MXNetError" and any(
        word in text for word in ("failed to allocate", "bad_alloc", "out of memory"))


def _absolute_data_root(args):
    """``--data-root`` as an absolute path, so that evaluate and --resume find the data from any
    folder."""
    if getattr(args, "data_root", None):
        args.data_root = os.path.abspath(os.path.expanduser(args.data_root))


def _shown(value):
    if value is None:
        return "unset (none)"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    return str(value)


def _all_gpus():
    """Every GPU mxnet sees that the installed build can run (the others with a warning)."""
    import mxnet as mx

    from .gpus import usable_gpus

    return usable_gpus(mx.context.num_gpus())


def _check_gpus(gpus):
    from .gpus import check_gpus

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
    from .evaluation import METRIC_KEYS

    return [k for k in METRIC_KEYS + ("verification_auc",) if k in metrics]


def cmd_train(args):
    cfg = config_from_args(args)  # the MXNet imports below stay lazy: OMP_NUM_THREADS is set first
    import signal

    from .engine import NonFiniteLoss, TrainingInterrupted, prepare, run

    _check_gpus(cfg.gpus)
    # Everything that can be wrong with the input fails here, before the run folder exists.
    job = prepare(cfg, resume_dir=args.resume, fit_classes=args.n_classes is None)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[log]):
            metrics = run(cfg, job, argv=sys.argv[1:])
    except TrainingInterrupted as stop:
        what = "interrupted" if stop.signum == signal.SIGINT else "stopped by SIGTERM"
        if stop.at_once:
            what += " a second time, at once"
            if job.workers.writes and job.run_dir is not None:
                job.run_dir.remove_partial_files()  # a write the signal cut short
        if not job.workers.writes:  # a worker other than rank 0, which writes the checkpoints
            sys.stderr.write("dml train: %s (worker %d)\n" % (what, job.workers.rank))
        elif stop.checkpoint is None:
            sys.stderr.write("dml train: %s; no checkpoint had been written yet\n" % what)
        elif stop.at_once:
            sys.stderr.write("dml train: %s; the last complete checkpoint, %s, is kept: continue "
                             "with python -m dml train --resume %s\n"
                             % (what, stop.checkpoint, job.run_dir))
        else:
            sys.stderr.write("dml train: %s; checkpoint %s written: continue with python -m dml "
                             "train --resume %s\n" % (what, stop.checkpoint, job.run_dir))
        return 128 + int(stop.signum)  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports
    except NonFiniteLoss as err:
        kept = ("the last good checkpoint, %s, is kept: python -m dml train --resume %s continues "
                "from it" % (err.checkpoint, job.run_dir) if err.checkpoint
                else "no checkpoint had been written")
        sys.stderr.write("dml train: error: stopped: %s; %s\n" % (err, kept))
        return 1
    except Exception as err:  # pylint: disable=broad-except
        if not isinstance(err, (WriteFailed, MemoryError)) and not _allocation_failure(err):
            raise
        states = []
        if job.workers.writes and job.run_dir is not None:
            job.run_dir.remove_partial_files()
            states = job.run_dir.complete_checkpoints()
        kept = ("; checkpoint %s is complete: python -m dml train --resume %s continues from it"
                % (states[-1]["id"], job.run_dir) if states else "")
        if not isinstance(err, WriteFailed):
            err = ("out of memory (%s): lower --image-size, --embedding-dim, --memory-size or the "
                   "batch size" % (error_summary(err) if str(err) else "MemoryError"))
        sys.stderr.write("dml train: error: %s%s\n" % (err, kept))
        return 1
    if not job.workers.writes:
        log.info("worker %d of %d done; worker 0 writes %s", job.workers.rank, job.workers.count,
                 job.run_dir)
        return 0
    print(_metrics_table(metrics, _shown_metrics(metrics)))
    print("run folder:  %s" % job.run_dir)
    print("tensorboard: tensorboard --logdir %s" % job.run_dir.logs)
    return 0


def cmd_evaluate(args):
    _absolute_data_root(args)
    if args.query is not None or args.gallery is not None or args.out is not None:
        return _evaluate_folders(args)
    from .engine import evaluate_run

    gpus = None
    if args.gpus is not None:
        _check_gpus(args.gpus)
        gpus = args.gpus
    metrics, figures, run = evaluate_run(args.run_dir, args.checkpoint, args.split, gpus,
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
    from .runs import write_json
    from .serve import check_writable, evaluate_query_gallery, load_run

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
    metrics = evaluate_query_gallery(run, args.query, args.gallery)
    print(_metrics_table(metrics, _shown_metrics(metrics)))
    print("queries: %d, gallery: %d images" % (metrics["num_queries"], metrics["num_gallery"]))
    if args.out is not None:
        write_json(args.out, metrics)
        print("metrics:     %s" % args.out)
    return 0


def _verification_table(metrics):
    from .evaluation import VERIFICATION_FMRS, _fmr_key

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


def cmd_compare(args):
    from .compare import compare_rows, differing_options, find_results, format_table
    from .serve import check_writable

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
        from .plots import metrics_bars

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


_DEPENDENCIES = ("mxnet", "gluoncv", "mxboard", "numpy", "numba", "sklearn", "scipy", "PIL", "tqdm",
                 "matplotlib", "faiss", "onnx", "onnxruntime")


def as_flags(text, flags):
    """A library message in command-line words: the library names Python parameters
    (``data_root=/x``, `` `n_classes` ``); here they are the flags ``--data-root /x``,
    ``--n-classes``. Only names in ``flags`` (the parser's destinations) are changed."""
    def flag(name):
        return "-" + name if len(name) == 1 else "--" + name.replace("_", "-")  # -k

    text = re.sub(r"`([a-z][a-z_]*)`", lambda m: flag(m.group(1)) if m.group(1) in flags
                  else m.group(0), text)
    return re.sub(r"(?<![\w-])([a-z][a-z_]*)=(?=\S)", lambda m: flag(m.group(1)) + " "
                  if m.group(1) in flags else m.group(0), text)


def _destinations(parser):
    """The destinations of every option of ``parser`` and its subcommands, and the names of
    their long flags (``no_pretrained`` for ``--no-pretrained``)."""
    names = set()
    for action in parser._actions:  # pylint: disable=protected-access
        if action.option_strings:
            names.add(action.dest)
            names.update(o[2:].replace("-", "_") for o in action.option_strings
                         if o.startswith("--"))
        for choice in getattr(action, "choices", None) or {}:
            sub = action.choices[choice] if isinstance(action.choices, dict) else None
            if sub is not None:
                names |= _destinations(sub)
    return names


def _several_cpu_contexts(argv):
    """Whether ``argv`` asks ``dml train`` for two or more CPU contexts (``--cpus N``)."""
    argv = list(argv)
    if not argv or argv[0] != "train":
        return False
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--cpus=") else (
            argv[i + 1] if arg == "--cpus" and i + 1 < len(argv) else None)
        if value is not None and value.strip().isdigit() and int(value) > 1:
            return True
    return False


def main(argv=None):
    problem = check_omp_threads(os.environ, "dml")  # before MXNet (libgomp aborts on it)
    if problem:
        sys.stderr.write(problem)
        return 2
    # MXNet's OpenMP pool otherwise starts with one thread on some machines: use every core.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if _several_cpu_contexts(sys.argv[1:] if argv is None else argv) and \
            "mxnet" not in sys.modules:
        # SyncBatchNorm over CPU contexts needs MXNet's engine to run several threads per device,
        # read once, when MXNet loads (so only before it loads): see dml.engine.CPU_SYNC_NOTE
        os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "4")
    _setup_console_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DmlError as err:
        sys.stderr.write("dml %s: error: %s\n" % (args.command, as_flags(str(err),
                                                                      _destinations(parser))))
        return 2
    except WriteFailed as err:  # a full disk, a vanished folder: what was written before stays
        sys.stderr.write("dml %s: error: %s\n" % (args.command, err))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("dml %s: interrupted\n" % args.command)
        return 130
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _DEPENDENCIES:
            raise
        sys.stderr.write("dml %s: error: %s is not installed for %s: run make install in %s, then "
                         "use %s -m dml (or source .venv/bin/activate)\n" % (
                             args.command, err.name, sys.executable,
                             os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             os.path.join(".venv", "bin", "python")))
        return 2


if __name__ == "__main__":
    sys.exit(main())
