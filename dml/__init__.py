"""dml: deep metric learning on MXNet Gluon.

Importing ``dml`` is cheap; the MXNet-backed parts live in submodules
(``dml.losses``, ``dml.nets``, ``dml.data``, ``dml.engine``, ``dml.evaluation``).
"""

__version__ = "0.1.0"

METHODS = (
    "siamese",
    "triplet",
    "triplet_semihard",
    "triplet_batch_hard",
    "triplet_batch_all",
    "online_contrastive",
    "online_triplet",
    "softmax",
    "arcface",
    "cosface",
    "sphereface",
)
DATASETS = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "folder")
DISTANCES = ("euclidean", "squared", "cosine")


class DmlError(Exception):
    """A problem with the user's input (arguments, data, paths): shown as one line, exit code 2."""


class WriteFailed(Exception):
    """A file of a run could not be written (the disk is full, the folder vanished): shown as one
    line, exit code 1. Its temporary file is removed; what was committed before stays usable."""
