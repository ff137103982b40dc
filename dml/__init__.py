"""dml: deep metric learning on MXNet Gluon.

Importing ``dml`` is cheap; the MXNet-backed parts live in submodules
(``dml.losses``, ``dml.nets``, ``dml.data``, ``dml.engine``, ``dml.evaluation``).
"""

__version__ = "0.1.0"

from .registry import DATASETS, DISTANCES, METHODS  # noqa: E402,F401  (no MXNet import)


class DmlError(Exception):
    """A problem with the user's input (arguments, data, paths): shown as one line, exit code 2."""


class WriteFailed(Exception):
    """A file of a run could not be written (the disk is full, the folder vanished): shown as one
    line, exit code 1. Its temporary file is removed; what was committed before stays usable."""


def error_summary(err, limit=200):
    """The line of an exception's message that says what went wrong. MXNet's messages start with
    "Traceback (most recent call last):" and C++ stack frames; the cause is the last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not (line.startswith("Traceback (most recent call")
                                            or line.startswith("File ")
                                            or line.startswith("[bt]")
                                            or line.startswith("Stack trace"))]
    if not lines:
        return type(err).__name__
    line = lines[-1]
    for prefix in ("MXNetError: ", "mxnet.base.MXNetError: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    return line[:limit]


def load_run(run_dir, checkpoint=None, ctx=None):
    """A trained run's network, config and class names, and ``embed(images)`` with the run's own
    preprocessing (see :func:`dml.serve.load_run`; MXNet loads on first use). ``checkpoint``:
    ``"last"``, ``"best"`` or a params file; None: the one the run's metrics.json reports."""
    from .serve import load_run as _load_run

    return _load_run(run_dir, checkpoint, ctx)
