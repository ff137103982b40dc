"""The fit loop: contexts, Trainer/kvstore, progress bars, mxboard, checkpoints, final evaluation.

``fit(cfg, splits, run_dir)`` trains ``cfg.method`` on ``splits.train``, writes everything under
``run_dir`` and returns the metrics it wrote to ``metrics.json``.
"""
import logging
import os
import random
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from tqdm import tqdm

from . import DmlError
from .data import BatchLoader, SequentialBatches
from .evaluation import embed, retrieval_metrics
from .losses import mining
from .methods import get_method
from .nets import EmbeddingNet
from .runs import write_json

log = logging.getLogger("dml")

EXPORT_PREFIX = "embedding"


def make_contexts(gpus=(), cpus=0):
    """``mx.gpu(i)`` for each of ``gpus``; else ``cpus`` CPU contexts (>1 exercises the multi-device
    code path without GPUs); else one CPU."""
    if gpus:
        available = mx.context.num_gpus()
        missing = [g for g in gpus if g >= available]
        if missing:
            raise DmlError("--gpus %s: this machine's mxnet sees %d GPU(s)%s: drop --gpus to train "
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


def build_net(cfg, ctx):
    net = EmbeddingNet(embedding_dim=cfg.embedding_dim, backbone=cfg.backbone,
                       l2_normalize=cfg.l2_normalize, pretrained=cfg.pretrained)
    if cfg.pretrained:
        net.embedding.initialize(mx.init.Xavier(), ctx=ctx)
        net.features.collect_params().reset_ctx(ctx)
    else:
        net.initialize(mx.init.Xavier(magnitude=2), ctx=ctx)
    return net


def build_loss(cfg):
    return get_method(cfg.method).build_loss(cfg)


def build_train_loader(cfg, splits):
    method = get_method(cfg.method)
    dataset = method.train_dataset(cfg, splits.train)
    return BatchLoader(dataset, method.batch_sampler(cfg, dataset), splits.mean, splits.std,
                       augment=splits.augment if cfg.augment else None, seed=cfg.seed,
                       num_workers=cfg.num_workers)


def eval_loader(cfg, splits, dataset):
    return BatchLoader(dataset, SequentialBatches(len(dataset), cfg.eval_batch_size), splits.mean,
                       splits.std, augment=None, num_workers=cfg.num_workers)


def validation_loss(method, model, loss_fn, loader, ctx):
    """Mean loss over a fixed tuple set (inference mode: BatchNorm uses running statistics)."""
    total = count = 0.0
    for batch in loader:
        parts = [gluon.utils.split_and_load(a, ctx, even_split=False) for a in batch]
        for arrays in zip(*parts):
            loss, _ = method.forward(model, loss_fn, *arrays)
            total += loss.asscalar() * arrays[0].shape[0]
            count += arrays[0].shape[0]
    return total / max(count, 1)


def save_checkpoint(net, trainer, params_dir, epoch, model=None):
    """``net.export`` (symbol + params, for deployment), ``save_parameters`` and the trainer
    states, each written under a temporary name and renamed, so a kill never leaves half a file.
    A softmax ``model``'s classifier goes to ``classifier-%04d.params`` (the trainer states
    cover it too). ``net`` must have run a hybridized forward pass (the export traces it)."""
    tmp_prefix = os.path.join(params_dir, ".tmp-" + EXPORT_PREFIX)
    net.export(tmp_prefix, epoch=epoch)
    os.replace(tmp_prefix + "-symbol.json", os.path.join(params_dir, EXPORT_PREFIX + "-symbol.json"))
    os.replace("%s-%04d.params" % (tmp_prefix, epoch),
                  os.path.join(params_dir, "%s-%04d.params" % (EXPORT_PREFIX, epoch)))
    saves = [("net-%04d.params", net.save_parameters), ("trainer-%04d.states", trainer.save_states)]
    if model is not None and hasattr(model, "classifier"):
        saves.append(("classifier-%04d.params", model.classifier.save_parameters))
    for kind, save in saves:
        final = os.path.join(params_dir, kind % epoch)
        save(final + ".tmp")
        os.replace(final + ".tmp", final)


def add_projector(writer, embeddings, labels, dataset, class_names, max_points, seed, step):
    """The test embedding in TensorBoard's projector, with class names and sprite images."""
    n = len(labels)
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[:max_points])
    images, _ = dataset.batch(chosen)
    writer.add_embedding("test_embedding", embeddings[chosen],
                         labels=[class_names[int(c)] for c in labels[chosen]],
                         images=images.transpose(0, 3, 1, 2), global_step=step)


def evaluate_embedding(cfg, splits, net, ctx, desc="embedding test split"):
    loader = eval_loader(cfg, splits, splits.test)
    with tqdm(total=len(loader), desc=desc, unit="batch", disable=None, leave=False) as bar:
        embeddings, labels = embed(net, loader, ctx, progress=bar)
    return embeddings, labels


def fit(cfg, splits, run_dir, net=None, ctx=None):
    """Train, checkpoint, log and evaluate. ``net`` and ``ctx`` may be built beforehand (the CLI
    does, so that a bad backbone or --gpus fails before the run folder exists)."""
    from mxboard import SummaryWriter

    if ctx is None:
        ctx = make_contexts(cfg.gpus, cfg.cpus)
    if net is None:
        seed_everything(cfg.seed)
        net = build_net(cfg, ctx)
    logs_dir = os.path.join(run_dir, "logs")
    params_dir = os.path.join(run_dir, "params")

    mining.reset_warnings()
    method = get_method(cfg.method)
    model = method.build_model(net, splits.num_classes, ctx)
    model.hybridize(static_alloc=True, static_shape=True)
    loss_fn = build_loss(cfg)
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    opt_params = {"learning_rate": cfg.lr, "wd": cfg.wd}
    if cfg.optimizer == "sgd":
        opt_params["momentum"] = cfg.momentum
    trainer = gluon.Trainer(model.collect_params(), cfg.optimizer, opt_params, kvstore=cfg.kvstore)
    loader = build_train_loader(cfg, splits)
    val_set = method.val_dataset(cfg, splits.test)
    val_loader = eval_loader(cfg, splits, val_set) if val_set is not None else None
    batch_shape = ("%d x %d images" % (cfg.n_classes, cfg.n_samples) if method.pk_batches
                   else "%d %s" % (cfg.batch_size, method.batch_unit))
    log.info("training %s (%s) on %s: %d train / %d test images, %d batches of %s per epoch, on %s",
             cfg.method, method.summary, cfg.dataset, len(splits.train), len(splits.test),
             len(loader), batch_shape, ", ".join(str(c) for c in ctx))
    stat = method.stat

    writer = SummaryWriter(logdir=logs_dir, flush_secs=10)
    step = 0
    started = time.time()
    try:
        for epoch in range(1, cfg.epochs + 1):
            if epoch - 1 in cfg.lr_steps:
                trainer.set_learning_rate(trainer.learning_rate * cfg.lr_factor)
            epoch_loss = epoch_stat = None
            seen = 0
            with tqdm(total=len(loader), desc="epoch %d/%d" % (epoch, cfg.epochs), unit="batch",
                      disable=None, leave=False, dynamic_ncols=True) as bar:
                for batch in loader:
                    parts = [gluon.utils.split_and_load(a, ctx, even_split=False) for a in batch]
                    with autograd.record():
                        results = [method.forward(model, loss_fn, *arrays) for arrays in zip(*parts)]
                    autograd.backward([loss for loss, _ in results])
                    # each device's loss is a batch mean: average the devices' gradients
                    trainer.step(len(ctx))
                    step += 1
                    seen += 1
                    batch_loss = sum(loss.as_in_context(ctx[0]) for loss, _ in results) / len(ctx)
                    batch_stat = sum(a.as_in_context(ctx[0]) for _, a in results) / len(ctx)
                    epoch_loss = batch_loss if epoch_loss is None else epoch_loss + batch_loss
                    epoch_stat = batch_stat if epoch_stat is None else epoch_stat + batch_stat
                    if step % cfg.log_interval == 0:  # the only host synchronisation in the loop
                        value = batch_loss.asscalar()
                        if not np.isfinite(value):
                            raise FloatingPointError("loss is %s at step %d" % (value, step))
                        writer.add_scalar("train/batch_loss", value, global_step=step)
                        bar.set_postfix(loss="%.4f" % (epoch_loss.asscalar() / seen))
                    bar.update(1)
            mean_loss = epoch_loss.asscalar() / seen if seen else float("nan")
            mean_stat = epoch_stat.asscalar() / seen if seen else float("nan")
            if not np.isfinite(mean_loss):
                raise FloatingPointError("epoch %d loss is %s" % (epoch, mean_loss))
            writer.add_scalar("train/epoch_loss", mean_loss, global_step=epoch)
            writer.add_scalar("train/learning_rate", trainer.learning_rate, global_step=epoch)
            writer.add_scalar("train/" + stat, mean_stat, global_step=epoch)
            val_text = ""
            if val_loader is not None:
                val = validation_loss(method, model, loss_fn, val_loader, ctx)
                writer.add_scalar("val/loss", val, global_step=epoch)
                val_text = ", val loss %.4f" % val
            log.info("epoch %d/%d: loss %.4f, %s %.3f%s, lr %g, %.0f s", epoch, cfg.epochs,
                     mean_loss, stat.replace("_", " "), mean_stat, val_text, trainer.learning_rate,
                     time.time() - started)
            if cfg.save_period and epoch % cfg.save_period == 0 and epoch != cfg.epochs:
                embeddings, labels = evaluate_embedding(cfg, splits, net, ctx)
                save_checkpoint(net, trainer, params_dir, epoch, model)
                add_projector(writer, embeddings, labels, splits.test, splits.class_names,
                              cfg.projector_points, cfg.seed, epoch)
        train_seconds = time.time() - started

        embeddings, labels = evaluate_embedding(cfg, splits, net, ctx)
        save_checkpoint(net, trainer, params_dir, cfg.epochs, model)
        add_projector(writer, embeddings, labels, splits.test, splits.class_names,
                      cfg.projector_points, cfg.seed, cfg.epochs)
    finally:
        writer.close()

    metrics = retrieval_metrics(embeddings, labels, cfg.distance)
    metrics.update(split="test", embedding_dim=cfg.embedding_dim, epochs=cfg.epochs,
                   train_seconds=round(train_seconds, 2))
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return metrics
