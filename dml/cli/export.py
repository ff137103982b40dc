"""``dml export RUN_DIR --onnx MODEL.onnx``: a run's network as ONNX."""
from ..errors import DmlError
from .common import _Formatter



def add_parser(sub):
    """The ``export`` subcommand's parser."""
    export = sub.add_parser(
        "export", help="export a run's network to ONNX",
        description="Write the run's embedding network as ONNX (input 'data': float32 N x 3 x H "
        "x W with the run's normalization, recorded in the model's metadata; output "
        "'embedding'), with a dynamic batch axis. ONNX Runtime checks it against MXNet before "
        "the file is written.", formatter_class=_Formatter)
    export.set_defaults(func=cmd_export)
    export.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by dml train")
    export.add_argument("--onnx", required=True, metavar="MODEL.onnx", help="the file to write")
    export.add_argument("--checkpoint", default=None, metavar="last|best|PATH",
                        help="which of the run's checkpoints to export (default: the one "
                        "training reported)")


def cmd_export(args):
    from ..export import export_onnx
    from ..serve import check_writable, load_run

    if not args.onnx.lower().endswith(".onnx"):
        raise DmlError("--onnx %s: name a .onnx file" % args.onnx)
    check_writable(args.onnx)
    import importlib.util

    for module, pin in (("onnx", "onnx==1.14.1"), ("onnxruntime", "onnxruntime==1.16.3")):
        if importlib.util.find_spec(module) is None:
            raise DmlError("%s is not installed: run make install (it installs %s)"
                           % (module, pin))
    run = load_run(args.run_dir, args.checkpoint)
    path, diff = export_onnx(run, args.onnx)
    height, width = run.input_size
    print("exported %s to %s (input data: N x 3 x %d x %d float32, output embedding: N x %d)"
          % (run.checkpoint, path, height, width, run.config.embedding_dim))
    print("ONNX Runtime vs MXNet: max abs difference %.2g" % diff)
    return 0
