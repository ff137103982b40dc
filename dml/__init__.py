"""dml: deep metric learning on MXNet Gluon.

Importing ``dml`` is cheap; the MXNet-backed parts live in submodules
(``dml.losses``, ``dml.nets``, ``dml.data``, ``dml.engine``, ``dml.evaluation``).
"""

from .errors import DmlError, WriteFailed, error_summary  # noqa: F401
from .registry import DATASETS, DISTANCES, METHODS  # noqa: F401  (no MXNet import)
from .version import __version__  # noqa: F401


def load_run(run_dir, checkpoint=None, ctx=None):
    """A trained run's network, config and class names, and ``embed(images)`` with the run's own
    preprocessing (see :func:`dml.serve.load_run`; MXNet loads on first use). ``checkpoint``:
    ``"last"``, ``"best"`` or a params file; None: the one the run's metrics.json reports."""
    from .serve import load_run as _load_run

    return _load_run(run_dir, checkpoint, ctx)
