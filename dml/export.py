"""Kept for the import path doc/ shows (``from dml.export import export_onnx``): the ONNX export
lives in :mod:`dml.serve.export`."""
from .serve.export import exportable_symbol, export_onnx, onnx_embed  # noqa: F401
