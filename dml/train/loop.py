"""The training loop: one ``train_step``, the learning rate, and :func:`fit` with its default
hooks (stop guard, health monitor, recorder, TensorBoard logger, completer).
"""
import logging
import math

import mxnet as mx
import numpy as np
from mxnet import autograd
from tqdm import tqdm

from ..evaluation import embed, net_contexts
from ..events import Hooks
from ..methods import get_method
from ..runs import RunDir
from .state import TrainState, TrainingInterrupted, set_rng_state
from .guard import StopGuard
from .recorder import RunCompleter, RunRecorder
from .tensorboard import TensorBoardLogger
from .devices import Workers, make_contexts, seed_everything, split_batch
from .builders import (build_loss, build_net, build_train_loader, build_trainer, eval_loader,
                       net_options)
from .scoring import score_for_run, validation_loss

log = logging.getLogger("dml")


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

    Raises :class:`dml.train.TrainingInterrupted` after Ctrl-C or SIGTERM (a checkpoint written)
    and :class:`dml.train.NonFiniteLoss` when the loss or the weights are NaN or infinite
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
    """The :class:`dml.train.TrainState` of a fresh run (model, loss and trainer built and
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
    """The :class:`dml.events.Hooks` of a run of ``cfg``: the stop guard, the health monitor, the
    :class:`dml.train.RunRecorder` and the :class:`dml.train.TensorBoardLogger` of ``run_dir``,
    with ``extra``, in the order of their priorities."""
    method = state.method
    guard = StopGuard(state.model, cfg.log_interval)  # (it is state.guard from train_start on)
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
    return Hooks([guard] + health + [recorder, logger] + completer + list(extra or []))


def experiment_hparams(cfg):
    """The options of ``cfg`` that define the experiment (the seed too): what TensorBoard's
    HParams tab lists for the run."""
    from ..compare import NOT_THE_EXPERIMENT

    return {key: value for key, value in cfg.to_dict().items()
            if key not in NOT_THE_EXPERIMENT or key == "seed"}


def tensorboard_logger(run_dir, cfg, writes=True):
    """The :class:`dml.train.TensorBoardLogger` of a run of ``cfg`` in ``run_dir``."""
    return TensorBoardLogger(run_dir, cfg.epochs, title="%s on %s" % (cfg.method, cfg.dataset),
                             hparams=experiment_hparams(cfg), distance=cfg.distance,
                             projector_points=cfg.projector_points, seed=cfg.seed, writes=writes)


def health_monitor(cfg, splits):
    """The :class:`dml.health.HealthMonitor` of a run: on its validation classes, else on a fixed
    sample of whole training classes."""
    from ..health import HealthMonitor, heldout_sample

    if splits.val is not None:
        dataset, what = splits.val, "the %d validation classes" % len(splits.val_classes)
    else:
        dataset = splits.train.subset(heldout_sample(splits.train, seed=cfg.seed))
        what = "a sample of %d training classes" % len(np.unique(dataset.labels))

    def embed_set(net, data):
        return embed(net, eval_loader(cfg, splits, data), net_contexts(net))

    return HealthMonitor(dataset, embed_set, cfg.distance, what)


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
