"""The hooks of the training loop, kept as a module for the import paths the README and doc/
show (``dml.hooks``): the events and the hooks' base are :mod:`dml.events`, the hooks
:mod:`dml.train` (guard, recorder, tensorboard, state); every name it had is here."""
from .events import (COMPLETE, EVENTS, GUARD, MEASURE, RECORD, REPORT, BatchEnd,  # noqa: F401
                     EpochBegin, EpochEnd, FitEnd, Hook, Hooks, TrainEnd, TrainStart, handles)
from .train.state import (NonFiniteLoss, TrainState, TrainingInterrupted, rng_state,  # noqa: F401
                          set_rng_state)
from .train.guard import StopGuard, _STOP_SIGNALS, non_finite_parameters  # noqa: F401
from .train.recorder import RunCompleter, RunRecorder, warn_below_baselines  # noqa: F401
from .train.tensorboard import (TensorBoardLogger, _NullWriter, projector_sample,  # noqa: F401
                                tsv_cell)
