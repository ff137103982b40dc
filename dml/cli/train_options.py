"""``dml train``'s options: what to train, the network and loss, the optimization, the devices and the output. Each option's default is None: the method's or dataset's default (dml.registry), stated in its help."""
from ..registry import (AUGMENTS, BENCHMARKS, DATASETS, DISTANCES, KVSTORES,
                        MARGIN_HEAD_METHODS, MEMORY_METHODS, METHOD_MINERS, METHODS,
                        MINER_METHODS, MINERS, PROXY_METHODS, LR_SCHEDULES, SPLITS, STEMS)
from .common import (MAX_BATCH_IMAGES, MAX_CONTEXTS, MAX_EMBEDDING_DIM, MAX_IMAGE_SIZE,
                     MAX_MEMORY, MIN_IMAGE_SIZE, _bounded_int, _epoch_list, _Formatter,
                     _non_negative_float, _non_negative_int, _positive_float, _positive_int,
                     _seed, _val_classes, parse_gpus)



def add_parser(sub, cmd_train):
    """The ``train`` subcommand's parser, running ``cmd_train``."""
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
    return train
