"""Checkpoints in a run's ``params/``: their ids, which are complete, the partial files a crash
leaves, pruning, a checkpoint named by a user, and what the export is made of.
"""
import os
import re
import shutil

from ..errors import DmlError
from .files import _listdir, _remove_quietly, read_json


_NET_PARAMS = re.compile(r"^net-(\d+)\.params$")


_EXPORT_PARAMS = re.compile(r"^embedding-(\d+)\.params$")


def resolve_checkpoint(run_dir, checkpoint):
    """``checkpoint`` (``last``, ``best`` or a path) -> ``(kind, params_file, epoch)``, kind
    ``"net"`` (``save_parameters`` of the EmbeddingNet) or ``"export"`` (``net.export``'s params,
    with ``embedding-symbol.json`` beside it)."""
    params_dir = os.path.join(run_dir, "params")
    if checkpoint == "last":
        epochs = sorted(int(m.group(1)) for m in map(_NET_PARAMS.match, _listdir(params_dir)) if m)
        if not epochs:
            raise DmlError("%s holds no checkpoint (params/net-<epoch>.params): the run saved none "
                           "yet" % run_dir)
        return "net", os.path.join(params_dir, "net-%04d.params" % epochs[-1]), epochs[-1]
    if checkpoint == "best":
        path = os.path.join(params_dir, "best", "net.params")
        info = os.path.join(params_dir, "best", "best.json")
        if not (os.path.isfile(path) and os.path.isfile(info)):
            raise DmlError("%s holds no best checkpoint (params/best/): it is written when a run "
                           "finishes or evaluates (`eval_period`)" % run_dir)
        return "net", path, int(read_json(info)["epoch"])
    if not os.path.isfile(checkpoint):
        raise DmlError("checkpoint=%s: no such file (pass last, best or a .params file)"
                       % checkpoint)
    name = os.path.basename(checkpoint)
    export = _EXPORT_PARAMS.match(name)
    if export:
        symbol = os.path.join(os.path.dirname(checkpoint), "embedding-symbol.json")
        if not os.path.isfile(symbol):
            raise DmlError("checkpoint=%s is a net.export file but %s is missing"
                           % (checkpoint, symbol))
        return "export", checkpoint, int(export.group(1))
    net = _NET_PARAMS.match(name)
    return "net", checkpoint, int(net.group(1)) if net else 0


# Training checkpoints. A checkpoint is the files ``net-<id>.params``, ``trainer-<id>.states``
# (and ``classifier-<id>.params`` for the classifier methods) and, written last, ``state-<id>.json``:
# epoch, global step, RNG states, best metric, history and the size of every file. The state file
# is the commit mark: a checkpoint without one, or whose files do not match it, is incomplete and
# ignored. ``<id>`` is the epoch (``0003``) after a whole epoch, or ``0004-b000017`` when a run
# stopped (Ctrl-C) after 17 batches of epoch 4.
_STATE = re.compile(r"^state-(\d{4,})(?:-b(\d+))?\.json$")


def checkpoint_id(epoch, batch=None):
    return "%04d" % epoch if batch is None else "%04d-b%06d" % (epoch, batch)


def complete_checkpoints(run_dir):
    """The complete checkpoints of ``run_dir``, oldest first: a list of state dicts, each with its
    ``id``. A state file that cannot be parsed, or whose files are missing or of another size (a
    kill while it was being replaced), does not count."""
    params_dir = os.path.join(run_dir, "params")
    found = []
    for name in _listdir(params_dir):
        if not _STATE.match(name):
            continue
        try:
            state = read_json(os.path.join(params_dir, name))
            files = state["files"]
            ok = all(os.path.getsize(os.path.join(params_dir, f)) == size
                     for f, size in files.items())
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if ok:
            found.append(state)
    return sorted(found, key=lambda s: (s["step"], s["id"]))


def partial_files(root):
    """The temporary files (``*.tmp``) and folders (``.tmp-*``) below ``root`` that a write
    which never reached its rename left, hidden ones included."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            if name.startswith(".tmp-"):
                found.append(os.path.join(folder, name))
        dirs[:] = [d for d in dirs if not d.startswith(".tmp-")]
        found.extend(os.path.join(folder, name) for name in files
                     if name.endswith(".tmp") or name.startswith(".tmp-"))
    return found


def remove_partial_files(run_dir):
    """Delete what :func:`partial_files` finds (a killed run's unfinished writes)."""
    removed = []
    for path in partial_files(run_dir):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            _remove_quietly(path)
        removed.append(path)
    return removed


def prune_checkpoints(run_dir, keep):
    """Keep the newest ``keep`` complete whole-epoch checkpoints (0: all) and the newest one of
    any kind; drop the others, each state file first (the checkpoint then counts as incomplete)
    and its files after, so a kill here leaves only complete or ignored checkpoints."""
    states = complete_checkpoints(run_dir)
    if not states:
        return
    params_dir = os.path.join(run_dir, "params")
    newest = states[-1]
    epochs = [s for s in states if s.get("batch") is None]
    kept = {s["id"] for s in (epochs[-keep:] if keep else epochs)} | {newest["id"]}
    for state in states:
        if state["id"] in kept:
            continue
        os.remove(os.path.join(params_dir, "state-%s.json" % state["id"]))
        for name in state["files"]:  # named by the checkpoint's id: never another's
            try:
                os.remove(os.path.join(params_dir, name))
            except OSError:
                pass


def wait_for_mxnet():
    """Wait for every pending MXNet operation before a network's state is read (saved,
    exported or evaluated).

    Why: MXNet 1.9's BatchNorm updates its moving mean and variance in its *backward* operator,
    and the engine does not order later readers of those arrays after that write. Without this
    wait, ``save_parameters`` right after a training step stored the moving statistics of an
    earlier step (32-40 arrays of ResNet-18 differed from the network that was then evaluated,
    and a resumed run diverged). The wait is global: no per-array wait covers an untracked
    write.
    """
    import mxnet as mx

    mx.nd.waitall()


def _exportable(net, input_shape=None):
    """What ``net.export`` can write: the one-device form of ``net`` (``deployable()``: plain
    BatchNorm for a net trained with SyncBatchNorm) with its hybridized graph built. A net
    trained inside a wrapper (SiameseNet, ClassifierNet) or a twin first embeds one blank image
    of ``input_shape`` (C x H x W) in inference mode, which changes no state."""
    import mxnet as mx

    wait_for_mxnet()
    net = net.deployable() if hasattr(net, "deployable") else net
    if not net._cached_graph:  # pylint: disable=protected-access
        if input_shape is None:
            raise ValueError("export: the net has not run a hybridized forward pass; pass "
                             "input_shape")
        ctx = net.collect_params().list_ctx()[0]
        net(mx.nd.zeros((1,) + tuple(input_shape), ctx=ctx))
        wait_for_mxnet()
    return net
