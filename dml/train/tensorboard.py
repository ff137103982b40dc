"""The TensorBoard hook: scalars, the projector, HParams, the figures.
"""
import logging
import time

import numpy as np

from ..evaluation import METRIC_KEYS, RETRIEVAL_KEYS
from ..events import REPORT, BatchEnd, EpochEnd, TrainEnd, TrainStart

log = logging.getLogger("dml")


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
    options TensorBoard's HParams tab lists (:func:`dml.train.loop.experiment_hparams`);
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
        from .. import hparams

        hparams.write_events(self.run_dir.hparams_events("start"), [
            hparams.session_start(self.hparams(), group_name=self.run_dir.path)])

    def hparams_end(self):
        if isinstance(self.writer, _NullWriter) or self.options is None:
            return
        from .. import hparams

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
        from .. import plots

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
        from .. import plots
        from ..evaluation import _neighbor_chunks, pairwise_distances_np

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
