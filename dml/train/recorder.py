"""What a run keeps on disk while it trains, through its :class:`dml.runs.RunDir`:
checkpoints, history, model selection, the final evaluation (:class:`RunRecorder`) and
metrics.json, last of all (:class:`RunCompleter`).
"""
import logging
import time

from ..evaluation import METRIC_KEYS, RETRIEVAL_KEYS
from ..events import COMPLETE, RECORD, BatchEnd, EpochEnd, FitEnd, TrainEnd, TrainStart
from ..runs import checkpoint_id as _checkpoint_id
from .state import TrainingInterrupted, rng_state

log = logging.getLogger("dml")


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
        from ..baselines import baseline_entries, pixel_metrics

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
                from ..nets import load_weights

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
