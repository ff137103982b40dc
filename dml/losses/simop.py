"""Moved to :mod:`dml.ops.simop` (the host operators, below the losses and the miners); this
import path gives the same module."""
import sys

from ..ops import simop as _module

sys.modules[__name__] = _module
