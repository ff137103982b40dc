"""The run folder and :class:`RunDir`, the only code that names a file inside it; finding runs.
"""
import os
import shutil
import time

from ..errors import DmlError
from .files import (_FILE_MODE, _link, _listdir, _save_npz, read_json, write_atomic, write_failure,
                    write_json)
from .checkpoints import (_EXPORT_PARAMS, _exportable, checkpoint_id, complete_checkpoints,
                          prune_checkpoints, remove_partial_files, resolve_checkpoint,
                          wait_for_mxnet)


def create_run_dir(output_root, dataset, method, now=None):
    """Create and return a fresh run folder (``-2``, ``-3``, ... when the minute is taken)."""
    stamp = time.strftime("%Y%m%d%H%M", time.localtime(now))
    parent = os.path.normpath(os.path.join(output_root, dataset, method))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise DmlError("cannot write to output_root=%s (%s): pass a writable folder"
                       % (output_root, err.strerror or err)) from None
    if not os.access(parent, os.W_OK):
        raise DmlError("cannot write to output_root=%s: pass a writable folder" % output_root)
    suffix = 1
    while True:
        name = stamp if suffix == 1 else "%s-%d" % (stamp, suffix)
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)  # atomic: two runs in the same minute cannot get the same folder
        except FileExistsError:
            suffix += 1
            continue
        except OSError as err:
            raise DmlError("cannot create run folder %s (%s)" % (path, err.strerror or err)) from None
        os.mkdir(os.path.join(path, "logs"))
        os.mkdir(os.path.join(path, "params"))
        return path


def read_run_json(run_dir, name):
    """``run_dir/name`` parsed; a missing or unreadable file is a :class:`DmlError`."""
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise DmlError("%s holds no %s: not a finished dml run folder (python -m dml train "
                       "writes one)" % (run_dir, name))
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        raise DmlError("cannot read %s (%s)" % (path, err)) from None


def find_runs(root):
    """Every run folder under ``root`` (itself included) that holds a ``metrics.json`` and a
    ``config.json``, sorted by path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("logs", "params", "plots"))
        if "metrics.json" in files and "config.json" in files:
            found.append(folder)
    return sorted(found)


def evaluated_images(splits):
    """What a run evaluates, to recognise the same data later: the image count of its evaluated
    split (and gallery), its classes, and a digest of each class's count (``dml evaluate`` on data
    that lost or gained a test image or class is refused, not scored on other images)."""
    import hashlib

    import numpy as np

    out = {}
    for name, dataset in (("test", splits.test), ("gallery", splits.gallery)):
        if dataset is None:
            continue
        classes, counts = np.unique(np.asarray(dataset.labels), return_counts=True)
        pairs = ["%s:%d" % (splits.class_names[c], n) for c, n in zip(classes, counts)]
        out[name] = dict(images=int(len(dataset)), classes=int(len(classes)),
                         digest=hashlib.sha1("\n".join(pairs).encode("utf-8")).hexdigest())
    return out


class RunDir:
    """One run folder, and the only code that names a file inside it::

        config.json  metrics.json
        logs/        train.log, history.json, mxboard events, projector_config.pbtxt + data
        plots/       loss.png, embedding_<split>.png
        params/      net-<id>.params, trainer-<id>.states, classifier-<id>.params,
                     state-<id>.json (a checkpoint, committed by its state file, written last),
                     embedding-symbol.json + embedding-<epoch>.params (the export),
                     best/ (net.params, the export as embedding-0000.params, best.json)

    Every write goes through a temporary file and a rename (:func:`write_atomic`).
    """

    CONFIG, METRICS, HISTORY, TRAIN_LOG = "config.json", "metrics.json", "history.json", "train.log"
    EXPORT_PREFIX, BEST = "embedding", "best"

    def __init__(self, path):
        self.path = os.path.normpath(path)

    @classmethod
    def create(cls, output_root, dataset, method, now=None):
        """A fresh ``<output_root>/<dataset>/<method>/<YYYYmmddHHMM>[-N]/`` (see
        :func:`create_run_dir`)."""
        return cls(create_run_dir(output_root, dataset, method, now))

    def __str__(self):
        return self.path

    # -- folders -------------------------------------------------------------------------------
    @property
    def logs(self):
        return os.path.join(self.path, "logs")

    @property
    def params(self):
        return os.path.join(self.path, "params")

    @property
    def best_dir(self):
        return os.path.join(self.params, self.BEST)

    def plot(self, name):
        """``plots/<name>.png``."""
        return os.path.join(self.path, "plots", name + ".png")

    @property
    def metrics_file(self):
        return os.path.join(self.path, self.METRICS)

    @staticmethod
    def export_symbol(params_file):
        """The ``embedding-symbol.json`` beside an export's params file."""
        return os.path.join(os.path.dirname(params_file), RunDir.EXPORT_PREFIX + "-symbol.json")

    def hparams_events(self, which):
        """``logs/events.out.tfevents.<time>.dml-hparams-<which>``: an event file of TensorBoard's
        HParams summaries (``which``: ``start`` or ``end``, :mod:`dml.hparams`)."""
        return os.path.join(self.logs, "events.out.tfevents.%d.dml-hparams-%s"
                            % (time.time(), which))

    @property
    def train_log(self):
        return os.path.join(self.logs, self.TRAIN_LOG)

    # -- JSON files ----------------------------------------------------------------------------
    def has(self, name):
        return os.path.isfile(os.path.join(self.path, name))

    def read(self, name):
        """``config.json`` or ``metrics.json`` parsed (a :class:`dml.DmlError` when unreadable)."""
        return read_run_json(self.path, name)

    def write(self, name, data):
        write_json(os.path.join(self.path, name), data)

    def write_config(self, cfg, splits, resumed=False, argv=()):
        """config.json: every option of ``cfg``, the class names and the classes trained,
        validated (``validation_classes``) and evaluated on, dml's version, the command line and
        when it started; a resumed run keeps the first process's values and adds the time to
        ``resumed``."""
        from ..version import __version__

        config = cfg.to_dict()
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if resumed:
            previous = read_json(os.path.join(self.path, self.CONFIG))
            config.update(run_dir=previous["run_dir"], started=previous["started"],
                          resumed=previous.get("resumed", []) + [now])
            config.update((k, previous[k]) for k in ("dml_version", "argv", "class_names",
                                                     "train_classes", "eval_classes",
                                                     "validation_classes", "normalization",
                                                     "evaluated_images")
                          if k in previous)
        else:
            names = splits.class_names
            config.update(run_dir=self.path, dml_version=__version__, argv=list(argv),
                          class_names=names,
                          train_classes=[names[c] for c in splits.train_classes or
                                         range(len(names))],
                          eval_classes=[names[c] for c in splits.eval_classes or
                                        range(len(names))],
                          validation_classes=[names[c] for c in splits.val_classes or []],
                          evaluated_images=evaluated_images(splits), started=now)
            config["normalization"] = dict(mean=list(splits.mean), std=list(splits.std),
                                           input_size=splits.input_size, resize=splits.resize)
        self.write(self.CONFIG, config)

    def read_history(self):
        path = os.path.join(self.logs, self.HISTORY)
        return read_run_json(self.logs, self.HISTORY) if os.path.exists(path) else []

    def write_history(self, history):
        write_json(os.path.join(self.logs, self.HISTORY), history)

    # -- checkpoints ---------------------------------------------------------------------------
    def complete_checkpoints(self):
        return complete_checkpoints(self.path)

    def prune(self, keep):
        prune_checkpoints(self.path, keep)

    def remove_partial_files(self):
        return remove_partial_files(self.path)

    def resolve(self, checkpoint):
        return resolve_checkpoint(self.path, checkpoint)

    def lock(self):
        """Hold this run folder for the process that trains it: an exclusive ``flock`` on the
        folder itself (no file added), released when the process ends or the returned file
        descriptor is closed. A folder held by another process is a :class:`DmlError` (two
        ``train --resume`` of one run would write the same files)."""
        import fcntl

        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DmlError("%s is being trained by another process: wait for it to end (or stop "
                           "it) before resuming" % self.path) from None
        return fd

    def check_own(self, path):
        """A checkpoint file must lie in this run's params/: another run's file would be evaluated
        into this run's metrics.json, or embed with this run's preprocessing (its input size,
        normalization and distance), which is not the other network's."""
        params = os.path.realpath(self.params)
        if os.path.commonpath([params, os.path.realpath(path)]) != params:
            raise DmlError("checkpoint=%s is not in %s: use a run's own checkpoints (name THAT "
                           "run's folder, with checkpoint=%s), or copy the file into %s/ to use "
                           "it as this run" % (path, self.params, path, self.params))

    def _param(self, kind, cid):
        ext = {"trainer": "states", "memory": "npz"}.get(kind, "params")
        return os.path.join(self.params, "%s-%s.%s" % (kind, cid, ext))

    def load_memory(self, state):
        """The cross-batch memory a checkpoint saved (a dict of numpy arrays), or None."""
        import numpy as np

        path = self._param("memory", state["id"])
        if os.path.basename(path) not in state["files"]:
            return None
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def export_file(self, epoch):
        return os.path.join(self.params, "%s-%04d.params" % (self.EXPORT_PREFIX, epoch))

    def save_checkpoint(self, net, trainer, epoch, classifier=None, state=None, batch=None,
                        save_trainer=True, net_file=None, memory=None):
        """One checkpoint: ``net-<id>.params``, ``trainer-<id>.states``, the classifier's
        ``classifier-<id>.params`` and a cross-batch ``memory`` (numpy arrays) as
        ``memory-<id>.npz``, each written under a temporary name and renamed, and
        ``state-<id>.json`` (``state`` plus the files' sizes) last: a kill at any moment leaves the
        previous checkpoint intact and this one ignored. ``net_file``: a file that already holds
        exactly these weights (the final export), hard-linked instead of a second copy
        (:func:`dml.nets.load_weights` reads both formats). Returns the id."""
        wait_for_mxnet()
        cid = checkpoint_id(epoch, batch)

        def save_net(tmp):
            if net_file:
                try:  # the temporary name (random, ours) becomes a link to the export
                    os.remove(tmp)
                    os.link(net_file, tmp)
                    return
                except OSError:  # no hard links on this file system: a copy of the weights
                    pass
            net.save_parameters(tmp)

        saves = [("net", save_net)]
        if save_trainer:
            saves.append(("trainer", trainer.save_states))
        if classifier is not None:
            saves.append(("classifier", classifier.save_parameters))
        if memory is not None:
            saves.append(("memory", lambda tmp: _save_npz(tmp, memory)))
        files = []
        for kind, save in saves:
            write_atomic(save, self._param(kind, cid))
            files.append(os.path.basename(self._param(kind, cid)))
        state = dict(state or {}, id=cid, epoch=epoch, batch=batch,
                     files={f: os.path.getsize(os.path.join(self.params, f)) for f in files})
        write_json(os.path.join(self.params, "state-%s.json" % cid), state)
        return cid

    def load_checkpoint(self, state, net, trainer, classifier=None, ctx=None):
        """A complete checkpoint's (a state of :meth:`complete_checkpoints`) weights and, when it
        has them, the optimizer states; returns False when it holds none (dist_async)."""
        from ..nets import load_weights

        cid = state["id"]
        load_weights(net, self._param("net", cid), ctx=ctx)
        if os.path.basename(self._param("classifier", cid)) in state["files"]:
            classifier.load_parameters(self._param("classifier", cid), ctx=ctx)
        if os.path.basename(self._param("trainer", cid)) in state["files"]:
            trainer.load_states(self._param("trainer", cid))
            return True
        return False

    def _export(self, net, directory, epoch):
        """``net.export`` into a new temporary folder (``.tmp-export-*``, made with a random
        name: nothing planted there is written through), then renamed into ``directory``: a kill
        never leaves half a file."""
        import tempfile

        try:
            tmp_dir = tempfile.mkdtemp(dir=directory, prefix=".tmp-export-")
        except OSError as err:
            raise write_failure(os.path.join(directory, self.EXPORT_PREFIX), err) from None
        tmp_prefix = os.path.join(tmp_dir, self.EXPORT_PREFIX)
        try:
            net.export(tmp_prefix, epoch=epoch)
            for suffix in ("-symbol.json", "-%04d.params" % epoch):
                os.chmod(tmp_prefix + suffix, _FILE_MODE)
            os.replace(tmp_prefix + "-symbol.json",
                       os.path.join(directory, self.EXPORT_PREFIX + "-symbol.json"))
            os.replace("%s-%04d.params" % (tmp_prefix, epoch),
                       os.path.join(directory, "%s-%04d.params" % (self.EXPORT_PREFIX, epoch)))
        except Exception as err:  # MXNetError "Write incomplete" on a full disk
            raise write_failure(tmp_prefix + "-%04d.params" % epoch, err) from None
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    def export(self, net, epoch, input_shape=None):
        """``net.export`` for deployment (``embedding-symbol.json``, ``embedding-<epoch>.params``),
        replacing any earlier export. ``net.export`` needs the net's own hybridized graph: a net
        trained inside a wrapper (SiameseNet, ClassifierNet) first embeds one blank image of
        ``input_shape`` (C x H x W) in inference mode, which changes no state. Returns the params
        file."""
        self._export(_exportable(net, input_shape), self.params, epoch)
        keep = os.path.basename(self.export_file(epoch))
        for name in _listdir(self.params):
            if _EXPORT_PARAMS.match(name) and name != keep:
                os.remove(os.path.join(self.params, name))
        return self.export_file(epoch)

    @property
    def best_file(self):
        """``params/best/net.params``: the selected checkpoint's weights."""
        return os.path.join(self.best_dir, "net.params")

    def read_best(self):
        """``params/best/best.json``: the selected checkpoint's epoch and scores."""
        return read_run_json(self.best_dir, "best.json")

    def save_best(self, net, epoch, metrics, final_cid=None, input_shape=None):
        """``best/``: ``net.params``, the export (``embedding-symbol.json``,
        ``embedding-0000.params``) and ``best.json`` (its epoch and metrics), written last.
        ``final_cid``: the id of the final checkpoint when it holds this very network (its net
        file is the export of ``epoch``): both are hard-linked instead of written again.
        ``input_shape``: one image's C x H x W, for a net whose graph is not built yet."""
        wait_for_mxnet()
        os.makedirs(self.best_dir, exist_ok=True)
        best_export = os.path.join(self.best_dir, self.EXPORT_PREFIX + "-0000.params")
        final = self._param("net", final_cid) if final_cid else None
        if final and os.path.isfile(final) and _link(self.export_file(epoch), best_export):
            write_atomic(lambda tmp: shutil.copyfile(
                os.path.join(self.params, self.EXPORT_PREFIX + "-symbol.json"), tmp),
                os.path.join(self.best_dir, self.EXPORT_PREFIX + "-symbol.json"))
        else:
            final = None
            self._export(_exportable(net, input_shape), self.best_dir, 0)
        if not (final and _link(final, os.path.join(self.best_dir, "net.params"))):
            write_atomic(net.save_parameters, os.path.join(self.best_dir, "net.params"))
        write_json(os.path.join(self.best_dir, "best.json"), dict(metrics, epoch=epoch))

    def drop_projector_entry(self, data_dir):
        """Forget an earlier projector embedding named ``data_dir`` (mxboard would list it
        twice)."""
        shutil.rmtree(os.path.join(self.logs, data_dir), ignore_errors=True)
        config = os.path.join(self.logs, "projector_config.pbtxt")
        if not os.path.isfile(config):
            return
        with open(config, encoding="utf-8") as f:
            blocks = ["embeddings {" + b for b in f.read().split("embeddings {") if b.strip()]
        kept = "".join(b for b in blocks if 'tensor_name: "%s"' % data_dir not in b)

        def save(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(kept)
        write_atomic(save, config)
