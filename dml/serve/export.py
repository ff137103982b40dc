"""ONNX export of a run's embedding network (``dml export RUN --onnx model.onnx``).

Through MXNet's own exporter (``mxnet.onnx.export_model``) with a dynamic batch axis.
Two things in the way, and what is done about them:

- The exporter converts ``L2Normalization`` only in ``channel`` mode, which MXNet allows only
  for inputs of 3+ dimensions (apache/mxnet#15013); the embedding is N x D. The exported graph
  writes the same function in plain operators, ``x / sqrt(sum(x^2, axis=1) + eps)`` with MXNet's
  eps (1e-10), which converts and gives the same numbers.
- The exporter imports ``onnx.mapping``, removed in onnx 1.19: onnx is pinned to 1.14.1 (which
  also accepts protobuf 3.20.3, the pin mxboard needs).

The ONNX file has one input ``data`` (float32 N x 3 x H x W, the run's preprocessing: see
``metadata_props``) and one output ``embedding`` (float32 N x D); its metadata records the run's
normalization mean and std, input size, how an image is brought to it (``resize``: ``square``, or
``center_crop``: shorter side to 256/224 of it, then the central crop), distance and the
checkpoint it came from. Before the
file is written, ONNX Runtime embeds a batch and must agree with MXNet to ``tolerance``.
"""
import json
import os
import tempfile

import numpy as np

from ..errors import DmlError

L2_EPS = 1e-10  # MXNet's L2Normalization default


def _require(name, pin):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise DmlError("%s is not installed: run make install (it installs %s)" % (name, pin)) \
            from None


def exportable_symbol(symbol):
    """``symbol`` with a final instance-mode ``L2Normalization`` of a 2-D input written in
    operators the ONNX exporter converts (same values)."""
    import mxnet as mx

    node = json.loads(symbol.tojson())["nodes"][-1]
    if node["op"] != "L2Normalization":
        return symbol
    eps = float(node.get("attrs", {}).get("eps", L2_EPS))
    x = symbol.get_children()
    return mx.sym.broadcast_div(
        x, mx.sym.sqrt(mx.sym.sum(mx.sym.square(x), axis=1, keepdims=True) + eps),
        name="embedding")


RAW_ABOVE = 16  # values: larger float32 tensors are written as raw bytes


class _RawTensors:
    """While active, ``onnx.helper.make_tensor`` writes float32 tensors of more than
    :data:`RAW_ABOVE` values as ``raw_data`` (little-endian bytes) instead of a repeated
    ``float_data`` field. MXNet's exporter writes every weight as ``float_data``, and protobuf
    3.20.3 (the pin mxboard needs) has no C++ extension for Python 3.11: its pure-Python code
    encodes and parses repeated floats one at a time, about 25 s each way for ResNet-18's 11
    million weights. The same tensor, in ONNX's other encoding."""

    def __init__(self, helper):
        self.helper, self.original = helper, helper.make_tensor

    def make_tensor(self, name, data_type, dims, vals, raw=False):
        from onnx import TensorProto

        if not raw and data_type == TensorProto.FLOAT and len(vals) > RAW_ABOVE:
            vals, raw = np.asarray(vals, dtype="<f4").tobytes(), True
        return self.original(name, data_type, dims, vals, raw=raw)

    def __enter__(self):
        self.helper.make_tensor = self.make_tensor
        return self

    def __exit__(self, *exc):
        self.helper.make_tensor = self.original
        return False


def _tidy(model, metadata):
    """Initializers out of the graph inputs (ONNX Runtime then folds them as constants), the
    output named ``embedding``, and the run's metadata."""
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = ["embedding" if o == old else o for o in node.output]
    model.graph.output[0].name = "embedding"
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value) if not isinstance(value, str) else value
    return model


def export_onnx(run, out_path, tolerance=1e-4, check_batch=None):
    """Write ``run``'s (a :class:`dml.serve.LoadedRun`) network to ``out_path`` as ONNX and check
    it with ONNX Runtime on ``check_batch`` (a float32 N x 3 x H x W batch; default 4 random
    images). Returns ``(out_path, max abs difference)``. Nothing is written when the export or
    the check fails."""
    import mxnet as mx

    onnx = _require("onnx", "onnx==1.14.1")
    ort = _require("onnxruntime", "onnxruntime==1.16.3")
    from mxnet import onnx as mx_onnx

    from ..runs import wait_for_mxnet, write_atomic

    height, width = run.input_size
    if check_batch is None:
        rng = np.random.default_rng(0)
        check_batch = run.preprocess(list(rng.integers(0, 256, (4, height, width, 3),
                                                       dtype=np.uint8)))
    expected = run.net(mx.nd.array(check_batch, ctx=run.ctx)).asnumpy()
    wait_for_mxnet()
    with tempfile.TemporaryDirectory(prefix="dml-export-") as tmp:
        prefix = os.path.join(tmp, "net")
        run.net.export(prefix)
        symbol = exportable_symbol(mx.sym.load(prefix + "-symbol.json"))
        params = {k.split(":", 1)[1]: v for k, v in mx.nd.load(prefix + "-0000.params").items()}
        raw = os.path.join(tmp, "model.onnx")
        try:
            with _RawTensors(onnx.helper):
                mx_onnx.export_model(symbol, params, [(1, 3, height, width)], [np.float32], raw,
                                     dynamic=True,
                                     dynamic_input_shapes=[(None, 3, height, width)])
        except Exception as err:  # pylint: disable=broad-except  (the exporter raises anything)
            from ..errors import error_summary

            raise DmlError("MXNet's ONNX exporter failed on %s: %s"
                           % (run.checkpoint, error_summary(err))) from None
        model = _tidy(onnx.load(raw), dict(
            mean=list(run.mean), std=list(run.std), input_size=list(run.input_size),
            resize=run.resize, distance=run.config.distance, embedding_dim=int(expected.shape[1]),
            checkpoint=os.path.abspath(run.checkpoint), producer="dml"))
        onnx.checker.check_model(model)
        data = model.SerializeToString()
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        got = session.run(["embedding"], {"data": check_batch.astype(np.float32)})[0]
        diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else np.inf
        if not diff <= tolerance:
            raise DmlError("ONNX Runtime's embeddings differ from MXNet's by %g (> %g): the "
                           "export is not written" % (diff, tolerance))

        def save(tmp_path):
            with open(tmp_path, "wb") as f:
                f.write(data)

        write_atomic(save, out_path)
    return out_path, diff


def onnx_embed(model_path, batch):
    """Embeddings of a preprocessed float32 batch with ONNX Runtime alone."""
    ort = _require("onnxruntime", "onnxruntime==1.16.3")
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"data": np.asarray(batch, dtype=np.float32)})[0]
