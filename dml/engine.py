"""The training engine, kept as a module for the import paths the README and doc/ show
(``dml.engine.fit``): it lives in :mod:`dml.train` (devices, builders, scoring, the loop, the
jobs); every name it had is here."""
from .hooks import (Hooks, NonFiniteLoss, RunCompleter, RunRecorder, StopGuard,  # noqa: F401
                    TensorBoardLogger, TrainingInterrupted, TrainState, set_rng_state)
from .evaluation import net_contexts  # noqa: F401
from .train.devices import (CPU_SYNC_NOTE, DIST_ENV, Workers, _GATHER_KEYS, _RUN_NAME_BYTES,
                            _RUN_NAME_KEY, cpu_engine_threads, make_contexts, make_kvstore,
                            seed_everything, split_batch)  # noqa: F401
from .train.builders import (build_loss, build_net, build_train_loader, build_trainer, eval_loader,
                             net_options)  # noqa: F401
from .train.scoring import (check_embeddings, embed_and_score, score_for_run, validation_loss,
                            validation_splits)  # noqa: F401
from .train.loop import (_epoch_summary, default_hooks, experiment_hparams, fit, health_monitor,
                         learning_rate_at, prepare_training, resume_state, selection_split,
                         tensorboard_logger, train_step)  # noqa: F401
from .train.job import (Job, _resume_point, _some, _warn_repeats, check_same_images, load_net,
                        open_run, prepare, reevaluate, reported_checkpoint, train_job)  # noqa: F401

# The names these had before each said what it does (dml.evaluation.evaluate is the public one).
evaluate_net, run_evaluation, evaluate_run = embed_and_score, score_for_run, reevaluate
run = train_job  # ("run" now means a run folder only)
