"""Moved to :mod:`dml.ops.indices` (the host operators, below the losses and the miners); this
import path gives the same module."""
import sys

from ..ops import indices as _module

sys.modules[__name__] = _module
