"""The training engine: devices and workers, one ``train_step``, the ``fit`` loop and
``reevaluate``.

Data flows one way: dataset -> sampler -> :class:`dml.data.BatchLoader` -> net (hybridized) ->
loss (hybridized) -> ``gluon.Trainer`` -> hooks (:mod:`dml.hooks`: stop guard, run recorder,
TensorBoard logger) -> run folder (:class:`dml.runs.RunDir`, the only owner of its files).
"""
import dataclasses
import logging
import math
import os
import random

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from tqdm import tqdm

from .errors import DmlError, error_summary
from .data import BatchLoader, SequentialBatches
from .evaluation import all_metrics, embed, retrieval_metrics
from .hooks import (Hooks, NonFiniteLoss, RunCompleter, RunRecorder, StopGuard,
                    TensorBoardLogger, TrainingInterrupted, TrainState, set_rng_state)
from .methods import get_method
from .nets import EmbeddingNet
from .config import check_workers, validate
from .runs import RunDir, wait_for_mxnet

log = logging.getLogger("dml")


def make_contexts(gpus=(), cpus=0):
    """``mx.gpu(i)`` for each of ``gpus``; else ``cpus`` CPU contexts (>1 exercises the multi-device
    code path without GPUs); else one CPU."""
    if gpus:
        from .gpus import check_gpus

        check_gpus(gpus)
        available = mx.context.num_gpus()
        missing = [g for g in gpus if g >= available]
        if missing:
            raise DmlError("gpus=%s: this machine's mxnet sees %d GPU(s)%s: drop `gpus` to train "
                           "on the CPU" % (",".join(map(str, gpus)), available,
                                           " (CPU-only build or no GPU)" if available == 0 else ""))
        return [mx.gpu(g) for g in gpus]
    if cpus > 1:
        return [mx.cpu(i) for i in range(cpus)]
    return [mx.cpu()]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def net_options(cfg):
    """The :func:`build_net` arguments of a run's config (``stem="auto"`` resolved)."""
    from .config import resolve_stem

    return dict(embedding_dim=cfg.embedding_dim, backbone=cfg.backbone,
                l2_normalize=cfg.l2_normalize, pretrained=cfg.pretrained,
                freeze_bn=cfg.freeze_bn,
                stem=resolve_stem(cfg.stem, cfg.image_size, cfg.pretrained, cfg.backbone))


CPU_SYNC_NOTE = (
    "%d CPU contexts with MXNet's engine on one thread per device (MXNET_CPU_WORKER_NTHREADS "
    "unset or 1): SyncBatchNorm could hang there, so each BatchNorm layer normalizes over its own "
    "share of the batch, and the loss and update differ from one context's; set "
    "MXNET_CPU_WORKER_NTHREADS=4 before MXNet loads (python -m dml train --cpus N does) to share "
    "the statistics")


def cpu_engine_threads():
    """MXNet's engine threads per CPU device (``MXNET_CPU_WORKER_NTHREADS``, read when MXNet
    loads; 1 by default)."""
    try:
        return int(os.environ.get("MXNET_CPU_WORKER_NTHREADS", "1"))
    except ValueError:
        return 1


def build_net(ctx, embedding_dim=128, backbone="resnet18_v1", l2_normalize=False,
              pretrained=False, freeze_bn=False, train=False, stem="imagenet"):
    """An initialized :class:`EmbeddingNet` on ``ctx`` (GluonCV's ImageNet weights for the
    backbone with ``pretrained``; BatchNorm frozen with ``freeze_bn``). ``train`` on several
    devices: BatchNorm statistics over the whole batch (SyncBatchNorm), so that the devices train
    the network one device would (:func:`train_step` then runs each device in a thread). On CPU
    contexts that needs MXNet's engine to run two or more threads per device (with one, two
    BatchNorm layers of parallel branches can wait on each other: :data:`CPU_SYNC_NOTE`)."""
    synced = train and len(ctx) > 1 and not freeze_bn
    if synced and not all(c.device_type == "gpu" for c in ctx) and cpu_engine_threads() < 2:
        log.warning(CPU_SYNC_NOTE, len(ctx))
        synced = False
    net = EmbeddingNet(embedding_dim=embedding_dim, backbone=backbone, l2_normalize=l2_normalize,
                       pretrained=pretrained, freeze_bn=freeze_bn,
                       sync_devices=len(ctx) if synced else 0, stem=stem)
    if pretrained:
        net.embedding.initialize(mx.init.Xavier(), ctx=ctx)
        net.features.collect_params().reset_ctx(ctx)
    else:
        net.initialize(mx.init.Xavier(magnitude=2), ctx=ctx)
    return net


def build_loss(cfg):
    """The loss of a run's config (its method's, with its margin, distance and selector)."""
    return get_method(cfg.method).build_loss(cfg.margin, cfg.distance, cfg.selector,
                                             miner=cfg.miner, memory_size=cfg.memory_size)


def build_train_loader(cfg, splits, num_parts=1, part_index=0):
    """The training batches; of a distributed job, worker ``part_index``'s shard."""
    method = get_method(cfg.method)
    dataset = method.train_dataset(splits.train, cfg.seed)
    sampler = method.batch_sampler(dataset, cfg.n_classes, cfg.n_samples, cfg.batch_size,
                                   cfg.seed, num_parts, part_index)
    return BatchLoader(dataset, sampler, splits.mean, splits.std,
                       augment=splits.augmentation(cfg.augment), seed=cfg.seed,
                       num_workers=cfg.num_workers)


DIST_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER",
            "DMLC_NUM_SERVER")
_RUN_NAME_KEY = 1 << 24  # an integer kvstore key far above the Trainer's parameter indices
_RUN_NAME_BYTES = 4096
_GATHER_KEYS = {"embeddings": _RUN_NAME_KEY + 1, "labels": _RUN_NAME_KEY + 2}


def make_kvstore(kind):
    """The kvstore object of a distributed ``kind`` (``dist_*``), or None: the local kinds are
    created by the Trainer itself. A distributed kvstore needs the environment that MXNet's
    launcher (``dmlc_tracker``, wrapped by ``scripts/launch.py``) gives each process."""
    if not kind.startswith("dist"):
        return None
    missing = [name for name in DIST_ENV if name not in os.environ]
    if missing:
        raise DmlError("kvstore=%s needs the environment of MXNet's launcher (%s not set): start "
                       "the job with python scripts/launch.py -n WORKERS -s SERVERS -- python -m "
                       "dml train ..." % (kind, ", ".join(missing)))
    return mx.kv.create(kind)


class Workers:
    """Where this process stands in the job: ``rank`` of ``count`` workers (1 without a
    distributed kvstore). Only rank 0 writes the run folder."""

    def __init__(self, kv=None):
        self.kv = kv
        self.rank = kv.rank if kv is not None else 0
        self.count = kv.num_workers if kv is not None else 1
        # dist_async: the servers run the optimizer and apply each worker's push on its own
        self.asynchronous = kv is not None and "async" in kv.type
        self._pulled = False
        self._gather_keys = set()

    @property
    def writes(self):
        return self.rank == 0

    @property
    def step_scale(self):
        """What ``trainer.step`` divides the gradient by: synchronous jobs sum the workers'
        gradients (average them); dist_async applies each worker's push on its own."""
        return 1 if self.asynchronous else self.count

    @property
    def saves_trainer(self):
        """Trainer states can be saved unless the optimizer runs on the servers (dist_async)."""
        return not self.asynchronous

    def pull_weights_before_pushing(self, trainer):
        """Called between the first backward pass and the first update: the Trainer broadcasts
        rank 0's initial weights (a pull per parameter) in its first step, and the gradients then
        travel under the same kvstore keys. Nothing orders a worker's weight pull before its own
        gradient push, and a pull served after both workers' pushes were merged returns their
        summed gradients instead of the weights. Initialising here and waiting closes that gap
        (seen with two workers: one started from the gradient sum)."""
        if self.kv is None or self.count == 1 or self._pulled:
            return
        trainer._init_kvstore()  # pylint: disable=protected-access
        trainer._init_params()  # pylint: disable=protected-access
        mx.nd.waitall()
        self._pulled = True

    def all_gather(self, embeddings, labels):
        """Every worker's ``embeddings`` (numpy N x D) and ``labels``, concatenated in worker
        order, and this worker's offset in them: what a cross-batch memory enqueues, so that
        every worker's memory holds the same rows. Each worker writes its rows into a zero
        buffer of the whole; the kvstore sums the workers' pushes (a synchronous job's servers
        keep the sum: no optimizer runs on them) and every worker pulls the sum. Every worker
        must call it once per step, with the same N."""
        if self.kv is None or self.count == 1:
            return embeddings, labels, 0
        n = len(embeddings)
        out = []
        for name, part in (("embeddings", embeddings.reshape(n, -1)),
                           ("labels", np.asarray(labels, dtype=np.float32).reshape(n, 1))):
            whole = np.zeros((self.count * n, part.shape[1]), dtype=np.float32)
            whole[self.rank * n:(self.rank + 1) * n] = part
            value = mx.nd.array(whole)
            key = _GATHER_KEYS[name]
            if key not in self._gather_keys:
                self.kv.init(key, mx.nd.zeros_like(value))
                self._gather_keys.add(key)
            self.kv.push(key, value)
            self.kv.pull(key, out=value)
            out.append(value.asnumpy())
        return out[0], out[1].reshape(-1).astype(np.float64), self.rank * n

    def agree(self, run_dir):
        """Rank 0's ``run_dir``, on every worker (broadcast through the kvstore)."""
        if self.kv is None or self.count == 1:
            return run_dir
        code = np.zeros(_RUN_NAME_BYTES, dtype=np.float32)
        if self.rank == 0:
            raw = np.frombuffer(os.path.abspath(run_dir).encode("utf-8"), dtype=np.uint8)
            if len(raw) >= _RUN_NAME_BYTES:
                raise DmlError("the run folder path is longer than %d bytes" % _RUN_NAME_BYTES)
            code[:len(raw)] = raw
        value = mx.nd.array(code)
        self.kv.broadcast(_RUN_NAME_KEY, value, out=value)
        raw = value.asnumpy().astype(np.uint8)
        return bytes(raw[:np.argmax(raw == 0)]).decode("utf-8")


def build_trainer(cfg, model, workers=None):
    """``gluon.Trainer`` over ``cfg.kvstore``. In a synchronous distributed job the servers only
    sum gradients and every worker applies the same update (``update_on_kvstore=False``), so the
    optimizer states are local and can be checkpointed; dist_async updates on the servers."""
    opt_params = {"learning_rate": cfg.lr, "wd": cfg.wd}
    if cfg.optimizer == "sgd":
        opt_params["momentum"] = cfg.momentum
    if workers is None or workers.kv is None:
        return gluon.Trainer(model.collect_params(), cfg.optimizer, opt_params,
                             kvstore=cfg.kvstore)
    return gluon.Trainer(model.collect_params(), cfg.optimizer, opt_params, kvstore=workers.kv,
                         update_on_kvstore=workers.asynchronous)


def split_batch(batch, ctx):
    """A numpy batch -> per device, the tuple of its slices (``parts[i]`` on ``ctx[i]``)."""
    return list(zip(*[gluon.utils.split_and_load(a, ctx, even_split=False) for a in batch]))


def train_step(method, model, loss_fn, trainer, batch, ctx, workers=None, parallel=False):
    """One optimization step on ``batch`` split over ``ctx`` -> (loss, stat) as 1-element arrays
    on ``ctx[0]``, not synchronized (the caller decides when to wait). ``workers``: the
    :class:`Workers` of a distributed job, whose gradients the kvstore sums (each worker's loss
    is its batch mean). ``parallel``: the network shares BatchNorm statistics over the devices
    (SyncBatchNorm), so each device's passes run in a thread of their own
    (:meth:`dml.methods.Method.parallel_step`); the first such step warms the graphs up first."""
    parts = split_batch(batch, ctx)
    if parallel and len(ctx) > 1:
        if not getattr(model, "_dml_warmed_up", False):
            method.warm_up(model, loss_fn, parts)
            model._dml_warmed_up = True  # pylint: disable=protected-access
        step = method.parallel_step(model, loss_fn, parts, ctx)
        step.backward()
        loss, stat = step.loss, step.stat
    else:
        with autograd.record():
            heads, loss, stat = method.forward_batch(model, loss_fn, parts, ctx)
        autograd.backward(heads)
    if workers is not None:
        workers.pull_weights_before_pushing(trainer)
    # the heads sum to this worker's batch mean: the devices' gradients add up to its gradient
    trainer.step(workers.step_scale if workers is not None else 1)
    return loss, stat


def eval_loader(cfg, splits, dataset):
    return BatchLoader(dataset, SequentialBatches(len(dataset), cfg.eval_batch_size), splits.mean,
                       splits.std, augment=None, num_workers=cfg.num_workers)


def validation_loss(method, model, loss_fn, loader, ctx):
    """Mean loss over a fixed tuple set (inference mode: BatchNorm uses running statistics)."""
    wait_for_mxnet()
    total = count = 0.0
    for batch in loader:
        for arrays in split_batch(batch, ctx):
            loss, _ = method.forward(model, loss_fn, *arrays)
            total += loss.asscalar() * arrays[0].shape[0]
            count += arrays[0].shape[0]
    return total / max(count, 1)




def check_embeddings(embeddings, what):
    """Refuse non-finite embeddings (no metric of them means anything) and warn, in one line,
    about a collapsed one (every image embedded to the same point: its metrics only measure how
    ties are broken, its clustering is one cluster)."""
    from .evaluation import is_collapsed

    if not np.isfinite(embeddings).all():
        raise NonFiniteLoss("the %s embeddings hold NaN or inf: the network's weights are not "
                            "finite" % what, None)
    if is_collapsed(embeddings):
        log.warning("the embedding collapsed: all %d %s images map to the same point (the "
                    "metrics below are those of ties); try a lower learning rate or another "
                    "backbone", len(embeddings), what)


def embed_and_score(net, splits, ctx, distance="euclidean", full=True, pairs=None, seed=0,
                 batch_size=256, num_workers=2):
    """Embed ``splits.test`` and score it -> ``(metrics, embeddings, labels)``. ``full`` adds the
    clustering metrics, ``knn_accuracy`` (which embeds ``splits.references`` too) and, with
    ``pairs`` (fixed ``(i, j, same)`` test pairs), ``verification_auc``; otherwise only the
    retrieval metrics (cheap enough for every evaluation period). With ``splits.gallery`` the
    test images are queries retrieved against the gallery (which is embedded too)."""
    wait_for_mxnet()

    def embedded(dataset, desc):
        loader = BatchLoader(dataset, SequentialBatches(len(dataset), batch_size), splits.mean,
                             splits.std, augment=None, num_workers=num_workers)
        with tqdm(total=len(loader), desc=desc, unit="batch", disable=None, leave=False) as bar:
            return embed(net, loader, ctx, progress=bar)

    what = "query" if splits.gallery is not None else splits.split
    embeddings, labels = embedded(splits.test, "embedding %s split" % what)
    check_embeddings(embeddings, what)
    gallery = gallery_labels = None
    if splits.gallery is not None:
        gallery, gallery_labels = embedded(splits.gallery, "embedding the gallery")
        check_embeddings(gallery, "gallery")
    if full:
        if gallery is None:
            references, reference_labels = embedded(splits.references, "embedding kNN references")
        else:
            references, reference_labels = gallery, gallery_labels
        metrics = all_metrics(embeddings, labels, references, reference_labels, distance,
                              pairs=pairs, seed=seed, gallery=gallery,
                              gallery_labels=gallery_labels)
    else:
        metrics = retrieval_metrics(embeddings, labels, distance, gallery=gallery,
                                    gallery_labels=gallery_labels)
    metrics["split"] = splits.split
    if gallery is not None:
        metrics["num_gallery"] = int(len(gallery))
    return metrics, embeddings, labels


def validation_splits(splits):
    """``splits`` with its validation classes (``splits.val``) as the evaluated split: what model
    selection scores (retrieval among the held-out classes' images)."""
    import dataclasses

    return dataclasses.replace(splits, test=splits.val, split="val", gallery=None,
                               reference=None)


def score_for_run(cfg, splits, net, ctx, full=True, on="test"):
    """:func:`embed_and_score` with a run's settings (its distance, seed, batch size, loaders, and
    the siamese method's fixed verification pairs); ``on="val"``: the retrieval metrics of the
    validation classes (model selection) instead of the test split."""
    if on == "val":
        return embed_and_score(net, validation_splits(splits), ctx, cfg.distance, full=False,
                            seed=cfg.seed, batch_size=cfg.eval_batch_size,
                            num_workers=cfg.num_workers)
    method = get_method(cfg.method)
    pairs = method.val_dataset(splits.test, cfg.seed).tuples if full and method.verification \
        else None
    return embed_and_score(net, splits, ctx, cfg.distance, full=full, pairs=pairs, seed=cfg.seed,
                        batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)


def learning_rate_at(cfg, epoch, step=None, total_steps=None):
    """The learning rate of ``epoch`` (1-based): ``cfg.lr`` times ``lr_factor`` per step of
    ``lr_steps`` passed; with ``lr_schedule="cosine"``, of training ``step`` (0-based) of
    ``total_steps``: lr * (1 + cos(pi * step / total_steps)) / 2."""
    if cfg.lr_schedule == "cosine" and step is not None and total_steps:
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    lr = cfg.lr
    for boundary in range(1, epoch):
        if boundary in cfg.lr_steps:
            lr *= cfg.lr_factor
    return lr


def fit(cfg, splits, run_dir, net=None, ctx=None, resume=None, workers=None, hooks=None):
    """Train ``cfg.method`` on ``splits.train``, record everything in ``run_dir`` (a path or a
    :class:`dml.runs.RunDir`) and return the final metrics (None on workers other than rank 0).

    The loop: the hooks' ``train_start``; for each epoch, set the learning rate and call
    ``epoch_begin``, then for each batch ``train_step`` and ``batch_end``; at the epoch's end
    ``epoch_end``; after the last epoch ``train_end``, and once the hooks are left ``fit_end``
    (:mod:`dml.events`). The default hooks (:func:`default_hooks`) are the stop guard, the health
    monitor, the run recorder, the TensorBoard logger and what writes metrics.json; ``hooks``
    adds more, placed among them by their ``priority`` (0, the recorder's, by default: after it,
    before the logger). ``resume``: a complete checkpoint's state
    (:meth:`dml.runs.RunDir.complete_checkpoints`) to continue from, exactly.

    Raises :class:`dml.hooks.TrainingInterrupted` after Ctrl-C or SIGTERM (a checkpoint written)
    and :class:`dml.hooks.NonFiniteLoss` when the loss or the weights are NaN or infinite
    (nothing written after the last good checkpoint)."""
    run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    state, loader = prepare_training(cfg, splits, net, ctx, workers)
    chain = default_hooks(cfg, splits, run_dir, state, hooks)
    if resume is not None:
        resume_state(run_dir, state, loader, resume)
    cosine = cfg.lr_schedule == "cosine"
    with chain:  # (leaving it restores the signal handlers and closes TensorBoard's files)
        chain.train_start(state)
        for epoch in range(state.epoch + (state.skip == 0), cfg.epochs + 1):
            state.trainer.set_learning_rate(learning_rate_at(cfg, epoch))
            loader.set_epoch(epoch - 1, skip=state.skip)
            state.begin_epoch(epoch, len(loader))
            chain.epoch_begin(state)
            with tqdm(total=len(loader), initial=state.skip, desc="epoch %d/%d" % (
                    epoch, cfg.epochs), unit="batch", disable=None, leave=False,
                      dynamic_ncols=True) as bar:
                state.skip = 0
                for batch in loader:
                    if cosine:  # (per batch: from the step, so a resumed run is the same)
                        state.trainer.set_learning_rate(learning_rate_at(
                            cfg, epoch, state.step, cfg.epochs * len(loader)))
                    state.input_shape = batch[0].shape[1:]
                    state.add_batch(*train_step(state.method, state.model, state.loss_fn,
                                                state.trainer, batch, state.ctx,
                                                state.workers, state.parallel))
                    chain.batch_end(state)
                    if state.checked_loss is not None:
                        bar.set_postfix(loss="%.4f" % (state.epoch_loss.asscalar() / state.seen))
                    bar.update(1)
            chain.epoch_end(state)
            log.info("epoch %d/%d: %s, %.0f s", epoch, cfg.epochs, _epoch_summary(state),
                     state.elapsed())
            if state.guard.requested and epoch < cfg.epochs:
                raise TrainingInterrupted(state.last_good, state.guard.requested)
        # a worker's last gradient push must reach the servers before it exits (MXNet stops
        # its engine at exit without finishing it, and the other workers would wait for ever)
        mx.nd.waitall()
        state.train_seconds = state.elapsed()
        if not state.workers.writes:
            return None
        chain.train_end(state)
    chain.fit_end(state)  # metrics.json, after the figures and TensorBoard's files are closed
    return state.metrics


def _epoch_summary(state):
    record, stat = state.record, state.method.stat
    text = "loss %.4f, %s %.3f" % (record["train_loss"], stat.replace("_", " "), record[stat])
    if "val_loss" in record:
        text += ", val loss %.4f" % record["val_loss"]
    if "map_at_r" in record:
        text += ", map_at_r %.4f" % record["map_at_r"]
    if "val_map_at_r" in record:
        text += ", validation map_at_r %.4f" % record["val_map_at_r"]
    if "health_map_at_r" in record:
        if "val_map_at_r" not in record:
            text += ", %s map_at_r %.4f" % ("validation" if state.splits.val is not None
                                            else "training-sample", record["health_map_at_r"])
        text += " (untrained %.4f)" % record["health_untrained_map_at_r"]
    return text + ", lr %g" % record["learning_rate"]


def prepare_training(cfg, splits, net=None, ctx=None, workers=None):
    """The :class:`dml.hooks.TrainState` of a fresh run (model, loss and trainer built and
    hybridized) and its training loader. ``net`` and ``ctx`` may be built beforehand (the CLI
    does, so that a bad backbone or GPU fails before the run folder exists)."""
    workers = workers or Workers()
    ctx = ctx or make_contexts(cfg.gpus, cfg.cpus)
    if net is None:
        seed_everything(cfg.seed)
        net = build_net(ctx, train=True, **net_options(cfg))
    method = get_method(cfg.method)
    # labels keep their values under --split unseen: the classifier covers the training labels
    model = method.build_model(net, int(np.max(splits.train.labels)) + 1, ctx, cfg.margin,
                               cfg.scale, loss_lr_mult=cfg.loss_lr_mult)
    model.hybridize(static_alloc=True, static_shape=True)
    loss_fn = build_loss(cfg)
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    if hasattr(loss_fn, "gather") and workers.count > 1:  # a cross-batch memory of every worker
        loss_fn.gather = workers.all_gather
    state = TrainState(cfg, splits, net, model, loss_fn, build_trainer(cfg, model, workers),
                       method, ctx, workers)
    loader = build_train_loader(cfg, splits, workers.count, workers.rank)
    batch_shape = ("%d x %d images" % (cfg.n_classes, cfg.n_samples) if method.pk_batches
                   else "%d %s" % (cfg.batch_size, method.batch_unit))
    log.info("training %s (%s) on %s: %d train / %d %s images, %d batches of %s per epoch%s, on %s",
             cfg.method, method.summary, cfg.dataset, len(splits.train), len(splits.test),
             splits.split, len(loader), batch_shape,
             " (worker %d of %d)" % (workers.rank, workers.count) if workers.count > 1 else "",
             ", ".join(str(c) for c in ctx))
    return state, loader


def selection_split(cfg, splits):
    """Where ``params/best/`` is chosen: ``"val"`` (the held-out validation classes), ``"test"``
    (``select_on_test``: test-set feedback, by explicit request only) or None (no periodic
    evaluation: the final epoch is the model)."""
    if splits.val is not None:
        return "val"
    return "test" if cfg.select_on_test else None


def default_hooks(cfg, splits, run_dir, state, extra=None):
    """The :class:`dml.hooks.Hooks` of a run of ``cfg``: the stop guard, the health monitor, the
    :class:`dml.hooks.RunRecorder` and the :class:`dml.hooks.TensorBoardLogger` of ``run_dir``,
    with ``extra``, in the order of their priorities."""
    method = state.method
    state.guard = StopGuard(state.model, cfg.log_interval)
    # the validation loss of siamese/triplet: on the held-out classes when there are some
    val_set = method.val_dataset(splits.val if splits.val is not None else splits.test, cfg.seed)
    val_loss = None
    if val_set is not None:
        val_loader = eval_loader(cfg, splits, val_set)
        val_loss = lambda s: validation_loss(s.method, s.model, s.loss_fn, val_loader, s.ctx)  # noqa: E731
    recorder = RunRecorder(
        run_dir, lambda s, full, on="test": score_for_run(cfg, splits, s.net, s.ctx, full, on=on),
        cfg.method, cfg.embedding_dim, save_period=cfg.save_period, eval_period=cfg.eval_period,
        keep_checkpoints=cfg.keep_checkpoints, val_loss=val_loss,
        select_on=selection_split(cfg, splits))
    logger = tensorboard_logger(run_dir, cfg, writes=state.workers.writes)
    health = [health_monitor(cfg, splits)] if state.workers.writes else []
    completer = [RunCompleter(run_dir)] if state.workers.writes else []
    return Hooks([state.guard] + health + [recorder, logger] + completer + list(extra or []))


def experiment_hparams(cfg):
    """The options of ``cfg`` that define the experiment (the seed too): what TensorBoard's
    HParams tab lists for the run."""
    from .compare import NOT_THE_EXPERIMENT

    return {key: value for key, value in cfg.to_dict().items()
            if key not in NOT_THE_EXPERIMENT or key == "seed"}


def tensorboard_logger(run_dir, cfg, writes=True):
    """The :class:`dml.hooks.TensorBoardLogger` of a run of ``cfg`` in ``run_dir``."""
    return TensorBoardLogger(run_dir, cfg.epochs, title="%s on %s" % (cfg.method, cfg.dataset),
                             hparams=experiment_hparams(cfg), distance=cfg.distance,
                             projector_points=cfg.projector_points, seed=cfg.seed, writes=writes)


def health_monitor(cfg, splits):
    """The :class:`dml.health.HealthMonitor` of a run: on its validation classes, else on a fixed
    sample of whole training classes."""
    from .health import HealthMonitor, heldout_sample

    if splits.val is not None:
        dataset, what = splits.val, "the %d validation classes" % len(splits.val_classes)
    else:
        dataset = splits.train.subset(heldout_sample(splits.train, seed=cfg.seed))
        what = "a sample of %d training classes" % len(np.unique(dataset.labels))

    def embed_set(net, data):
        return embed(net, eval_loader(cfg, splits, data), net_contexts(net))

    return HealthMonitor(dataset, embed_set, cfg.distance, what)


def net_contexts(net):
    """The contexts ``net``'s parameters live on."""
    return next(iter(net.collect_params().values())).list_ctx()


def resume_state(run_dir, state, loader, resume):
    """Continue ``state`` from a complete checkpoint of ``run_dir``: weights, optimizer states,
    RNGs, history, best, the step and the position in the epoch (the partial sums of a
    mid-epoch stop)."""
    if not run_dir.load_checkpoint(resume, state.net, state.trainer,
                                   getattr(state.model, "classifier", None), state.ctx):
        log.warning("checkpoint %s holds no optimizer states (dist_async): the optimizer "
                    "restarts", resume["id"])
    if hasattr(state.loss_fn, "load_state"):  # a cross-batch memory
        memory = run_dir.load_memory(resume)
        if memory is None:
            log.warning("checkpoint %s holds no cross-batch memory: it refills from the next "
                        "%d embeddings", resume["id"], state.loss_fn.memory_size)
        else:
            state.loss_fn.load_state(memory)
    state.history, state.best_map, state.step = resume["history"], resume["best_map"], resume["step"]
    state.done_seconds, state.last_good = resume["train_seconds"], resume["id"]
    state.health_baseline = resume.get("health_baseline")
    state.baselines = resume.get("baselines")
    set_rng_state(resume["rng"])
    state.epoch = resume["epoch"]
    if resume["batch"] is not None:  # stopped inside an epoch: continue it after its batches
        state.skip, state.partial = resume["batch"], resume["partial"]
    if hasattr(state.model, "set_iteration"):
        state.model.set_iteration(state.step)
    log.info("resuming from checkpoint %s: epoch %d%s, step %d", resume["id"], resume["epoch"],
             "" if state.skip == 0 else " after batch %d" % state.skip, state.step)


def load_net(cfg, kind, path, ctx):
    """The run's EmbeddingNet with a checkpoint's weights (``kind`` "net"), or the exported graph
    itself (``kind`` "export"), hybridized; a file that does not fit is a :class:`DmlError`."""
    from .nets import load_weights

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
    from .config import RunConfig

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
    from .runs import evaluated_images

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
    from .data import apply_split, check_same_classes, hold_out_classes, load_dataset
    from .gpus import usable_gpus

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
        from .evaluation import verification_thresholds

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


# ------------------------------------------------------------------------------------------------
# A run as the CLI starts it: every check first (prepare), then the folder and the training (run).


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
    from .data import apply_split, check_same_classes, hold_out_classes, load_dataset

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


# The names these had before each said what it does (dml.evaluation.evaluate is the public one).
evaluate_net, run_evaluation, evaluate_run = embed_and_score, score_for_run, reevaluate
run = train_job  # ("run" now means a run folder only)
