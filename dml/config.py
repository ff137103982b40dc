"""One :class:`RunConfig` per run, saved as ``config.json``, and the defaults of each method."""
import dataclasses
from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class RunConfig:
    method: str = "triplet_semihard"
    dataset: str = "digits"
    data_root: Optional[str] = None
    split: str = "test"
    output_root: str = "."
    epochs: int = 10
    n_classes: int = 10
    n_samples: int = 12
    batch_size: int = 0
    selector: Optional[str] = None
    embedding_dim: int = 128
    l2_normalize: bool = False
    margin: Optional[float] = 1.0  # None: the method's loss has no margin
    scale: float = 0.0  # s of the margin-softmax heads (arcface, cosface, sphereface)
    distance: str = "euclidean"
    miner: Optional[str] = None  # the pair losses of registry.MINER_METHODS
    memory_size: int = 0  # cross-batch memory of registry.MEMORY_METHODS (0: none)
    loss_lr_mult: float = 1.0  # the learning-rate multiplier of a loss's own parameters (proxies)
    optimizer: str = "adam"
    lr: float = 1e-3
    wd: float = 0.0
    momentum: float = 0.9
    lr_steps: List[int] = field(default_factory=list)
    lr_factor: float = 0.1
    # "step": lr, times lr_factor after each epoch of lr_steps; "cosine": from lr down to 0 over
    # every batch of the run, half a cosine wave (Loshchilov and Hutter's SGDR, one cycle)
    lr_schedule: str = "step"
    backbone: str = "resnet18_v1"
    # the ResNet's first layers: "imagenet" (7 x 7 stride 2, max pool) or "small" (3 x 3 stride
    # 1, max pool); "auto" (the default of glyphs and folders) resolves to one of them from the
    # input size (resolve_stem). Runs from before the option had ImageNet's.
    stem: str = "imagenet"
    pretrained: bool = False
    freeze_bn: bool = False  # BatchNorm in inference mode: running statistics, gamma/beta fixed
    image_size: int = 32
    augment: str = "crop"  # one of registry.AUGMENTS (each dataset has its default)
    val_classes: float = 0  # training classes held out for model selection: a count or fraction
    select_on_test: bool = False  # eval_period selects params/best/ on the test split (feedback)
    gpus: List[int] = field(default_factory=list)
    cpus: int = 0
    kvstore: str = "device"
    num_workers: int = 2
    seed: int = 0
    save_period: int = 1
    keep_checkpoints: int = 1
    eval_period: int = 0
    log_interval: int = 10
    projector_points: int = 2000
    eval_batch_size: int = 256

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if isinstance(values.get("augment"), bool):  # config.json before --augment NAME
            values["augment"] = (DATASET_DEFAULTS.get(values.get("dataset"), {}).get(
                "augment", "crop") if values["augment"] else "none")
        if "select_on_test" not in data and data.get("eval_period"):
            values["select_on_test"] = True  # what --eval-period did before validation classes
        return cls(**values)


from .registry import (DATASET_DEFAULTS, METHOD_DATASET_DEFAULTS, METHOD_DEFAULTS,  # noqa: E402
                       METHOD_FIXED_DEFAULTS)


def defaults_for(method, dataset):
    values = RunConfig().to_dict()
    values.update(METHOD_DEFAULTS.get(method, {}))
    dataset_values = dict(DATASET_DEFAULTS.get(dataset, {}))
    if values["batch_size"]:  # not a P x K method: the dataset's batch shape does not apply
        dataset_values.pop("n_classes", None)
        dataset_values.pop("n_samples", None)
    values.update(dataset_values)
    values.update(METHOD_FIXED_DEFAULTS.get(method, {}))
    values.update(METHOD_DATASET_DEFAULTS.get((method, dataset), {}))
    return values


def check_workers(cfg, splits, workers):
    """The checks that need the job's number of ``workers`` (kvstore ranks): every worker's
    cross-batch memory holds every worker's batch, and every worker needs a batch of images."""
    from .errors import DmlError

    per_batch = cfg.n_classes * cfg.n_samples * workers
    if cfg.memory_size and cfg.memory_size < per_batch:
        raise DmlError("memory_size=%d is smaller than the %d workers' batches (%d images): every "
                       "worker's memory holds every worker's batch" % (
                           cfg.memory_size, workers, per_batch))
    if workers > 1 and cfg.batch_size == 0 and per_batch > len(splits.train):
        raise DmlError("%d workers need %d training images for a batch each; %s has %d"
                       % (workers, per_batch, cfg.dataset, len(splits.train)))


# What resuming a run lets change: its length and where it runs; everything else is the run's.
RESUME_MAY_CHANGE = ("epochs", "gpus", "cpus", "kvstore", "num_workers", "data_root")


def _shown(value):
    if value is None:
        return "unset (none)"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "''"
    return str(value)


def absolute_data_root(data_root):
    """``data_root`` as an absolute path (None stays None), so that a run's data is found from
    any folder (evaluate, resume)."""
    import os

    return os.path.abspath(os.path.expanduser(data_root)) if data_root else data_root


def from_options(options, default_gpus=None):
    """The checked :class:`RunConfig` of a new run from the options a user gave (``options``:
    RunConfig field names; a value of None or a missing key takes the method's and dataset's
    default). An option the method does not take is a :class:`dml.DmlError` naming it;
    ``default_gpus()``: the GPUs when ``gpus`` is not given (None: none). This is where the
    CLI's ``dml train`` options are checked: it only parses them and shows the parameter names
    as flags."""
    from .errors import DmlError
    from .methods import get_method
    from .registry import (DATASETS, LOSS_PARAMETERS, MARGIN_HEAD_METHODS, METHOD_MINERS,
                           MINER_METHODS, PROXY_METHODS)

    given = {k: v for k, v in options.items() if v is not None}
    method_name = given.get("method") or "triplet_semihard"
    dataset = given.get("dataset") or "digits"
    try:
        method = get_method(method_name)  # an unknown name lists the valid ones
    except ValueError as err:
        raise DmlError(str(err)) from None
    if dataset not in DATASETS:
        raise DmlError("unknown dataset %r: choose one of %s" % (dataset, ", ".join(DATASETS)))
    if "selector" in given and not method.selectors:
        raise DmlError("`selector` applies to online_triplet and online_contrastive, not %s"
                       % method_name)
    if "selector" in given and given["selector"] not in method.selectors:
        raise DmlError("unknown selector %r for %s: choose one of %s"
                       % (given["selector"], method_name, ", ".join(method.selectors)))
    if method.pk_batches and "batch_size" in given:
        raise DmlError("%s batches `n_classes` x `n_samples` images; `batch_size` applies to "
                       "siamese, triplet and softmax" % method_name)
    if not method.pk_batches and ("n_classes" in given or "n_samples" in given):
        raise DmlError("%s takes `batch_size`; `n_classes` and `n_samples` apply to the "
                       "online-mining methods" % method_name)
    if "scale" in given and not method.scaled:
        raise DmlError("`scale` applies to %s, not %s" % (", ".join(MARGIN_HEAD_METHODS),
                                                         method_name))
    if "miner" in given and method_name not in MINER_METHODS:
        raise DmlError("`miner` applies to %s, not %s" % (", ".join(MINER_METHODS), method_name))
    if "miner" in given and given["miner"] not in METHOD_MINERS[method_name]:
        raise DmlError("miner=%s does not apply to %s: choose %s" % (
            given["miner"], method_name, " or ".join(METHOD_MINERS[method_name])))
    if "loss_lr_mult" in given and method_name not in PROXY_METHODS:
        raise DmlError("`loss_lr_mult` applies to the proxy methods (%s), not %s"
                       % (", ".join(PROXY_METHODS), method_name))
    values = defaults_for(method_name, dataset)
    if "margin" in given and values["margin"] is None:
        raise DmlError("`margin` does not apply to %s: its loss has no margin (%s)"
                       % (method_name, LOSS_PARAMETERS[method_name]))
    values.update({k: v for k, v in given.items() if k in values})
    values.update(method=method_name, dataset=dataset,
                  data_root=absolute_data_root(values.get("data_root")))
    if given.get("val_classes") and "eval_period" not in given:
        values["eval_period"] = 1  # validation classes are there to select on
    values["stem"] = resolve_stem(values.get("stem", "auto"), values["image_size"],
                                  values["pretrained"], values["backbone"])
    if "gpus" not in given:
        values["gpus"] = list(default_gpus()) if default_gpus else []
    cfg = RunConfig.from_dict(values)
    validate(cfg)
    return cfg


def resumed(run_dir, options):
    """The checked :class:`RunConfig` of resuming ``run_dir``: its stored config.json with the
    options of :data:`RESUME_MAY_CHANGE` given in ``options``; any other option given must
    agree with the run's (a :class:`dml.DmlError` naming it otherwise)."""
    import os

    from .errors import DmlError
    from .runs import RunDir

    if not os.path.isdir(run_dir):
        raise DmlError("resume=%s: no such run folder" % run_dir)
    given = {k: v for k, v in options.items() if v is not None and k != "resume"}
    if "data_root" in given:
        given["data_root"] = absolute_data_root(given["data_root"])
    stored = RunConfig.from_dict(RunDir(run_dir).read(RunDir.CONFIG)).to_dict()
    values = dict(stored)
    for key, value in given.items():
        if key not in stored:
            continue
        if key in RESUME_MAY_CHANGE:
            values[key] = value
        elif key == "method" and value != stored[key]:
            raise DmlError("resume=%s is a %s run, not %s" % (run_dir, stored[key], value))
        elif value != stored[key]:
            raise DmlError("resume=%s: the run has `%s` %s; a resumed run keeps its settings "
                           "(only %s may change)" % (
                               run_dir, key, _shown(stored[key]),
                               ", ".join("`%s`" % k for k in RESUME_MAY_CHANGE)))
    if "cpus" in given and "gpus" not in given:
        values["gpus"] = []
    if "gpus" in given and "cpus" not in given:
        values["cpus"] = 0
    cfg = RunConfig.from_dict(values)
    validate(cfg)
    return cfg


def _physical_memory():
    """Bytes of RAM (0 when the system does not say)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _check_scorable(splits):
    """Retrieval needs a query with a relevant reference: a class with two images of the test
    split (or of the validation classes), or a query class in the gallery. Checked before the run
    folder exists: otherwise the run trains, then fails without metrics."""
    import numpy as np

    from .errors import DmlError

    def has_pair(dataset):
        return len(dataset) and np.bincount(np.asarray(dataset.labels)).max() >= 2

    if splits.gallery is not None:
        if not set(np.unique(splits.test.labels)) & set(np.unique(splits.gallery.labels)):
            raise DmlError("no query class of %s has a gallery image: nothing can be retrieved"
                           % splits.name)
    elif not has_pair(splits.test):
        raise DmlError("every class of the %s split of %s has one image (or none): retrieval "
                       "needs a second image of a query's class; add images to the test classes"
                       % (splits.split, splits.name))
    if splits.val is not None and not has_pair(splits.val):
        raise DmlError("every validation class (`val_classes`) of %s has one image: model "
                       "selection needs two images of a class; hold out other classes or none"
                       % splits.name)


SMALL_STEM_MAX_SIDE = 64  # inputs up to this side get the small stem by default


def resolve_stem(stem, image_size, pretrained, backbone):
    """``stem`` with ``auto`` resolved: ``small`` for a ResNet trained from random weights on
    inputs of at most :data:`SMALL_STEM_MAX_SIDE` pixels, else ``imagenet`` (pretrained weights
    need their own first layer)."""
    if stem != "auto":
        return stem
    small = (not pretrained and image_size <= SMALL_STEM_MAX_SIDE
             and backbone.startswith("resnet"))
    return "small" if small else "imagenet"


def validate(cfg, splits=None):
    """The one place a :class:`RunConfig` is checked: every problem is a :class:`dml.DmlError`
    naming the parameters (the CLI shows them as flags). Without ``splits`` the settings alone
    (devices, kvstore, the method's margin and scale); with the loaded ``splits`` also whether the
    batches fit the training data."""
    from .errors import DmlError
    from .methods import get_method

    if cfg.gpus and cfg.cpus:
        raise DmlError("`gpus` and `cpus` exclude each other: pick one")
    from .registry import STEMS

    if cfg.stem not in STEMS:
        raise DmlError("stem=%s: choose one of %s" % (cfg.stem, ", ".join(STEMS)))
    if cfg.stem == "small" and cfg.pretrained:
        raise DmlError("stem=small replaces the first convolution, which `pretrained` weights "
                       "need: train the small stem from random weights, or use stem=imagenet")
    if cfg.stem == "small" and not cfg.backbone.startswith("resnet"):
        raise DmlError("stem=small applies to the ResNet backbones, not %s" % cfg.backbone)
    devices = len(cfg.gpus) or max(cfg.cpus, 1)
    per_batch = cfg.batch_size or cfg.n_classes * cfg.n_samples
    if devices > per_batch:  # every device needs at least one sample of each batch
        raise DmlError("%d devices (%s) but a batch holds only %d samples: every device needs at "
                       "least one; use fewer devices or a larger batch"
                       % (devices, "`gpus`" if cfg.gpus else "`cpus`", per_batch))
    if cfg.eval_period and not (cfg.val_classes or cfg.select_on_test):
        raise DmlError("eval_period=%d selects params/best/ and needs a split to select on: hold "
                       "out training classes with `val_classes` (a count, or a fraction such as "
                       "0.2), or pass `select_on_test` to select on the test split (test-set "
                       "feedback: the test metrics are then no longer unseen)" % cfg.eval_period)
    if cfg.val_classes and cfg.select_on_test:
        raise DmlError("`val_classes` and `select_on_test` exclude each other: select on the "
                       "validation classes or on the test split")
    if cfg.memory_size:
        from .registry import MEMORY_METHODS

        if cfg.method not in MEMORY_METHODS:
            raise DmlError("memory_size=%d: a cross-batch memory wraps the pair losses %s, not %s"
                           % (cfg.memory_size, ", ".join(MEMORY_METHODS), cfg.method))
        if cfg.memory_size < per_batch:
            raise DmlError("memory_size=%d is smaller than a batch (%d images): the memory holds "
                           "at least the batch it scores" % (cfg.memory_size, per_batch))
        needed, total = cfg.memory_size * (4 * cfg.embedding_dim + 8), _physical_memory()
        if total and needed > total // 2:
            raise DmlError("memory_size=%d embeddings of embedding_dim=%d need %.1f GiB, more than "
                           "half of this machine's %.1f GiB: lower `memory_size` or "
                           "`embedding_dim`" % (cfg.memory_size, cfg.embedding_dim,
                                                needed / 2 ** 30, total / 2 ** 30))
        if cfg.kvstore == "dist_async":
            raise DmlError("memory_size with kvstore=dist_async: every worker's memory must hold "
                           "every worker's embeddings in the same order, which needs the "
                           "synchronous kvstore (dist_sync)")
    if cfg.kvstore == "dist_async" and cfg.lr_steps:
        raise DmlError("kvstore=dist_async updates on the servers, which keep the first learning "
                       "rate: lr_steps=%s cannot apply (pass lr_steps='' or use dist_sync)"
                       % ",".join(map(str, cfg.lr_steps)))
    from .registry import LR_SCHEDULES

    if cfg.lr_schedule not in LR_SCHEDULES:
        raise DmlError("lr_schedule=%s: choose one of %s" % (cfg.lr_schedule,
                                                           ", ".join(LR_SCHEDULES)))
    if cfg.lr_schedule == "cosine" and cfg.lr_steps:
        raise DmlError("lr_schedule=cosine decays the learning rate itself: lr_steps=%s applies to "
                       "lr_schedule=step" % ",".join(map(str, cfg.lr_steps)))
    if cfg.kvstore == "dist_async" and cfg.lr_schedule == "cosine":
        raise DmlError("kvstore=dist_async updates on the servers, which keep the first learning "
                       "rate: pass lr_schedule=step or use dist_sync")
    try:
        get_method(cfg.method).check_options(cfg.margin, cfg.scale)
    except ValueError as err:
        raise DmlError("%s: %s (margin=%s, scale=%g)" % (cfg.method, err, cfg.margin,
                                                         cfg.scale)) from None
    if splits is None:
        return
    _check_scorable(splits)
    present = len(set(splits.train.labels.tolist()))
    if cfg.batch_size:
        if present < 2:
            raise DmlError("%s needs at least 2 classes in the training split" % cfg.method)
        if cfg.batch_size > len(splits.train):
            raise DmlError("batch_size=%d is larger than the %d training images: lower "
                           "`batch_size`" % (cfg.batch_size, len(splits.train)))
        return
    if cfg.n_classes > splits.num_classes:
        raise DmlError("n_classes=%d but %s has only %d classes: pass n_classes=%d or fewer"
                       % (cfg.n_classes, cfg.dataset, splits.num_classes, splits.num_classes))
    if cfg.n_classes > present:
        raise DmlError("n_classes=%d but the training split holds only %d classes: pass "
                       "n_classes=%d or fewer" % (cfg.n_classes, present, present))
    if len(splits.train) < cfg.n_classes * cfg.n_samples:
        raise DmlError("a batch of %d x %d images is larger than the %d training images: lower "
                       "`n_classes` or `n_samples`" % (cfg.n_classes, cfg.n_samples,
                                                      len(splits.train)))
