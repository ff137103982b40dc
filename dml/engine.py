"""The fit loop: contexts, Trainer/kvstore, progress bars, mxboard, checkpoints, evaluation.

``fit(cfg, splits, run_dir)`` trains ``cfg.method`` on ``splits.train``, writes everything under
``run_dir`` and returns the metrics it wrote to ``metrics.json``. ``evaluate_net``,
``add_projector`` and ``write_figures`` are shared with ``dml evaluate``.
"""
import logging
import os
import random
import shutil
import signal
import threading
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
from .nets import EmbeddingNet, load_weights
from .runs import checkpoint_id, prune_checkpoints, write_atomic, write_failure, write_json

log = logging.getLogger("dml")

EXPORT_PREFIX = "embedding"
BEST_DIR = "best"  # params/best/: the checkpoint with the highest evaluated map_at_r
HISTORY_FILE = "history.json"  # logs/history.json: per-epoch losses and evaluated metrics


def make_contexts(gpus=(), cpus=0):
    """``mx.gpu(i)`` for each of ``gpus``; else ``cpus`` CPU contexts (>1 exercises the multi-device
    code path without GPUs); else one CPU."""
    if gpus:
        from .gpus import check_gpus

        check_gpus(gpus)
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


def build_train_loader(cfg, splits, num_parts=1, part_index=0):
    """The training batches; of a distributed job, worker ``part_index``'s shard."""
    method = get_method(cfg.method)
    dataset = method.train_dataset(cfg, splits.train)
    return BatchLoader(dataset, method.batch_sampler(cfg, dataset, num_parts, part_index),
                       splits.mean, splits.std,
                       augment=splits.augment if cfg.augment else None, seed=cfg.seed,
                       num_workers=cfg.num_workers)


DIST_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_WORKER",
            "DMLC_NUM_SERVER")
_RUN_NAME_KEY = 1 << 24  # an integer kvstore key far above the Trainer's parameter indices
_RUN_NAME_BYTES = 4096


def make_kvstore(kind):
    """The kvstore object of a distributed ``kind`` (``dist_*``), or None: the local kinds are
    created by the Trainer itself. A distributed kvstore needs the environment that MXNet's
    launcher (``dmlc_tracker``, wrapped by ``scripts/launch.py``) gives each process."""
    if not kind.startswith("dist"):
        return None
    missing = [name for name in DIST_ENV if name not in os.environ]
    if missing:
        raise DmlError("--kvstore %s needs the environment of MXNet's launcher (%s not set): start "
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


def train_step(method, model, loss_fn, trainer, batch, ctx, workers=None):
    """One optimization step on ``batch`` split over ``ctx`` -> (loss, stat) as 1-element arrays
    on ``ctx[0]``, not synchronized (the caller decides when to wait). ``workers``: the
    :class:`Workers` of a distributed job, whose gradients the kvstore sums (each worker's loss
    is its batch mean)."""
    parts = split_batch(batch, ctx)
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
    settle()
    total = count = 0.0
    for batch in loader:
        for arrays in split_batch(batch, ctx):
            loss, _ = method.forward(model, loss_fn, *arrays)
            total += loss.asscalar() * arrays[0].shape[0]
            count += arrays[0].shape[0]
    return total / max(count, 1)


def _export(net, directory, epoch):
    """``net.export`` under a temporary prefix, then renamed: a kill never leaves half a file."""
    tmp_prefix = os.path.join(directory, ".tmp-" + EXPORT_PREFIX)
    try:
        net.export(tmp_prefix, epoch=epoch)
    except Exception as err:  # MXNetError "Write incomplete" on a full disk
        for suffix in ("-symbol.json", "-%04d.params" % epoch):
            if os.path.exists(tmp_prefix + suffix):
                os.remove(tmp_prefix + suffix)
        raise write_failure(tmp_prefix + "-%04d.params" % epoch, err) from None
    os.replace(tmp_prefix + "-symbol.json", os.path.join(directory, EXPORT_PREFIX + "-symbol.json"))
    os.replace("%s-%04d.params" % (tmp_prefix, epoch),
               os.path.join(directory, "%s-%04d.params" % (EXPORT_PREFIX, epoch)))


def settle():
    """Wait for every pending operation before the network's state is read (saved, exported or
    evaluated).

    Why: MXNet 1.9's BatchNorm updates its moving mean and variance in its *backward* operator,
    and the engine does not order later readers of those arrays after that write. Without this
    wait, ``save_parameters`` right after a training step stored the moving statistics of an
    earlier step (32-40 arrays of ResNet-18 differed from the network that was then evaluated,
    and a resumed run diverged). The wait is global: no per-array wait covers an untracked
    write.
    """
    mx.nd.waitall()


def export_net(net, params_dir, epoch, input_shape=None):
    """``net.export`` for deployment (``embedding-symbol.json``, ``embedding-<epoch>.params``),
    replacing any earlier export. ``net.export`` needs the net's own hybridized graph: a net
    trained inside a wrapper (SiameseNet, ClassifierNet) first embeds one blank image of
    ``input_shape`` (C x H x W) in inference mode, which changes no state. Returns the params
    file."""
    settle()
    if not net._cached_graph:  # pylint: disable=protected-access
        if input_shape is None:
            raise ValueError("export_net: the net has not run a hybridized forward pass; pass "
                             "input_shape")
        ctx = net.collect_params().list_ctx()[0]
        net(mx.nd.zeros((1,) + tuple(input_shape), ctx=ctx))
        settle()
    _export(net, params_dir, epoch)
    for name in os.listdir(params_dir):
        if name.startswith(EXPORT_PREFIX + "-") and name.endswith(".params") \
                and name != "%s-%04d.params" % (EXPORT_PREFIX, epoch):
            os.remove(os.path.join(params_dir, name))
    return os.path.join(params_dir, "%s-%04d.params" % (EXPORT_PREFIX, epoch))


def save_checkpoint(net, trainer, params_dir, epoch, model=None, state=None, batch=None,
                    save_trainer=True, net_file=None):
    """One checkpoint (see :mod:`dml.runs`): ``net-<id>.params``, ``trainer-<id>.states`` and a
    classifier method's ``classifier-<id>.params``. Each file is written under a temporary name
    and renamed, and ``state-<id>.json`` (``state`` plus the files' sizes) comes last: a kill at
    any moment leaves the previous checkpoint intact and this one ignored. ``net_file``: a file
    that already holds exactly these weights (the final export), hard-linked as
    ``net-<id>.params`` instead of a second copy (:func:`dml.nets.load_weights` reads both
    formats). Returns its id."""
    settle()
    cid = checkpoint_id(epoch, batch)
    files = []

    def save_net(tmp):
        if net_file:
            try:
                os.link(net_file, tmp)
                return
            except OSError:  # no hard links on this file system: a copy of the weights
                pass
        net.save_parameters(tmp)

    saves = [("net-%s.params", save_net)]
    if save_trainer:
        saves.append(("trainer-%s.states", trainer.save_states))
    if model is not None and hasattr(model, "classifier"):
        saves.append(("classifier-%s.params", model.classifier.save_parameters))
    for kind, save in saves:
        write_atomic(save, os.path.join(params_dir, kind % cid))
        files.append(kind % cid)
    state = dict(state or {}, id=cid, epoch=epoch, batch=batch,
                 files={f: os.path.getsize(os.path.join(params_dir, f)) for f in files})
    write_json(os.path.join(params_dir, "state-%s.json" % cid), state)
    return cid


def _link(source, path):
    """``path`` as a hard link to ``source`` (no second copy of the bytes on disk), replacing
    any earlier file atomically; False where the file system has no hard links."""
    tmp = path + ".tmp"
    try:
        if os.path.exists(path) and os.path.samefile(source, path):
            return True  # linked already (a resumed run); rename() of two links to one file
            # would do nothing and leave the temporary link behind
        if os.path.exists(tmp):
            os.remove(tmp)
        os.link(source, tmp)
    except OSError:
        return False
    os.replace(tmp, path)
    return True


def save_best(net, params_dir, epoch, metrics, same_as=None):
    """``params/best/``: ``net.params``, the export (``embedding-symbol.json``,
    ``embedding-0000.params``) and ``best.json`` (its epoch and metrics), written last.
    ``same_as``: ``(net params, export params)`` files already holding this very network (the
    final checkpoint and export), hard-linked instead of written again (90 MB for ResNet-18)."""
    settle()
    best_dir = os.path.join(params_dir, BEST_DIR)
    os.makedirs(best_dir, exist_ok=True)
    net_file, export_file = same_as or (None, None)
    if not (export_file and _link(export_file, os.path.join(best_dir, EXPORT_PREFIX + "-0000.params"))):
        _export(net, best_dir, 0)
    else:
        write_atomic(lambda tmp: shutil.copyfile(
            os.path.join(params_dir, EXPORT_PREFIX + "-symbol.json"), tmp),
            os.path.join(best_dir, EXPORT_PREFIX + "-symbol.json"))
    if not (net_file and _link(net_file, os.path.join(best_dir, "net.params"))):
        write_atomic(net.save_parameters, os.path.join(best_dir, "net.params"))
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


def embed_dataset(cfg, splits, net, ctx, dataset, desc):
    loader = eval_loader(cfg, splits, dataset)
    with tqdm(total=len(loader), desc=desc, unit="batch", disable=None, leave=False) as bar:
        return embed(net, loader, ctx, progress=bar)


def evaluate_net(cfg, splits, net, ctx, full=True):
    """Embed ``splits.test`` and score it -> ``(metrics, embeddings, labels)``. ``full`` adds the
    clustering metrics, ``knn_accuracy`` (which embeds ``splits.references`` too) and, for the
    siamese method, ``verification_auc`` on its fixed validation pairs; otherwise only the
    retrieval metrics (cheap enough for every ``--eval-period`` epochs)."""
    settle()
    embeddings, labels = embed_dataset(cfg, splits, net, ctx, splits.test,
                                       "embedding %s split" % splits.split)
    check_embeddings(embeddings, splits.split)
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


def _log_epoch(writer, record, stat):
    """An epoch's history record as TensorBoard scalars (at step = epoch)."""
    epoch = record["epoch"]
    writer.add_scalar("train/epoch_loss", record["train_loss"], global_step=epoch)
    writer.add_scalar("train/learning_rate", record["learning_rate"], global_step=epoch)
    writer.add_scalar("train/" + stat, record[stat], global_step=epoch)
    if "val_loss" in record:
        writer.add_scalar("val/loss", record["val_loss"], global_step=epoch)
    _log_eval(writer, record, epoch, METRIC_KEYS)
    writer.flush()


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run stopped cleanly; ``checkpoint`` is the id of the checkpoint it
    wrote, ``signum`` the signal that asked for the stop."""

    def __init__(self, checkpoint, signum=signal.SIGINT):
        super().__init__("interrupted")
        self.checkpoint = checkpoint
        self.signum = signum


class NonFiniteLoss(FloatingPointError):
    """The loss or the weights became NaN or infinite; ``checkpoint`` is the last good
    checkpoint's id (or None), written before they went bad and left as it was."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


class _NullWriter:
    """What workers other than rank 0 log to: nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def non_finite_parameters(block):
    """The names of ``block``'s parameters (weights and BatchNorm statistics) that hold a NaN or
    an infinity; one host synchronisation when every one is finite."""
    arrays = [(name, p.list_data()[0]) for name, p in block.collect_params().items()
              if p._data is not None]  # pylint: disable=protected-access
    if not arrays:
        return []
    poison = mx.nd.add_n(*[(a * 0).sum().as_in_context(arrays[0][1].context) for _, a in arrays])
    if np.isfinite(poison.asscalar()):
        return []
    return [name for name, a in arrays if not np.isfinite((a * 0).sum().asscalar())]


_STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class StopGuard:
    """What stops a run early: a signal, or a value that is no longer finite.

    While active, Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and ``timeout`` send before
    killing) only set ``requested``: the loop finishes its step, writes a checkpoint and stops. A
    second signal interrupts at once. Signals are caught only in the main thread.

    :meth:`check` is the one non-finite check: the loss (NaN whenever an embedding is, see
    :func:`dml.losses.base.propagate_non_finite`) and every parameter of ``model``.
    """

    def __init__(self, model):
        self.model = model
        self.requested = None  # the signal number once a stop was asked for
        self._previous = {}

    def _handle(self, signum, frame):
        self.requested = signum
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        log.warning("%s: stopping after this step with a checkpoint (again to stop at once)",
                    _STOP_SIGNALS.get(signum, signum))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False

    def check(self, loss, where, last_good):
        """Raise :class:`NonFiniteLoss` when ``loss`` (a number or 1-element array) or a
        parameter is NaN or infinite; ``where`` says when (``"at step 40 (epoch 2)"``)."""
        value = float(loss.asscalar() if hasattr(loss, "asscalar") else loss)
        if not np.isfinite(value):
            raise NonFiniteLoss("the loss is %s %s" % (value, where), last_good)
        bad = non_finite_parameters(self.model)
        if bad:
            raise NonFiniteLoss("the weights hold NaN or inf %s (%d arrays, first %s)"
                                % (where, len(bad), bad[0]), last_good)
        return value


def rng_state():
    """numpy's and Python's global RNG states (the random selectors draw from numpy's), as JSON."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state):
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def learning_rate_at(cfg, epoch):
    """The learning rate of ``epoch`` (1-based): ``cfg.lr`` times ``lr_factor`` per step passed."""
    lr = cfg.lr
    for boundary in range(1, epoch):
        if boundary in cfg.lr_steps:
            lr *= cfg.lr_factor
    return lr


def load_checkpoint(run_dir, state, net, model, trainer, ctx):
    """Load a complete checkpoint's (a state of :func:`dml.runs.complete_checkpoints`) weights
    and, when it has them, the trainer's optimizer states."""
    params_dir = os.path.join(run_dir, "params")
    cid = state["id"]
    load_weights(net, os.path.join(params_dir, "net-%s.params" % cid), ctx=ctx)
    classifier = "classifier-%s.params" % cid
    if classifier in state["files"]:
        model.classifier.load_parameters(os.path.join(params_dir, classifier), ctx=ctx)
    states = "trainer-%s.states" % cid
    if states in state["files"]:
        trainer.load_states(os.path.join(params_dir, states))
    else:
        log.warning("checkpoint %s holds no optimizer states (dist_async): the optimizer restarts",
                    cid)


def fit(cfg, splits, run_dir, net=None, ctx=None, resume=None, workers=None):
    """Train, checkpoint, log and evaluate. ``net`` and ``ctx`` may be built beforehand (the CLI
    does, so that a bad backbone or --gpus fails before the run folder exists). ``resume``: a
    complete checkpoint's state (:func:`dml.runs.complete_checkpoints`) of ``run_dir`` to continue
    from. ``workers``: a :class:`Workers` of a distributed job (only rank 0 writes, evaluates and
    returns metrics; the others return None).

    Raises :class:`TrainingInterrupted` after Ctrl-C or SIGTERM (a checkpoint written) and
    :class:`NonFiniteLoss` when the loss or the weights are NaN or infinite (nothing written after
    the last good checkpoint)."""
    from mxboard import SummaryWriter

    workers = workers or Workers()
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
    trainer = build_trainer(cfg, model, workers)
    loader = build_train_loader(cfg, splits, workers.count, workers.rank)
    val_set = method.val_dataset(cfg, splits.test)
    val_loader = eval_loader(cfg, splits, val_set) if val_set is not None else None
    batch_shape = ("%d x %d images" % (cfg.n_classes, cfg.n_samples) if method.pk_batches
                   else "%d %s" % (cfg.batch_size, method.batch_unit))
    log.info("training %s (%s) on %s: %d train / %d %s images, %d batches of %s per epoch%s, on %s",
             cfg.method, method.summary, cfg.dataset, len(splits.train), len(splits.test),
             splits.split, len(loader), batch_shape,
             " (worker %d of %d)" % (workers.rank, workers.count) if workers.count > 1 else "",
             ", ".join(str(c) for c in ctx))
    stat = method.stat

    writer = SummaryWriter(logdir=logs_dir, flush_secs=10) if workers.writes else _NullWriter()
    history, best_map, step, done_seconds = [], -1.0, 0, 0.0
    first_epoch, skip, partial, last_good = 1, 0, None, None
    if resume is not None:
        load_checkpoint(run_dir, resume, net, model, trainer, ctx)
        history, best_map, step = resume["history"], resume["best_map"], resume["step"]
        done_seconds, last_good = resume["train_seconds"], resume["id"]
        set_rng_state(resume["rng"])
        if resume["batch"] is None:
            first_epoch = resume["epoch"] + 1
        else:  # stopped inside an epoch: continue it after the batches it did
            first_epoch, skip = resume["epoch"], resume["batch"]
            partial = resume["partial"]
        if hasattr(model, "set_iteration"):
            model.set_iteration(step)
        # TensorBoard drops what the stopped process logged after the checkpoint ...
        _session_start(writer, step + 1)
        if history:  # ... and gets the checkpoint's epoch again, in case it was never flushed
            _log_epoch(writer, history[-1], stat)
        log.info("resuming from checkpoint %s: epoch %d%s, step %d", resume["id"], resume["epoch"],
                 "" if skip == 0 else " after batch %d" % skip, step)

    started = time.time()
    input_shape = None  # one image's C x H x W, for the final export (see export_net)

    def elapsed():  # training seconds, the stopped processes' included
        return done_seconds + time.time() - started

    def train_state(epoch_sums=None):
        return {"step": step, "best_map": best_map, "history": history, "rng": rng_state(),
                "train_seconds": round(elapsed(), 3),
                "method": cfg.method, "partial": epoch_sums}

    def checkpoint(epoch, batch=None, epoch_sums=None):
        if not workers.writes:
            return None
        net_file = None
        if epoch == cfg.epochs and batch is None:  # the final weights: exported, kept once
            net_file = export_net(net, params_dir, epoch, input_shape)
        cid = save_checkpoint(net, trainer, params_dir, epoch, model, train_state(epoch_sums),
                              batch=batch, save_trainer=workers.saves_trainer, net_file=net_file)
        prune_checkpoints(run_dir, cfg.keep_checkpoints)
        return cid

    stop = StopGuard(model)
    try:
        with stop:
            for epoch in range(first_epoch, cfg.epochs + 1):
                trainer.set_learning_rate(learning_rate_at(cfg, epoch))
                loader.set_epoch(epoch - 1, skip=skip)
                epoch_loss = epoch_stat = None
                seen = 0
                if partial is not None:
                    epoch_loss = mx.nd.array([partial["loss_sum"]], ctx=ctx[0])
                    epoch_stat = mx.nd.array([partial["stat_sum"]], ctx=ctx[0])
                    seen = partial["batches"]
                with tqdm(total=len(loader), initial=skip, desc="epoch %d/%d" % (epoch, cfg.epochs),
                          unit="batch", disable=None, leave=False, dynamic_ncols=True) as bar:
                    skip, partial = 0, None
                    for batch in loader:
                        input_shape = batch[0].shape[1:]
                        batch_loss, batch_stat = train_step(method, model, loss_fn, trainer, batch,
                                                            ctx, workers)
                        step += 1
                        seen += 1
                        epoch_loss = batch_loss if epoch_loss is None else epoch_loss + batch_loss
                        epoch_stat = batch_stat if epoch_stat is None else epoch_stat + batch_stat
                        if step % cfg.log_interval == 0:  # the only host synchronisation
                            value = stop.check(batch_loss, "at step %d (epoch %d)"
                                               % (step, epoch), last_good)
                            writer.add_scalar("train/batch_loss", value, global_step=step)
                            bar.set_postfix(loss="%.4f" % (epoch_loss.asscalar() / seen))
                        bar.update(1)
                        if stop.requested and seen < len(loader):
                            loss_sum = stop.check(epoch_loss, "in epoch %d" % epoch, last_good)
                            raise TrainingInterrupted(checkpoint(epoch, seen, {
                                "loss_sum": loss_sum, "stat_sum": float(epoch_stat.asscalar()),
                                "batches": seen}), stop.requested)
                mean_loss = stop.check(epoch_loss, "in epoch %d" % epoch, last_good) / max(seen, 1)
                mean_stat = epoch_stat.asscalar() / max(seen, 1)
                record = {"epoch": epoch, "train_loss": mean_loss, stat: mean_stat,
                          "learning_rate": trainer.learning_rate}
                val_text = ""
                if val_loader is not None:
                    record["val_loss"] = validation_loss(method, model, loss_fn, val_loader, ctx)
                    val_text = ", val loss %.4f" % record["val_loss"]
                # the last epoch is evaluated in full below
                if (workers.writes and cfg.eval_period and epoch % cfg.eval_period == 0
                        and epoch != cfg.epochs):
                    metrics, embeddings, labels = evaluate_net(cfg, splits, net, ctx, full=False)
                    record.update((k, metrics[k]) for k in METRIC_KEYS if k in metrics)
                    val_text += ", map_at_r %.4f" % metrics["map_at_r"]
                    if metrics["map_at_r"] > best_map:
                        best_map = metrics["map_at_r"]
                        save_best(net, params_dir, epoch, metrics)
                    add_projector(writer, embeddings, labels, splits.test, splits.class_names,
                                  projector_sample(len(labels), cfg.projector_points, cfg.seed),
                                  epoch)
                history.append(record)
                if (cfg.save_period and epoch % cfg.save_period == 0) or epoch == cfg.epochs \
                        or stop.requested:
                    last_good = checkpoint(epoch)
                # logged after the checkpoint: a resumed run never logs an epoch twice
                _log_epoch(writer, record, stat)
                if workers.writes:
                    write_json(os.path.join(logs_dir, HISTORY_FILE), history)
                log.info("epoch %d/%d: loss %.4f, %s %.3f%s, lr %g, %.0f s", epoch, cfg.epochs,
                         mean_loss, stat.replace("_", " "), mean_stat, val_text,
                         trainer.learning_rate, elapsed())
                if stop.requested and epoch < cfg.epochs:
                    raise TrainingInterrupted(last_good, stop.requested)
        # a worker's last gradient push must reach the servers before it exits (MXNet stops its
        # engine at exit without finishing it, and the other workers would wait for ever)
        mx.nd.waitall()
        train_seconds = elapsed()
        if not workers.writes:
            return None

        metrics, embeddings, labels = evaluate_net(cfg, splits, net, ctx, full=True)
        if metrics["map_at_r"] > best_map:
            final = os.path.join(params_dir, "net-%s.params" % last_good) if last_good else None
            save_best(net, params_dir, cfg.epochs, metrics, same_as=(
                final if final and os.path.isfile(final) and last_good == checkpoint_id(cfg.epochs)
                else None, os.path.join(params_dir, "%s-%04d.params" % (EXPORT_PREFIX, cfg.epochs))))
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


def _session_start(writer, step):
    """A SessionLog START event at ``step``: TensorBoard discards the events of earlier files at
    this step or later (what a killed process logged after its last checkpoint)."""
    if isinstance(writer, _NullWriter):
        return
    from mxboard.proto import event_pb2

    writer._file_writer.add_event(event_pb2.Event(  # pylint: disable=protected-access
        wall_time=time.time(), step=step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
