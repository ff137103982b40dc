"""What hangs off the training loop (:func:`dml.engine.fit`), as hooks in the manner of MXNet's
``gluon.contrib.estimator.event_handler``: a hook declares the events it handles by the mixins it
inherits (:class:`TrainStart`, :class:`EpochBegin`, :class:`BatchEnd`, :class:`EpochEnd`,
:class:`TrainEnd`, :class:`FitEnd`), takes what it needs as constructor arguments, and has a
``priority`` (smaller first; ties keep the order given). :class:`Hooks` calls them with the
:class:`TrainState`; a user's own loop can drive them too (``examples/train_loop.py``).

The built-in hooks, in the order their priorities give:

- :class:`StopGuard` (``GUARD``): signals (Ctrl-C, SIGTERM) and the one non-finite check; sets
  ``state.checked_loss`` and ``state.mean_loss``;
- :class:`dml.health.HealthMonitor` (``MEASURE``): held-out retrieval beside the untrained
  network; sets ``state.health``;
- :class:`RunRecorder` (``RECORD``): checkpoints, history, periodic evaluation and the best
  checkpoint, the final evaluation; sets ``state.record``, ``state.evaluation``,
  ``state.metrics``;
- :class:`TensorBoardLogger` (``REPORT``): scalars, the projector, the session start of a
  resumed run and the figures, from what the hooks before it set;
- :class:`RunCompleter` (``COMPLETE``): at :class:`FitEnd`, metrics.json, last of all.

A hook without mixins that has methods of the events' names is still called (duck typing), at
priority 0.
"""
import logging
import signal
import threading
import time

import mxnet as mx
import numpy as np

from .evaluation import METRIC_KEYS, RETRIEVAL_KEYS
from .events import (COMPLETE, EVENTS, GUARD, MEASURE, RECORD, REPORT, BatchEnd, EpochBegin,
                     EpochEnd, FitEnd, Hook, Hooks, TrainEnd, TrainStart, handles)
from .runs import checkpoint_id as _checkpoint_id

log = logging.getLogger("dml")

__all__ = ["COMPLETE", "EVENTS", "GUARD", "MEASURE", "RECORD", "REPORT", "BatchEnd", "EpochBegin",
           "EpochEnd", "FitEnd", "Hook", "Hooks", "TrainEnd", "TrainStart", "handles", "TrainState",
           "TrainingInterrupted", "NonFiniteLoss", "StopGuard", "RunRecorder", "RunCompleter",
           "TensorBoardLogger",
           "non_finite_parameters", "rng_state", "set_rng_state", "warn_below_baselines",
           "tsv_cell", "projector_sample"]


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM: the run stopped cleanly; ``checkpoint`` is the id of the checkpoint it
    wrote, ``signum`` the signal that asked for the stop."""

    def __init__(self, checkpoint, signum=signal.SIGINT, at_once=False):
        super().__init__("interrupted")
        self.checkpoint = checkpoint
        self.signum = signum
        self.at_once = at_once  # a second signal: stopped without a new checkpoint


class NonFiniteLoss(FloatingPointError):
    """The loss or the weights became NaN or infinite; ``checkpoint`` is the last good
    checkpoint's id (or None), written before they went bad and left as it was."""

    def __init__(self, message, checkpoint):
        super().__init__(message)
        self.checkpoint = checkpoint


class TrainState:
    """What the loop and its hooks share: the pieces being trained and where training stands.
    ``epoch_loss``/``epoch_stat`` are the running sums (1-element arrays) over the ``seen``
    batches of ``epoch``; ``record`` the finished epoch's history entry; ``evaluation`` the
    latest ``(metrics, embeddings, labels)``.

    A user's own loop builds it with what its hooks read (``TrainState(net=net, epochs=3)`` for
    the health monitor) and calls :meth:`begin_epoch` and :meth:`add_batch`."""

    def __init__(self, cfg=None, splits=None, net=None, model=None, loss_fn=None, trainer=None,
                 method=None, ctx=None, workers=None, epochs=None):
        self.cfg, self.splits, self.net, self.model = cfg, splits, net, model
        self.epochs = epochs if epochs is not None else cfg.epochs  # the run's last epoch
        self.loss_fn, self.trainer, self.method, self.ctx, self.workers = (
            loss_fn, trainer, method, ctx, workers)
        # devices sharing BatchNorm statistics: each device's passes in a thread of their own
        self.parallel = getattr(net, "sync_devices", 0) > 1
        self.epoch, self.step, self.seen, self.skip = 0, 0, 0, 0
        self.history, self.best_map, self.last_good = [], -1.0, None
        self.epoch_loss = self.epoch_stat = self.batch_loss = self.record = None
        self.partial = None  # the partial-epoch sums of a run resumed mid-epoch
        self.evaluation = None
        self.input_shape = None  # one image's C x H x W (for the export)
        self.done_seconds, self.started, self.train_seconds = 0.0, time.time(), None
        self.batches = 0  # batches in this epoch
        self.checked_loss = None  # the batch loss when the guard checked it this step, else None
        self.mean_loss = None  # the epoch's mean loss, checked (epoch_end)
        self.guard = None  # the StopGuard (its ``requested`` is the signal that asked to stop)
        self.metrics = None  # the final metrics (train_end)
        self.reported_epoch = None  # the epoch whose weights metrics.json reports (train_end)
        self.epoch_zero = None  # the count of zero-loss batches of the epoch (1-element array)
        self.health = {}  # the epoch's training-health statistics (dml.health), history keys
        self.health_baseline = None  # the untrained network's (kept in checkpoints)
        self.baselines = None  # raw pixels and the untrained network on the evaluated split

    def elapsed(self):
        """Training seconds, the stopped processes' included."""
        return self.done_seconds + time.time() - self.started

    def add_batch(self, loss, stat=None):
        """One step's ``loss`` (1-element array) and the loss's ``stat`` (or None)."""
        stat = loss * 0 if stat is None else stat
        self.step += 1
        self.seen += 1
        self.batch_loss = loss
        self.epoch_loss = loss if self.epoch_loss is None else self.epoch_loss + loss
        self.epoch_stat = stat if self.epoch_stat is None else self.epoch_stat + stat
        zero = loss <= 0
        self.epoch_zero = zero if self.epoch_zero is None else self.epoch_zero + zero

    def begin_epoch(self, epoch, batches):
        """Epoch ``epoch`` with ``batches`` batches, continuing the sums of a resumed partial
        epoch."""
        self.epoch, self.seen, self.epoch_loss = epoch, 0, None
        self.epoch_stat, self.batches, self.epoch_zero, self.health = None, batches, None, {}
        if self.partial is not None:
            ctx = self.ctx[0]
            self.epoch_loss = mx.nd.array([self.partial["loss_sum"]], ctx=ctx)
            self.epoch_stat = mx.nd.array([self.partial["stat_sum"]], ctx=ctx)
            self.epoch_zero = mx.nd.array([self.partial.get("zero_sum", 0.0)], ctx=ctx)
            self.seen = self.partial["batches"]
        self.partial = None

    @property
    def final_epoch(self):
        return self.epoch == self.epochs


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


class StopGuard(TrainStart, BatchEnd, EpochEnd):
    """What stops a run early: a signal, or a value that is no longer finite.

    While active, Ctrl-C (SIGINT) and SIGTERM (what Slurm, Kubernetes and ``timeout`` send before
    killing) only set ``requested``: the loop finishes its step, the recorder writes a
    checkpoint and the run stops. A second signal stops at once: :class:`TrainingInterrupted`
    with ``at_once`` and the last complete checkpoint (nothing more is written). Signals are
    caught only in the main thread.

    :meth:`check` is the one non-finite check: the loss (NaN whenever an embedding is, see
    :func:`dml.losses.base.propagate_non_finite`) and every parameter of ``model``; it runs every
    ``log_interval`` steps (the only host synchronisation of the loop) and at each epoch's end,
    before its checkpoint. It is ``state.guard`` (the recorder reads ``requested``).
    """
    priority = GUARD

    def __init__(self, model, log_interval=10):
        self.model, self.log_interval = model, log_interval
        self.requested = None  # the signal number once a stop was asked for
        self._previous = {}
        self._state = None

    def train_start(self, state):
        self._state = state
        state.guard = self

    def _handle(self, signum, frame):
        if self.requested is not None:  # the second signal: stop now, nothing more written
            raise TrainingInterrupted(self._state.last_good if self._state else None, signum,
                                      at_once=True)
        self.requested = signum
        log.warning("%s: stopping after this step with a checkpoint (again to stop at once)",
                    _STOP_SIGNALS.get(signum, signum))

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
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

    def batch_end(self, state):
        state.checked_loss = None
        if state.step % self.log_interval == 0:
            state.checked_loss = self.check(state.batch_loss, "at step %d (epoch %d)"
                                            % (state.step, state.epoch), state.last_good)

    def epoch_end(self, state):
        state.mean_loss = self.check(state.epoch_loss, "in epoch %d" % state.epoch,
                                     state.last_good) / max(state.seen, 1)


def rng_state():
    """numpy's and Python's global RNG states (the random selectors draw from numpy's), as JSON."""
    import random

    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "python": [version, list(internal), gauss_next]}


def set_rng_state(state):
    import random

    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class RunRecorder(TrainStart, BatchEnd, EpochEnd, TrainEnd):
    """Everything a run keeps on disk, through its :class:`dml.runs.RunDir`: a checkpoint every
    ``save_period`` epochs, at the end and when a stop is requested (a partial-epoch one when it
    comes mid-epoch); ``logs/history.json``; model selection; at the end the full evaluation,
    metrics.json and the export (the final checkpoint's weights are the export, on disk once).
    Workers other than rank 0 record nothing.

    ``evaluate(state, full, on)`` returns ``(metrics, embeddings, labels)`` of the test split
    (``on="test"``) or of the validation classes (``on="val"``). ``select_on`` says where
    ``params/best/`` is chosen, every ``eval_period`` epochs and at the end, by ``map_at_r``:

    - ``"val"``: the validation classes (history keys ``val_*``). The test split is evaluated
      once, at the end, with the selected checkpoint's weights: metrics.json reports it
      (``checkpoint: "best"``, ``epochs`` its epoch, ``selected_on: "validation"``).
    - ``"test"``: the test split itself (explicit test-set feedback); metrics.json reports the
      final epoch.
    - None: no periodic evaluation; the final epoch is the model and ``params/best/``.

    ``method`` (its name) and ``embedding_dim`` are recorded in checkpoints and metrics.json;
    ``keep_checkpoints`` complete checkpoints are kept. Its final metrics (``state.metrics``)
    reach metrics.json through :class:`RunCompleter`, last of all.
    """
    priority = RECORD

    def __init__(self, run_dir, evaluate, method, embedding_dim, save_period=1, eval_period=0,
                 keep_checkpoints=1, val_loss=None, select_on=None, baselines=True):
        self.run_dir, self.evaluate, self.val_loss = run_dir, evaluate, val_loss
        self.method, self.embedding_dim = method, embedding_dim
        self.save_period, self.eval_period = save_period, eval_period
        self.keep_checkpoints = keep_checkpoints
        self.select_on, self.baselines = select_on, baselines

    def _state(self, state, epoch_sums=None):
        return {"step": state.step, "best_map": state.best_map, "history": state.history,
                "rng": rng_state(), "train_seconds": round(state.elapsed(), 3),
                "method": self.method, "partial": epoch_sums,
                "health_baseline": state.health_baseline, "baselines": state.baselines}

    def train_start(self, state):
        """The baselines of the evaluated split (:mod:`dml.baselines`): its raw pixels, and the
        network before its first step (a resumed run keeps its first process's)."""
        if state.baselines is not None or not state.workers.writes or not self.baselines:
            return
        from .baselines import baseline_entries, pixel_metrics

        started = time.time()
        splits = state.splits
        untrained, _, _ = self.evaluate(state, full=False)
        state.baselines = baseline_entries("untrained_", untrained)
        pixels = pixel_metrics(splits.test, splits.gallery)
        if pixels is not None:
            state.baselines.update(baseline_entries("pixels_", pixels))
        state.done_seconds -= time.time() - started  # (not training time)
        log.info("baselines on the %s split: untrained network map_at_r %.4f, raw pixels %s",
                 splits.split, untrained["map_at_r"], "%.4f" % pixels["map_at_r"]
                 if pixels is not None else "skipped (more than 20,000 images)")

    def checkpoint(self, state, batch=None, epoch_sums=None):
        if not state.workers.writes:
            return None
        net_file = None
        if state.final_epoch and batch is None:  # the final weights: exported, kept once
            net_file = self.run_dir.export(state.net, state.epoch, state.input_shape)
        classifier = getattr(state.model, "classifier", None)
        memory = state.loss_fn.state() if hasattr(state.loss_fn, "load_state") else None
        cid = self.run_dir.save_checkpoint(state.net, state.trainer, state.epoch, classifier,
                                           self._state(state, epoch_sums), batch=batch,
                                           save_trainer=state.workers.saves_trainer,
                                           net_file=net_file, memory=memory)
        self.run_dir.prune(self.keep_checkpoints)
        return cid

    def batch_end(self, state):
        guard = state.guard
        if guard.requested and state.seen < state.batches:
            loss_sum = guard.check(state.epoch_loss, "in epoch %d" % state.epoch, state.last_good)
            raise TrainingInterrupted(self.checkpoint(state, state.seen, {
                "loss_sum": loss_sum, "stat_sum": float(state.epoch_stat.asscalar()),
                "zero_sum": float(state.epoch_zero.asscalar()), "batches": state.seen}),
                guard.requested)

    @property
    def _prefix(self):
        """The history keys of the selection metrics: ``val_map_at_r``, or ``map_at_r`` when
        the test split itself is scored."""
        return "val_" if self.select_on == "val" else ""

    def _select(self, state, epoch, final_cid=None):
        """Score ``state.net`` on the selection split; keep it in ``params/best/`` when its
        map_at_r is the best so far. Returns the metrics."""
        state.evaluation = metrics, _, _ = self.evaluate(state, full=False, on=self.select_on)
        state.record.update((self._prefix + k, metrics[k]) for k in RETRIEVAL_KEYS
                            if k in metrics)
        if metrics["map_at_r"] > state.best_map:
            state.best_map = metrics["map_at_r"]
            self.run_dir.save_best(state.net, epoch, {self._prefix + k: metrics[k]
                                                      for k in RETRIEVAL_KEYS},
                                   final_cid=final_cid, input_shape=state.input_shape)
        return metrics

    def epoch_end(self, state):
        stat = state.method.stat
        state.record = record = {"epoch": state.epoch, "train_loss": state.mean_loss,
                                 stat: state.epoch_stat.asscalar() / max(state.seen, 1),
                                 "learning_rate": state.trainer.learning_rate}
        record.update(state.health)
        if self.val_loss is not None:
            record["val_loss"] = self.val_loss(state)
        state.evaluation = None
        if (state.workers.writes and self.select_on and self.eval_period
                and state.epoch % self.eval_period == 0 and not state.final_epoch):
            self._select(state, state.epoch)  # the last epoch is scored at the end
        state.history.append(record)
        if ((self.save_period and state.epoch % self.save_period == 0) or state.final_epoch
                or state.guard.requested):
            state.last_good = self.checkpoint(state)
        if state.workers.writes:
            self.run_dir.write_history(state.history)

    def train_end(self, state):
        epochs = state.epochs
        final = state.last_good if state.last_good == _checkpoint_id(epochs) else None
        reported, checkpoint = epochs, "last"
        extra = {}
        if self.select_on == "val":
            state.record = state.history[-1]
            self._select(state, epochs, final_cid=final)
            best = self.run_dir.read_best()
            reported, checkpoint = int(best["epoch"]), "best"
            extra = dict(selected_on="validation", val_map_at_r=best["val_map_at_r"])
            if reported != epochs:  # the test split is scored with the selected weights
                from .nets import load_weights

                load_weights(state.net, self.run_dir.best_file, ctx=state.ctx)
                log.info("the validation classes chose epoch %d (map_at_r %.4f): the test split "
                         "is scored with its weights", reported, best["val_map_at_r"])
        state.evaluation = metrics, _, _ = self.evaluate(state, full=True)
        if self.select_on != "val" and metrics["map_at_r"] > state.best_map:
            self.run_dir.save_best(state.net, epochs, metrics, final_cid=final,
                                   input_shape=state.input_shape)
        record = next(h for h in state.history if h["epoch"] == reported)
        record.update((k, metrics[k]) for k in METRIC_KEYS if k in metrics)
        self.run_dir.write_history(state.history)
        metrics.update(embedding_dim=self.embedding_dim, epochs=reported, checkpoint=checkpoint,
                       train_seconds=round(state.train_seconds, 2), **extra)
        metrics.update(state.baselines or {})
        warn_below_baselines(metrics, state.splits.split)
        state.metrics = metrics
        state.reported_epoch = reported



class RunCompleter(FitEnd):
    """metrics.json (``state.metrics``), written at the end of ``fit``, after every other hook
    (``COMPLETE``): a run folder with it is complete."""
    priority = COMPLETE

    def __init__(self, run_dir):
        self.run_dir = run_dir

    def fit_end(self, state):
        self.run_dir.write(self.run_dir.METRICS, state.metrics)


def warn_below_baselines(metrics, split):
    """One warning line when the trained network retrieves worse than its own untrained version
    or than raw pixels on the evaluated split (``untrained_map_at_r``, ``pixels_map_at_r``)."""
    worse = [(name, metrics[key]) for name, key in (("the untrained network", "untrained_map_at_r"),
                                                     ("raw pixels", "pixels_map_at_r"))
             if key in metrics and metrics["map_at_r"] < metrics[key]]
    if worse:
        log.warning("the trained network retrieves worse on the %s split than %s: map_at_r %.4f "
                    "against %s; training did not help these classes (doc/unseen.md)", split,
                    " and ".join(name for name, _ in worse), metrics["map_at_r"],
                    ", ".join("%.4f" % value for _, value in worse))


class _NullWriter:
    """What workers other than rank 0 log to: nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TensorBoardLogger(TrainStart, BatchEnd, EpochEnd, TrainEnd):
    """mxboard scalars (``train/batch_loss`` every ``log_interval`` steps; per epoch the loss,
    learning rate, the method's stat, ``val/loss`` and ``eval/*``), the projector at each
    evaluation, the figures at the end, and on resume a ``SessionLog.START`` at the first new
    step, so TensorBoard drops what the stopped process logged after its checkpoint. Epoch
    scalars are logged after the epoch's checkpoint: a resumed run never logs an epoch twice.

    ``title`` names the run in figures (``"triplet_semihard on digits"``); ``hparams`` are the
    options TensorBoard's HParams tab lists (:func:`dml.engine.experiment_hparams`);
    ``distance`` ranks the retrieval figure; ``projector_points`` and ``seed`` choose the pictured
    embeddings. It closes its writer when the hooks are left (a context manager)."""
    priority = REPORT

    def __init__(self, run_dir, epochs, title="", hparams=None, distance="euclidean",
                 projector_points=2000, seed=0, writes=True):
        self.run_dir, self.epochs, self.title, self.options = run_dir, epochs, title, hparams
        self.distance, self.projector_points, self.seed = distance, projector_points, seed
        if writes:
            from mxboard import SummaryWriter

            self.writer = SummaryWriter(logdir=run_dir.logs, flush_secs=10)
        else:
            self.writer = _NullWriter()

    def close(self):
        self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def train_start(self, state):
        if state.step:  # resumed
            self.session_start(state.step + 1)
            if state.history:  # the checkpoint's epoch again, in case it was never flushed
                self.log_epoch(state.history[-1], state.method.stat)
        else:
            self.hparams_start()
            if state.health_baseline is not None:  # the untrained network, as epoch 0
                for key, value in state.health_baseline.items():
                    self.writer.add_scalar("health/" + key, value, global_step=0)

    def batch_end(self, state):
        if state.checked_loss is not None:
            self.writer.add_scalar("train/batch_loss", state.checked_loss, global_step=state.step)

    def epoch_end(self, state):
        self.log_epoch(state.record, state.method.stat)
        if state.evaluation is not None and state.evaluation[0]["split"] == state.splits.split:
            _, embeddings, labels = state.evaluation  # (validation classes: no projector)
            self.add_projector(embeddings, labels, state.splits, state.epoch)

    def train_end(self, state):
        metrics, embeddings, labels = state.evaluation
        epoch = state.reported_epoch or self.epochs
        for key in RETRIEVAL_KEYS:  # the final epoch's validation score (train_end computes it)
            if "val_" + key in state.history[-1]:
                self.writer.add_scalar("val/" + key, state.history[-1]["val_" + key],
                                       global_step=self.epochs)
        self.log_eval(metrics, epoch, METRIC_KEYS + ("verification_auc",))
        self.add_projector(embeddings, labels, state.splits, epoch,
                           tag="%s_embedding" % state.splits.split)
        self.figures(state.splits, embeddings, labels, state.history, epoch)
        self.hparams_end()

    def log_eval(self, metrics, epoch, keys):
        for key in keys:
            if key in metrics:
                self.writer.add_scalar("eval/" + key, metrics[key], global_step=epoch)

    def log_epoch(self, record, stat):
        epoch = record["epoch"]
        self.writer.add_scalar("train/epoch_loss", record["train_loss"], global_step=epoch)
        self.writer.add_scalar("train/learning_rate", record["learning_rate"], global_step=epoch)
        self.writer.add_scalar("train/" + stat, record[stat], global_step=epoch)
        if "val_loss" in record:
            self.writer.add_scalar("val/loss", record["val_loss"], global_step=epoch)
        for key, value in record.items():  # training health (dml.health)
            if key.startswith("health_"):
                self.writer.add_scalar("health/" + key[len("health_"):], value,
                                       global_step=epoch)
        for key in RETRIEVAL_KEYS:  # model selection on the validation classes
            if "val_" + key in record:
                self.writer.add_scalar("val/" + key, record["val_" + key], global_step=epoch)
        self.log_eval(record, epoch, METRIC_KEYS)
        self.writer.flush()

    def hparams(self):
        """The options TensorBoard's HParams tab shows: numbers, booleans and strings (lists and
        None as text)."""
        shown = {}
        for key, value in (self.options or {}).items():
            if isinstance(value, (list, tuple)):
                value = ",".join(map(str, value))
            shown[key] = "none" if value is None else value
        return shown

    def hparams_start(self):
        """The HParams plugin's session start (the run's options, :meth:`hparams`), in an event
        file of its own (:mod:`dml.hparams`): TensorBoard lists every run of a logdir with its
        options and the last value of each scalar (``eval/*``: the final metrics)."""
        if isinstance(self.writer, _NullWriter) or self.options is None:
            return
        from . import hparams

        hparams.write_events(self.run_dir.hparams_events("start"), [
            hparams.session_start(self.hparams(), group_name=self.run_dir.path)])

    def hparams_end(self):
        if isinstance(self.writer, _NullWriter) or self.options is None:
            return
        from . import hparams

        hparams.write_events(self.run_dir.hparams_events("end"), [hparams.session_end()])

    def session_start(self, step):
        """A SessionLog START event at ``step``: TensorBoard discards the events of earlier
        files at this step or later (what a killed process logged after its last checkpoint)."""
        if isinstance(self.writer, _NullWriter):
            return
        from mxboard.proto import event_pb2

        self.writer._file_writer.add_event(event_pb2.Event(  # pylint: disable=protected-access
            wall_time=time.time(), step=step,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

    def add_projector(self, embeddings, labels, splits, step, tag="test_embedding"):
        """The embeddings of :func:`projector_sample` in TensorBoard's projector, with class
        names and sprite images (an earlier entry of the same name is replaced)."""
        if isinstance(self.writer, _NullWriter):
            return
        chosen = projector_sample(len(labels), self.projector_points, self.seed)
        self.run_dir.drop_projector_entry("%s_%s" % (tag, str(step).zfill(6)))
        images, _ = splits.test.batch(chosen)
        self.writer.add_embedding(tag, embeddings[chosen],
                                  labels=[tsv_cell(splits.class_names[int(c)])
                                          for c in labels[chosen]],
                                  images=images.transpose(0, 3, 1, 2), global_step=step)

    def figures(self, splits, embeddings, labels, history, step):
        """``plots/loss.png`` (when there is a history) and ``plots/embedding_<split>.png``, also
        in TensorBoard's image tab. Returns the paths written."""
        from . import plots

        written = []
        if history:
            written.append(("plots/loss", plots.loss_curve(
                history, self.run_dir.plot("loss"), title="%s: training loss" % self.title)))
        chosen = projector_sample(len(labels), self.projector_points, self.seed)
        how = "t-SNE of the" if embeddings.shape[1] > 2 else "the"
        points = plots.embedding_2d(embeddings[chosen], seed=self.seed)
        written.append(("plots/embedding_" + splits.split, plots.embedding_scatter(
            points, labels[chosen], splits.class_names,
            self.run_dir.plot("embedding_" + splits.split),
            title="%s: %s %d-D %s embedding (epoch %d)" % (
                self.title, how, embeddings.shape[1], splits.split, step))))
        written.append(("plots/retrieval_" + splits.split, self.retrieval_figure(
            splits, embeddings, labels, step)))
        for tag, path in written:
            self.writer.add_image(tag, plots.png_to_chw(path), global_step=step)
        return [path for _, path in written]

    RETRIEVAL_NEIGHBOURS = 8

    def retrieval_figure(self, splits, embeddings, labels, step):
        """``plots/retrieval_<split>.png``: one fixed query of each of up to 8 classes and its 8
        nearest other images of the evaluated split (as the retrieval metrics rank them)."""
        from . import plots
        from .evaluation import _neighbor_chunks, pairwise_distances_np

        queries = plots.retrieval_queries(labels, seed=self.seed)
        k = min(self.RETRIEVAL_NEIGHBOURS, len(labels) - 1)
        neighbours = np.concatenate([nn for _, _, nn in _neighbor_chunks(
            np.asarray(embeddings, dtype=np.float64)[queries],
            np.asarray(embeddings, dtype=np.float64), k + 1, self.distance,
            exclude_self=False)])
        names = splits.class_names
        rows = []
        for q, nn in zip(queries, neighbours):
            nn = [int(i) for i in nn if i != q][:k]
            d = pairwise_distances_np(embeddings[q:q + 1].astype(np.float64),
                                      embeddings[nn].astype(np.float64), self.distance)[0]
            rows.append(dict(query=splits.test[int(q)][0], query_label=names[int(labels[q])],
                             neighbours=[(splits.test[i][0], names[int(labels[i])], dist)
                                         for i, dist in zip(nn, d)]))
        return plots.neighbour_grid(rows, self.run_dir.plot("retrieval_" + splits.split),
                                    title="%s: nearest %s images (epoch %d, %s distance)"
                                    % (self.title, splits.split, step, self.distance))


def tsv_cell(text):
    """``text`` as one cell of the projector's metadata.tsv (one line per point): a class
    folder named with a tab or a line break would otherwise add columns or lines."""
    return str(text).replace("\\", "\\\\").replace("\t", "\\t").replace(
        "\n", "\\n").replace("\r", "\\r")


def projector_sample(n, max_points, seed):
    """The (sorted) indices of the at most ``max_points`` test embeddings that are pictured."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_points])

