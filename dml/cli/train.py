"""``dml train``: the options as a checked RunConfig (a new run's, or --resume's stored one), the run, and what a user sees when it stops early."""
import sys

from ..config import RESUME_MAY_CHANGE  # noqa: F401  (dml.cli.RESUME_MAY_CHANGE)
from ..errors import WriteFailed, error_summary
from . import train_options
from .common import _all_gpus, _check_gpus, _metrics_table, _shown_metrics, log



def add_parser(sub):
    """The ``train`` subcommand's parser (:mod:`dml.cli.train_options`)."""
    return train_options.add_parser(sub, cmd_train)


def config_from_args(args):
    """The checked RunConfig of ``dml train``'s options (:func:`dml.config.from_options`, or
    :func:`dml.config.resumed` with ``--resume``): the checks live there, with the parameters'
    names, which :func:`dml.cli.as_flags` shows as flags."""
    from ..config import from_options

    if args.resume is not None:
        return resume_config(args)
    return from_options(vars(args), default_gpus=_all_gpus)


def resume_config(args):
    """``--resume RUN_DIR``'s config (:func:`dml.config.resumed`)."""
    from ..config import resumed

    return resumed(args.resume, vars(args))


def _allocation_failure(err):
    """MXNet's way of saying it ran out of memory (an MXNetError, not a MemoryError)."""
    text = str(err).lower()
    return type(err).__name__ == "MXNetError" and any(
        word in text for word in ("failed to allocate", "bad_alloc", "out of memory"))


def cmd_train(args):
    cfg = config_from_args(args)  # the MXNet imports below stay lazy: OMP_NUM_THREADS is set first
    import signal

    from ..train import NonFiniteLoss, TrainingInterrupted, prepare, train_job

    _check_gpus(cfg.gpus)
    # Everything that can be wrong with the input fails here, before the run folder exists.
    job = prepare(cfg, resume_dir=args.resume, fit_classes=args.n_classes is None)
    cfg = job.cfg  # with the values prepare derived from the data (a shrunk n_classes)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[log]):
            metrics = train_job(cfg, job, argv=sys.argv[1:])
    except TrainingInterrupted as stop:
        what = "interrupted" if stop.signum == signal.SIGINT else "stopped by SIGTERM"
        if stop.at_once:
            what += " a second time, at once"
            if job.workers.writes and job.run_dir is not None:
                job.run_dir.remove_partial_files()  # a write the signal cut short
        if not job.workers.writes:  # a worker other than rank 0, which writes the checkpoints
            sys.stderr.write("dml train: %s (worker %d)\n" % (what, job.workers.rank))
        elif stop.checkpoint is None:
            sys.stderr.write("dml train: %s; no checkpoint had been written yet\n" % what)
        elif stop.at_once:
            sys.stderr.write("dml train: %s; the last complete checkpoint, %s, is kept: continue "
                             "with python -m dml train --resume %s\n"
                             % (what, stop.checkpoint, job.run_dir))
        else:
            sys.stderr.write("dml train: %s; checkpoint %s written: continue with python -m dml "
                             "train --resume %s\n" % (what, stop.checkpoint, job.run_dir))
        return 128 + int(stop.signum)  # 130 after Ctrl-C, 143 after SIGTERM, as a shell reports
    except NonFiniteLoss as err:
        kept = ("the last good checkpoint, %s, is kept: python -m dml train --resume %s continues "
                "from it" % (err.checkpoint, job.run_dir) if err.checkpoint
                else "no checkpoint had been written")
        sys.stderr.write("dml train: error: stopped: %s; %s\n" % (err, kept))
        return 1
    except Exception as err:  # pylint: disable=broad-except
        if not isinstance(err, (WriteFailed, MemoryError)) and not _allocation_failure(err):
            raise
        states = []
        if job.workers.writes and job.run_dir is not None:
            job.run_dir.remove_partial_files()
            states = job.run_dir.complete_checkpoints()
        kept = ("; checkpoint %s is complete: python -m dml train --resume %s continues from it"
                % (states[-1]["id"], job.run_dir) if states else "")
        if not isinstance(err, WriteFailed):
            err = ("out of memory (%s): lower --image-size, --embedding-dim, --memory-size or the "
                   "batch size" % (error_summary(err) if str(err) else "MemoryError"))
        sys.stderr.write("dml train: error: %s%s\n" % (err, kept))
        return 1
    if not job.workers.writes:
        log.info("worker %d of %d done; worker 0 writes %s", job.workers.rank, job.workers.count,
                 job.run_dir)
        return 0
    print(_metrics_table(metrics, _shown_metrics(metrics)))
    print("run folder:  %s" % job.run_dir)
    print("tensorboard: tensorboard --logdir %s" % job.run_dir.logs)
    return 0
