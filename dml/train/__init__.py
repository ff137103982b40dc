"""Training: what turns a configuration and its data into a run folder, in layers of its own.

- :mod:`.state`: the :class:`TrainState` the loop and its hooks share, the two early stops;
- :mod:`.guard`, :mod:`.recorder`, :mod:`.tensorboard`: the loop's hooks (stop guard; checkpoints,
  history, selection and metrics.json; TensorBoard), on the events of :mod:`dml.events`;
- :mod:`.devices`: contexts, seeds, the kvstore job's :class:`Workers`;
- :mod:`.builders`: the network, loss, loaders and trainer of a configuration;
- :mod:`.scoring`: the validation loss and the retrieval metrics of a network or a run;
- :mod:`.loop`: ``train_step`` and :func:`fit`, with its default hooks;
- :mod:`.job`: ``dml train``'s :func:`prepare` and :func:`train_job`, loading a run's network,
  ``dml evaluate``'s :func:`reevaluate`.

Data flows one way: dataset -> sampler -> :class:`dml.data.BatchLoader` -> net (hybridized) ->
loss (hybridized) -> ``gluon.Trainer`` -> hooks -> run folder (:class:`dml.runs.RunDir`, the only
owner of its files). ``dml.engine`` and ``dml.hooks`` keep the names they had.
"""
from .devices import Workers, make_contexts
from .guard import StopGuard
from .job import prepare, reevaluate, train_job
from .loop import fit, train_step
from .recorder import RunCompleter, RunRecorder
from .state import NonFiniteLoss, TrainingInterrupted, TrainState
from .tensorboard import TensorBoardLogger

__all__ = ["Workers", "make_contexts", "StopGuard", "prepare", "reevaluate", "train_job", "fit",
           "train_step", "RunCompleter", "RunRecorder", "NonFiniteLoss", "TrainingInterrupted",
           "TrainState", "TensorBoardLogger"]
