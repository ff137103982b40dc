"""Moved to :mod:`dml.ops.kernels` (the host operators, below the losses and the miners); this
import path gives the same module."""
import sys

from ..ops import kernels as _module

sys.modules[__name__] = _module
