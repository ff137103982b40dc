"""The fit loop: contexts, Trainer/kvstore, progress bars, mxboard, checkpoints, evaluation.

``fit(cfg, splits, run_dir)`` trains ``cfg.method`` on ``splits.train``, writes everything under
``run_dir`` and returns the metrics it wrote to ``metrics.json``. ``evaluate_net``,
``add_projector`` and ``write_figures`` are shared with ``dml evaluate``.
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
from . import plots
from .evaluation import METRIC_KEYS, all_metrics, embed, retrieval_metrics
from .losses import mining
from .methods import get_method
from .nets import EmbeddingNet
from .runs import write_json

log = logging.getLogger("dml")

EXPORT_PREFIX = "embedding"
BEST_DIR = "best"  # params/best/: the checkpoint with the highest evaluated map_at_r
HISTORY_FILE = "history.json"  # logs/history.json: per-epoch losses and evaluated metrics


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


def build_trainer(cfg, model):
    opt_params = {"learning_rate": cfg.lr, "wd": cfg.wd}
    if cfg.optimizer == "sgd":
        opt_params["momentum"] = cfg.momentum
    return gluon.Trainer(model.collect_params(), cfg.optimizer, opt_params, kvstore=cfg.kvstore)


def train_step(method, model, loss_fn, trainer, batch, ctx):
    """One optimization step on ``batch`` split over ``ctx`` -> (loss, stat) as 1-element arrays
    on ``ctx[0]``, not synchronized (the caller decides when to wait)."""
    parts = [gluon.utils.split_and_load(a, ctx, even_split=False) for a in batch]
    with autograd.record():
        results = [method.forward(model, loss_fn, *arrays) for arrays in zip(*parts)]
    autograd.backward([loss for loss, _ in results])
    # each device's loss is a batch mean: average the devices' gradients
    trainer.step(len(ctx))
    batch_loss = sum(loss.as_in_context(ctx[0]) for loss, _ in results) / len(ctx)
    batch_stat = sum(a.as_in_context(ctx[0]) for _, a in results) / len(ctx)
    return batch_loss, batch_stat


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


def _export(net, directory, epoch):
    """``net.export`` under a temporary prefix, then renamed: a kill never leaves half a file."""
    tmp_prefix = os.path.join(directory, ".tmp-" + EXPORT_PREFIX)
    net.export(tmp_prefix, epoch=epoch)
    os.replace(tmp_prefix + "-symbol.json", os.path.join(directory, EXPORT_PREFIX + "-symbol.json"))
    os.replace("%s-%04d.params" % (tmp_prefix, epoch),
               os.path.join(directory, "%s-%04d.params" % (EXPORT_PREFIX, epoch)))


def _save_atomic(save, path):
    save(path + ".tmp")
    os.replace(path + ".tmp", path)


def save_checkpoint(net, trainer, params_dir, epoch, model=None):
    """``net.export`` (symbol + params, for deployment), ``save_parameters`` and the trainer
    states, each written under a temporary name and renamed, so a kill never leaves half a file.
    A softmax ``model``'s classifier goes to ``classifier-%04d.params`` (the trainer states
    cover it too). ``net`` must have run a hybridized forward pass (the export traces it)."""
    _export(net, params_dir, epoch)
    saves = [("net-%04d.params", net.save_parameters), ("trainer-%04d.states", trainer.save_states)]
    if model is not None and hasattr(model, "classifier"):
        saves.append(("classifier-%04d.params", model.classifier.save_parameters))
    for kind, save in saves:
        _save_atomic(save, os.path.join(params_dir, kind % epoch))


def save_best(net, params_dir, epoch, metrics):
    """``params/best/``: ``net.params``, the export (``embedding-symbol.json``,
    ``embedding-0000.params``) and ``best.json`` (its epoch and metrics), written last."""
    best_dir = os.path.join(params_dir, BEST_DIR)
    os.makedirs(best_dir, exist_ok=True)
    _export(net, best_dir, 0)
    _save_atomic(net.save_parameters, os.path.join(best_dir, "net.params"))
    write_json(os.path.join(best_dir, "best.json"), dict(metrics, epoch=epoch))


def projector_sample(n, max_points, seed):
    """The (sorted) indices of the at most ``max_points`` test embeddings that are pictured."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_points])


def _drop_projector_entry(logdir, data_dir):
    """Forget an earlier embedding of the same name (mxboard would list it twice)."""
    import shutil

    shutil.rmtree(os.path.join(logdir, data_dir), ignore_errors=True)
    config = os.path.join(logdir, "projector_config.pbtxt")
    if not os.path.isfile(config):
        return
    with open(config, encoding="utf-8") as f:
        blocks = ["embeddings {" + b for b in f.read().split("embeddings {") if b.strip()]
    kept = [b for b in blocks if 'tensor_name: "%s"' % data_dir not in b]
    with open(config + ".tmp", "w", encoding="utf-8") as f:
        f.write("".join(kept))
    os.replace(config + ".tmp", config)


def add_projector(writer, embeddings, labels, dataset, class_names, chosen, step,
                  tag="test_embedding"):
    """The embeddings ``chosen`` in TensorBoard's projector, with class names and sprite images."""
    _drop_projector_entry(writer.get_logdir(), "%s_%s" % (tag, str(step).zfill(6)))
    images, _ = dataset.batch(chosen)
    writer.add_embedding(tag, embeddings[chosen],
                         labels=[class_names[int(c)] for c in labels[chosen]],
                         images=images.transpose(0, 3, 1, 2), global_step=step)


def embed_dataset(cfg, splits, net, ctx, dataset, desc):
    loader = eval_loader(cfg, splits, dataset)
    with tqdm(total=len(loader), desc=desc, unit="batch", disable=None, leave=False) as bar:
        return embed(net, loader, ctx, progress=bar)


def evaluate_net(cfg, splits, net, ctx, full=True):
    """Embed ``splits.test`` and score it -> ``(metrics, embeddings, labels)``. ``full`` adds the
    clustering metrics, ``knn_accuracy`` (which embeds ``splits.references`` too) and, for the
    siamese method, ``verification_auc`` on its fixed validation pairs; otherwise only the
    retrieval metrics (cheap enough for every ``--eval-period`` epochs)."""
    embeddings, labels = embed_dataset(cfg, splits, net, ctx, splits.test,
                                       "embedding %s split" % splits.split)
    if full:
        references, reference_labels = embed_dataset(cfg, splits, net, ctx, splits.references,
                                                      "embedding kNN references")
        method = get_method(cfg.method)
        pairs = method.val_dataset(cfg, splits.test).tuples if method.verification else None
        metrics = all_metrics(embeddings, labels, references, reference_labels, cfg.distance,
                              pairs=pairs, seed=cfg.seed)
    else:
        metrics = retrieval_metrics(embeddings, labels, cfg.distance)
    metrics["split"] = splits.split
    return metrics, embeddings, labels


def write_figures(writer, run_dir, cfg, splits, embeddings, labels, history, step, name=None):
    """``plots/loss.png`` (when there is a history) and ``plots/embedding_<name>.png`` in the run
    folder, and the same pictures in TensorBoard's image tab. Returns the paths written."""
    plots_dir = os.path.join(run_dir, "plots")
    name = name or splits.split
    written = []
    if history:
        written.append(("plots/loss", plots.loss_curve(
            history, os.path.join(plots_dir, "loss.png"),
            title="%s on %s: training loss" % (cfg.method, cfg.dataset))))
    chosen = projector_sample(len(labels), cfg.projector_points, cfg.seed)
    how = "t-SNE of the" if embeddings.shape[1] > 2 else "the"
    points = plots.embedding_2d(embeddings[chosen], seed=cfg.seed)
    written.append(("plots/embedding_" + name, plots.embedding_scatter(
        points, labels[chosen], splits.class_names,
        os.path.join(plots_dir, "embedding_%s.png" % name),
        title="%s on %s: %s %d-D %s embedding (epoch %d)" % (
            cfg.method, cfg.dataset, how, embeddings.shape[1], splits.split, step))))
    for tag, path in written:
        writer.add_image(tag, plots.png_to_chw(path), global_step=step)
    return [path for _, path in written]


def _log_eval(writer, metrics, epoch, keys):
    for key in keys:
        if key in metrics:
            writer.add_scalar("eval/" + key, metrics[key], global_step=epoch)


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
    # labels keep their values under --split unseen: the classifier covers the training labels
    model = method.build_model(net, int(np.max(splits.train.labels)) + 1, ctx, cfg)
    model.hybridize(static_alloc=True, static_shape=True)
    loss_fn = build_loss(cfg)
    loss_fn.hybridize(static_alloc=True, static_shape=True)
    trainer = build_trainer(cfg, model)
    loader = build_train_loader(cfg, splits)
    val_set = method.val_dataset(cfg, splits.test)
    val_loader = eval_loader(cfg, splits, val_set) if val_set is not None else None
    batch_shape = ("%d x %d images" % (cfg.n_classes, cfg.n_samples) if method.pk_batches
                   else "%d %s" % (cfg.batch_size, method.batch_unit))
    log.info("training %s (%s) on %s: %d train / %d %s images, %d batches of %s per epoch, on %s",
             cfg.method, method.summary, cfg.dataset, len(splits.train), len(splits.test),
             splits.split, len(loader), batch_shape, ", ".join(str(c) for c in ctx))
    stat = method.stat

    writer = SummaryWriter(logdir=logs_dir, flush_secs=10)
    history = []
    best_map = -1.0
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
                    batch_loss, batch_stat = train_step(method, model, loss_fn, trainer, batch, ctx)
                    step += 1
                    seen += 1
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
            record = {"epoch": epoch, "train_loss": mean_loss, stat: mean_stat,
                      "learning_rate": trainer.learning_rate}
            val_text = ""
            if val_loader is not None:
                val = validation_loss(method, model, loss_fn, val_loader, ctx)
                writer.add_scalar("val/loss", val, global_step=epoch)
                record["val_loss"] = val
                val_text = ", val loss %.4f" % val
            if epoch != cfg.epochs:  # the last epoch is evaluated in full below
                eval_due = bool(cfg.eval_period) and epoch % cfg.eval_period == 0
                save_due = bool(cfg.save_period) and epoch % cfg.save_period == 0
                if eval_due or save_due:
                    metrics, embeddings, labels = evaluate_net(cfg, splits, net, ctx, full=False)
                if eval_due:
                    _log_eval(writer, metrics, epoch, METRIC_KEYS)
                    record.update((k, metrics[k]) for k in METRIC_KEYS if k in metrics)
                    val_text += ", map_at_r %.4f" % metrics["map_at_r"]
                    if metrics["map_at_r"] > best_map:
                        best_map = metrics["map_at_r"]
                        save_best(net, params_dir, epoch, metrics)
                if save_due:
                    save_checkpoint(net, trainer, params_dir, epoch, model)
                    add_projector(writer, embeddings, labels, splits.test, splits.class_names,
                                  projector_sample(len(labels), cfg.projector_points, cfg.seed),
                                  epoch)
            history.append(record)
            write_json(os.path.join(logs_dir, HISTORY_FILE), history)
            log.info("epoch %d/%d: loss %.4f, %s %.3f%s, lr %g, %.0f s", epoch, cfg.epochs,
                     mean_loss, stat.replace("_", " "), mean_stat, val_text, trainer.learning_rate,
                     time.time() - started)
        train_seconds = time.time() - started

        metrics, embeddings, labels = evaluate_net(cfg, splits, net, ctx, full=True)
        save_checkpoint(net, trainer, params_dir, cfg.epochs, model)
        if metrics["map_at_r"] > best_map:
            save_best(net, params_dir, cfg.epochs, metrics)
        _log_eval(writer, metrics, cfg.epochs, METRIC_KEYS + ("verification_auc",))
        history[-1].update((k, metrics[k]) for k in METRIC_KEYS if k in metrics)
        write_json(os.path.join(logs_dir, HISTORY_FILE), history)
        add_projector(writer, embeddings, labels, splits.test, splits.class_names,
                      projector_sample(len(labels), cfg.projector_points, cfg.seed), cfg.epochs,
                      tag="%s_embedding" % splits.split)
        write_figures(writer, run_dir, cfg, splits, embeddings, labels, history, cfg.epochs)
    finally:
        writer.close()

    metrics.update(embedding_dim=cfg.embedding_dim, epochs=cfg.epochs, checkpoint="last",
                   train_seconds=round(train_seconds, 2))
    write_json(os.path.join(run_dir, "metrics.json"), metrics)
    return metrics
