"""``dml train``: the options as a checked RunConfig (a new run's, or --resume's stored one), the run, and what a user sees when it stops early."""
import os
import sys

from ..errors import DmlError, WriteFailed, error_summary
from ..registry import (DATASETS, MARGIN_HEAD_METHODS, METHOD_MINERS, METHODS, MINER_METHODS,
                        PROXY_METHODS)
from . import train_options
from .common import (_absolute_data_root, _all_gpus, _check_gpus, _metrics_table, _shown,
                     _shown_metrics, log)

# what --resume lets change: the run's length and where it runs; everything else is the run's
RESUME_MAY_CHANGE = ("epochs", "gpus", "cpus", "kvstore", "num_workers", "data_root")



def add_parser(sub):
    """The ``train`` subcommand's parser (:mod:`dml.cli.train_options`)."""
    return train_options.add_parser(sub, cmd_train)


def config_from_args(args):
    from ..config import RunConfig, defaults_for, validate

    if args.resume is not None:
        return resume_config(args)
    args.method = args.method or "triplet_semihard"
    args.dataset = args.dataset or "digits"
    if args.method not in METHODS:
        raise DmlError("unknown method %r: choose one of %s" % (args.method, ", ".join(METHODS)))
    if args.dataset not in DATASETS:
        raise DmlError("unknown dataset %r: choose one of %s" % (args.dataset, ", ".join(DATASETS)))
    from ..methods import get_method

    method = get_method(args.method)
    if args.selector is not None and not method.selectors:
        raise DmlError("--selector applies to online_triplet and online_contrastive, not %s"
                       % args.method)
    if args.selector is not None and args.selector not in method.selectors:
        raise DmlError("unknown selector %r for %s: choose one of %s"
                       % (args.selector, args.method, ", ".join(method.selectors)))
    if method.pk_batches and args.batch_size is not None:
        raise DmlError("%s batches --n-classes x --n-samples images; --batch-size applies to "
                       "siamese, triplet and softmax" % args.method)
    if not method.pk_batches and (args.n_classes is not None or args.n_samples is not None):
        raise DmlError("%s takes --batch-size; --n-classes and --n-samples apply to the "
                       "online-mining methods" % args.method)
    if args.scale is not None and not method.scaled:
        raise DmlError("--scale applies to %s, not %s" % (", ".join(MARGIN_HEAD_METHODS),
                                                           args.method))
    if args.miner is not None and args.method not in MINER_METHODS:
        raise DmlError("--miner applies to %s, not %s" % (", ".join(MINER_METHODS), args.method))
    if args.miner is not None and args.miner not in METHOD_MINERS[args.method]:
        raise DmlError("--miner %s does not apply to %s: choose %s" % (
            args.miner, args.method, " or ".join(METHOD_MINERS[args.method])))
    if args.loss_lr_mult is not None and args.method not in PROXY_METHODS:
        raise DmlError("--loss-lr-mult applies to the proxy methods (%s), not %s"
                       % (", ".join(PROXY_METHODS), args.method))
    _absolute_data_root(args)
    values = defaults_for(args.method, args.dataset)
    if args.margin is not None and values["margin"] is None:
        from ..registry import LOSS_PARAMETERS

        raise DmlError("--margin does not apply to %s: its loss has no margin (%s)"
                       % (args.method, LOSS_PARAMETERS[args.method]))
    for key in values:
        given = getattr(args, key, None)
        if given is not None:
            values[key] = given
    if args.val_classes and args.eval_period is None:
        values["eval_period"] = 1  # validation classes are there to select on
    from ..config import resolve_stem

    values["stem"] = resolve_stem(values.get("stem", "auto"), values["image_size"],
                                  values["pretrained"], values["backbone"])
    if args.gpus is None:
        values["gpus"] = _all_gpus()
    cfg = RunConfig.from_dict(values)
    validate(cfg)
    return cfg


def resume_config(args):
    """The stored config of ``--resume RUN_DIR`` with the options that may change; any other
    option given must agree with the run's."""
    from ..config import RunConfig, validate
    from ..runs import RunDir

    run_dir = args.resume
    if not os.path.isdir(run_dir):
        raise DmlError("--resume %s: no such run folder" % run_dir)
    _absolute_data_root(args)
    stored = RunDir(run_dir).read(RunDir.CONFIG)
    cfg = RunConfig.from_dict(stored)
    stored = cfg.to_dict()
    for key, value in vars(args).items():
        if key not in stored or value is None:
            continue
        if key in RESUME_MAY_CHANGE:
            setattr(cfg, key, value)
        elif key == "method" and value != stored[key]:
            raise DmlError("--resume %s is a %s run, not %s" % (run_dir, stored[key], value))
        elif value != stored[key]:
            raise DmlError("--resume %s: the run has --%s %s; a resumed run keeps its settings "
                           "(only %s may change)" % (
                               run_dir, key.replace("_", "-"), _shown(stored[key]),
                               ", ".join("--" + k.replace("_", "-") for k in RESUME_MAY_CHANGE)))
    if args.cpus is not None and args.gpus is None:
        cfg.gpus = []
    if args.gpus is not None and args.cpus is None:
        cfg.cpus = 0
    validate(cfg)
    return cfg


def _allocation_failure(err):
    """MXNet's way of saying it ran out of memory (an MXNetError, not a MemoryError)."""
    text = str(err).lower()
    return type(err).__name__ == "MXNetError" and any(
        word in text for word in ("failed to allocate", "bad_alloc", "out of memory"))


def cmd_train(args):
    cfg = config_from_args(args)  # the MXNet imports below stay lazy: OMP_NUM_THREADS is set first
    import signal

    from ..engine import NonFiniteLoss, TrainingInterrupted, prepare, run

    _check_gpus(cfg.gpus)
    # Everything that can be wrong with the input fails here, before the run folder exists.
    job = prepare(cfg, resume_dir=args.resume, fit_classes=args.n_classes is None)
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[log]):
            metrics = run(cfg, job, argv=sys.argv[1:])
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
