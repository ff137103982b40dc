"""``python -m dml <command>``: the command line, one module per command (``add_parser(sub)``
and ``cmd_<name>(args)``), assembled here. User errors are one line on stderr and exit 2."""
import os
import re
import sys

from ..argtypes import Parser as _Parser
from ..argtypes import check_omp_threads
from ..errors import DmlError, WriteFailed
from ..version import __version__
from . import compare, doctor, embed, evaluate, export, index, search, train
from .common import _setup_console_logging, parse_gpus  # noqa: F401  (dml.cli.parse_gpus)
from .train import RESUME_MAY_CHANGE, config_from_args, resume_config  # noqa: F401

COMMANDS = (train, evaluate, compare, embed, index, search, export, doctor)  # --help's order


def build_parser():
    parser = _Parser(prog="dml", description="Deep metric learning on MXNet Gluon: train, "
                     "evaluate and compare embedding networks; embed, index and search images "
                     "with a trained run and export it to ONNX.")
    parser.add_argument("--version", action="version", version="dml " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


_DEPENDENCIES = ("mxnet", "gluoncv", "mxboard", "numpy", "numba", "sklearn", "scipy", "PIL", "tqdm",
                 "matplotlib", "faiss", "onnx", "onnxruntime")


def as_flags(text, flags):
    """A library message in command-line words: the library names Python parameters
    (``data_root=/x``, `` `n_classes` ``); here they are the flags ``--data-root /x``,
    ``--n-classes``. Only names in ``flags`` (the parser's destinations) are changed."""
    def flag(name):
        return "-" + name if len(name) == 1 else "--" + name.replace("_", "-")  # -k

    text = re.sub(r"`([a-z][a-z_]*)`", lambda m: flag(m.group(1)) if m.group(1) in flags
                  else m.group(0), text)
    return re.sub(r"(?<![\w-])([a-z][a-z_]*)=(?=\S)", lambda m: flag(m.group(1)) + " "
                  if m.group(1) in flags else m.group(0), text)


def _destinations(parser):
    """The destinations of every option of ``parser`` and its subcommands, and the names of
    their long flags (``no_pretrained`` for ``--no-pretrained``)."""
    names = set()
    for action in parser._actions:  # pylint: disable=protected-access
        if action.option_strings:
            names.add(action.dest)
            names.update(o[2:].replace("-", "_") for o in action.option_strings
                         if o.startswith("--"))
        for choice in getattr(action, "choices", None) or {}:
            sub = action.choices[choice] if isinstance(action.choices, dict) else None
            if sub is not None:
                names |= _destinations(sub)
    return names


def _several_cpu_contexts(argv):
    """Whether ``argv`` asks ``dml train`` for two or more CPU contexts (``--cpus N``)."""
    argv = list(argv)
    if not argv or argv[0] != "train":
        return False
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--cpus=") else (
            argv[i + 1] if arg == "--cpus" and i + 1 < len(argv) else None)
        if value is not None and value.strip().isdigit() and int(value) > 1:
            return True
    return False


def main(argv=None):
    problem = check_omp_threads(os.environ, "dml")  # before MXNet (libgomp aborts on it)
    if problem:
        sys.stderr.write(problem)
        return 2
    # MXNet's OpenMP pool otherwise starts with one thread on some machines: use every core.
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    if _several_cpu_contexts(sys.argv[1:] if argv is None else argv) and \
            "mxnet" not in sys.modules:
        # SyncBatchNorm over CPU contexts needs MXNet's engine to run several threads per device,
        # read once, when MXNet loads (so only before it loads): see dml.train.devices.CPU_SYNC_NOTE
        os.environ.setdefault("MXNET_CPU_WORKER_NTHREADS", "4")
    _setup_console_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DmlError as err:
        sys.stderr.write("dml %s: error: %s\n" % (args.command, as_flags(str(err),
                                                                      _destinations(parser))))
        return 2
    except WriteFailed as err:  # a full disk, a vanished folder: what was written before stays
        sys.stderr.write("dml %s: error: %s\n" % (args.command, err))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("dml %s: interrupted\n" % args.command)
        return 130
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _DEPENDENCIES:
            raise
        sys.stderr.write("dml %s: error: %s is not installed for %s: run make install in %s, then "
                         "use %s -m dml (or source .venv/bin/activate)\n" % (
                             args.command, err.name, sys.executable,
                             os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             os.path.join(".venv", "bin", "python")))
        return 2
