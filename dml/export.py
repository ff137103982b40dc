"""Kept for the import path doc/ shows (``from dml.export import export_onnx``): the ONNX export
lives in :mod:`dml.serve.export`."""
from .serve.export import (L2_EPS, _require, _tidy, exportable_symbol, export_onnx,  # noqa: F401
                          onnx_embed)
