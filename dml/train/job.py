"""The training and evaluation jobs of a run folder: :func:`prepare` and :func:`train_job`
(what ``dml train`` runs), loading a run's network, and :func:`reevaluate` (``dml evaluate``).
"""
import dataclasses
import logging
import os

import mxnet as mx
import numpy as np

from ..errors import DmlError, error_summary
from ..config import check_workers, validate
from ..runs import RunDir
from .state import NonFiniteLoss
from .devices import Workers, make_contexts, make_kvstore, seed_everything
from .builders import build_net, net_options
from .scoring import score_for_run
from .loop import fit, tensorboard_logger

log = logging.getLogger("dml")


def load_net(cfg, kind, path, ctx):
    """The run's EmbeddingNet with a checkpoint's weights (``kind`` "net"), or the exported graph
    itself (``kind`` "export"), hybridized; a file that does not fit is a :class:`DmlError`."""
    from ..nets import load_weights

    try:
        if kind == "export":
            net = mx.gluon.SymbolBlock.imports(RunDir.export_symbol(path), ["data"], path, ctx=ctx)
        else:
            net = build_net(ctx, **net_options(cfg))
            load_weights(net, path, ctx=ctx)
    except DmlError:
        raise
    except Exception as err:  # MXNet reports a mismatch as AssertionError, MXNetError, ...
        raise DmlError("checkpoint %s does not fit this run's network (%s, embedding dim %d): %s"
                       % (path, cfg.backbone, cfg.embedding_dim, error_summary(err))) from None
    net.hybridize()
    return net


def open_run(run_dir):
    """A finished or stopped run folder -> ``(RunDir, its config.json as stored, its RunConfig)``,
    the config set to take every weight from a checkpoint (``pretrained`` off)."""
    from ..config import RunConfig

    if not os.path.isdir(run_dir):
        raise DmlError("no run folder at %s" % run_dir)
    run = RunDir(run_dir)
    stored = run.read(run.CONFIG)
    # every weight comes from the checkpoint
    return run, stored, dataclasses.replace(RunConfig.from_dict(stored), pretrained=False)


def reported_checkpoint(run):
    """The checkpoint a run's metrics.json reports (``best`` when model selection chose it),
    else ``last``."""
    reported = run.read(run.METRICS).get("checkpoint") if run.has(run.METRICS) else None
    return reported if reported in ("last", "best") else "last"


def check_same_images(stored, splits, run_dir, data_root=None):
    """The evaluated split must hold the images the run evaluated (config.json's
    ``evaluated_images``: counts and a digest of each class's count): a test class or image that
    went missing, or was added, would give other metrics silently."""
    from ..runs import evaluated_images

    recorded, now = stored["evaluated_images"], evaluated_images(splits)
    for part in sorted(set(recorded) | set(now)):
        a, b = recorded.get(part), now.get(part)
        if a == b:
            continue
        names = set(stored.get("eval_classes") or [])
        present = {splits.class_names[c] for c in np.unique(
            (splits.test if part == "test" else splits.gallery).labels)} if b else set()
        missing = sorted(names - present) if part == "test" and names else []
        raise DmlError("the %s split at %s holds %s, but %s evaluated %s%s: point `data_root` at "
                       "the run's data" % (
                           part, data_root or "the default folder",
                           "%d images of %d classes" % (b["images"], b["classes"]) if b
                           else "no images", run_dir,
                           "%d images of %d classes" % (a["images"], a["classes"]) if a
                           else "none", " (missing classes: %s)" % ", ".join(missing[:3])
                           if missing else ""))


def reevaluate(run_dir, checkpoint=None, split=None, gpus=None, data_root=None,
                 verification=False):
    """Re-evaluate a run folder's checkpoint (``last``, ``best`` or a file in its params/; None:
    the one its training reported, metrics.json's ``checkpoint``) on ``split`` (default: the
    run's) -> ``(metrics, figure paths, RunDir)``. Everything is read and
    checked before anything is written: a dataset whose classes differ from the run's, a
    checkpoint of another run, an unreadable metrics.json are :class:`DmlError`. Then
    metrics.json is rewritten (``epochs`` the checkpoint's, ``train_seconds`` kept), and the
    projector entry and figures are replaced. ``data_root``: where the data is now, if it moved;
    ``gpus``: None for every usable GPU, else the indices ([]: the CPU); ``verification`` adds
    :func:`dml.evaluation.verification_thresholds`."""
    from ..data import apply_split, check_same_classes, hold_out_classes, load_dataset
    from ..gpus import usable_gpus

    run, stored, cfg = open_run(run_dir)
    if data_root:
        cfg = dataclasses.replace(cfg, data_root=data_root)
    split = split or cfg.split
    if split == "unseen" and cfg.split != "unseen":
        raise DmlError("%s trained on every class: split=unseen needs a run trained with "
                       "split=unseen" % run.path)
    previous = run.read(run.METRICS) if run.has(run.METRICS) else {}
    checkpoint = checkpoint or reported_checkpoint(run)
    kind, path, epoch = run.resolve(checkpoint)
    if checkpoint not in ("last", "best"):
        run.check_own(path)
    history = run.read_history()

    ctx = make_contexts(usable_gpus(mx.context.num_gpus()) if gpus is None else gpus)
    net = load_net(cfg, kind, path, ctx)
    cfg = dataclasses.replace(cfg, split=split)
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    check_same_classes(stored.get("class_names"), splits, run.path, cfg.data_root)
    # the run's own training split (its kNN references) lacks its validation classes
    splits = hold_out_classes(apply_split(splits, split), cfg.val_classes)
    if split == stored.get("split", cfg.split) and stored.get("evaluated_images"):
        check_same_images(stored, splits, run.path, cfg.data_root)
    log.info("evaluating %s (epoch %d) on the %s split of %s: %d images", path, epoch, split,
             cfg.dataset, len(splits.test))
    try:
        metrics, embeddings, labels = score_for_run(cfg, splits, net, ctx, full=True)
    except NonFiniteLoss as err:
        raise DmlError("%s: %s" % (path, err)) from None
    if verification:
        from ..evaluation import verification_thresholds

        metrics.update(verification_thresholds(embeddings, labels, cfg.distance))

    with tensorboard_logger(run, cfg) as logger:
        logger.add_projector(embeddings, labels, splits, epoch, tag="%s_embedding" % split)
        figures = logger.figures(splits, embeddings, labels, history, epoch)
    metrics.update(embedding_dim=cfg.embedding_dim, epochs=epoch,
                   checkpoint=checkpoint if checkpoint in ("last", "best") else path)
    for key in ("selected_on", "val_map_at_r"):  # how training chose this checkpoint
        if key in previous and checkpoint == previous.get("checkpoint"):
            metrics[key] = previous[key]
    if previous.get("split") == split:  # the split's raw pixels and untrained network, unchanged
        metrics.update((k, v) for k, v in previous.items()
                       if k.startswith(("untrained_", "pixels_")))
    if "train_seconds" in previous:
        metrics["train_seconds"] = previous["train_seconds"]
    run.write(run.METRICS, metrics)  # last: a failure above leaves the old metrics.json
    return metrics, figures, run


class Job:
    """What :func:`prepare` checked and built: the ``cfg`` to train with (the given one with its
    derived values), ``ctx``, ``net``, ``splits``, ``workers``, the ``resume`` checkpoint state
    (or None), and once :func:`train_job` made it, ``run_dir``."""

    def __init__(self, **kwargs):
        self.run_dir = self.lock = None
        self.__dict__.update(kwargs)


def _resume_point(run_dir, cfg):
    """The newest complete checkpoint of ``run_dir`` to continue ``cfg`` from (exit 2 when there
    is none, or the run is finished)."""
    states = RunDir(run_dir).complete_checkpoints()
    if not states:
        raise DmlError("resume=%s: the run holds no complete checkpoint (params/state-*.json) "
                       "to continue from" % run_dir)
    state = states[-1]
    if state.get("method", cfg.method) != cfg.method:
        raise DmlError("resume=%s: its checkpoint is of method %s, not %s"
                       % (run_dir, state["method"], cfg.method))
    if state["batch"] is None and state["epoch"] >= cfg.epochs and RunDir(run_dir).has(
            RunDir.METRICS):
        raise DmlError("resume=%s: the run finished its %d epochs; pass epochs=N (more than "
                       "%d) to train it further" % (run_dir, state["epoch"], state["epoch"]))
    if state["epoch"] > cfg.epochs:
        raise DmlError("resume=%s: the newest checkpoint is of epoch %d, past epochs=%d"
                       % (run_dir, state["epoch"], cfg.epochs))
    return state


def prepare(cfg, resume_dir=None, fit_classes=True):
    """Check everything a run needs and build what can fail (devices, backbone, dataset, the
    kvstore) before any folder exists: a problem is a :class:`DmlError`. ``fit_classes``: under
    the unseen split, lower ``n_classes`` to the training classes (it was not given). ``cfg`` is
    left as it is: the job's ``cfg`` is the one the run trains with (and config.json records),
    the derived values in it."""
    from ..data import apply_split, check_same_classes, hold_out_classes, load_dataset

    resume = _resume_point(resume_dir, cfg) if resume_dir else None
    ctx = make_contexts(cfg.gpus, cfg.cpus)
    seed_everything(cfg.seed)
    net = build_net(ctx, train=True, **net_options(cfg))
    splits = hold_out_classes(apply_split(load_dataset(cfg.dataset, cfg.data_root,
                                                       cfg.image_size), cfg.split),
                              cfg.val_classes)
    if splits.val is not None:
        log.info("model selection on %d validation classes held out of training (%s), every "
                 "%d epochs; the test split is evaluated once, at the end", len(splits.val_classes),
                 _some(splits.class_names[c] for c in splits.val_classes), cfg.eval_period)
    if resume is not None:
        check_same_classes(RunDir(resume_dir).read(RunDir.CONFIG).get("class_names"), splits,
                           resume_dir, cfg.data_root)
    else:
        present = len(np.unique(splits.train.labels))
        if fit_classes and not cfg.batch_size and cfg.n_classes > present:
            # class-disjoint data (--split unseen, or a folder whose test classes differ)
            log.info("the training split holds %d classes, so batches take %d classes "
                     "(n_classes) x %d images", present, present, cfg.n_samples)
            cfg = dataclasses.replace(cfg, n_classes=present)
        validate(cfg, splits)
    if not cfg.batch_size:
        _warn_repeats(splits.train.labels, cfg.n_samples)
    workers = Workers(make_kvstore(cfg.kvstore))
    check_workers(cfg, splits, workers.count)
    # last: held from here until run() ends (released there, or when the process exits)
    lock = RunDir(resume_dir).lock() if resume_dir and workers.writes else None
    return Job(cfg=cfg, ctx=ctx, net=net, splits=splits, workers=workers, resume=resume,
               resume_dir=resume_dir, lock=lock)


def _warn_repeats(labels, n_samples):
    """Say when P x K batches must repeat images: a class with fewer than ``n_samples`` images
    fills its share of a batch by drawing its images again (differently augmented)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = counts[counts > 0]
    short = int(np.sum(counts < n_samples))
    if short:
        log.warning("%d of %d training classes have fewer than n_samples=%d images (the smallest "
                    "%d): their images repeat within a batch; lower n_samples to %d to draw each "
                    "image at most once", short, len(counts), n_samples, counts.min(),
                    counts.min())


def _some(names, shown=5):
    names = list(names)
    return ", ".join(names[:shown]) + (", ... (%d in all)" % len(names) if len(names) > shown
                                       else "")


def train_job(cfg, job, argv=()):
    """Create the run folder (rank 0; or reuse the resumed one), write config.json and
    logs/train.log, and :func:`fit` -> the final metrics (None on other workers). ``job.run_dir``
    is set before training starts, for the caller's messages."""
    workers = job.workers
    if job.resume is not None:
        run_dir = RunDir(job.resume_dir)
        if workers.writes:
            for path in run_dir.remove_partial_files():
                log.info("removed %s, a partial file of the stopped run", path)
    else:
        run_dir = RunDir.create(cfg.output_root, cfg.dataset, cfg.method) if workers.writes \
            else None
        if run_dir is not None:
            job.lock = run_dir.lock()  # a new folder: for --resume while this trains
    job.run_dir = run_dir = RunDir(workers.agree(run_dir.path if run_dir else None))
    handler = None
    if workers.writes:
        handler = logging.FileHandler(run_dir.train_log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    try:
        if workers.writes:
            run_dir.write_config(cfg, job.splits, resumed=job.resume is not None, argv=argv)
        log.info("run folder %s%s", run_dir, " (written by worker 0)" if not workers.writes else "")
        log.info("training augmentation: %s%s", cfg.augment, " (the default of %s)" % cfg.dataset
                 if cfg.augment == job.splits.augment_name else "")
        return fit(cfg, job.splits, run_dir, net=job.net, ctx=job.ctx, resume=job.resume,
                   workers=workers)
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
        if getattr(job, "lock", None) is not None:
            os.close(job.lock)
            job.lock = None
