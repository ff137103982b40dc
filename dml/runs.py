"""Run folders: ``<output-root>/<dataset>/<method>/<YYYYmmddHHMM>[-N]/`` with ``logs/``,
``params/``, ``config.json`` and ``metrics.json``. An existing folder is never reused."""
import errno
import json
import os
import re
import shutil
import time

from . import DmlError, WriteFailed

_LOW_SPACE = 64 << 20  # bytes: below this, a write that failed without saying why hit a full disk


def write_failure(path, err):
    """The :class:`WriteFailed` for a failed write of ``path``. MXNet's file writer reports a
    full disk only as "Write incomplete", so a failure with little free space left counts as one."""
    folder = os.path.dirname(os.path.abspath(path))
    full = getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if not full:
        try:
            full = shutil.disk_usage(folder).free < _LOW_SPACE
        except OSError:
            pass
    if full:
        return WriteFailed("no space left on the device of %s (writing %s): free some space, or "
                           "write the run elsewhere" % (folder, os.path.basename(path)))
    detail = str(getattr(err, "strerror", None) or err).strip().splitlines()
    return WriteFailed("cannot write %s (%s)" % (path, detail[0][:200] if detail else
                                                  type(err).__name__))


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomic(save, path):
    """``save(tmp)`` then rename ``tmp`` to ``path``: a reader (or a kill) never sees half a file.
    A failed write leaves no temporary file and raises :class:`dml.WriteFailed`."""
    tmp = path + ".tmp"
    try:
        save(tmp)
        os.replace(tmp, path)
    except Exception as err:  # OSError, MXNetError ("Write incomplete"), matplotlib's errors
        _remove_quietly(tmp)
        if isinstance(err, (DmlError, WriteFailed)):
            raise
        raise write_failure(path, err) from None


def create_run_dir(output_root, dataset, method, now=None):
    """Create and return a fresh run folder (``-2``, ``-3``, ... when the minute is taken)."""
    stamp = time.strftime("%Y%m%d%H%M", time.localtime(now))
    parent = os.path.normpath(os.path.join(output_root, dataset, method))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as err:
        raise DmlError("cannot write to --output-root %s (%s): pass a writable folder"
                       % (output_root, err.strerror or err)) from None
    if not os.access(parent, os.W_OK):
        raise DmlError("cannot write to --output-root %s: pass a writable folder" % output_root)
    suffix = 1
    while True:
        name = stamp if suffix == 1 else "%s-%d" % (stamp, suffix)
        path = os.path.join(parent, name)
        try:
            os.mkdir(path)  # atomic: two runs in the same minute cannot get the same folder
        except FileExistsError:
            suffix += 1
            continue
        except OSError as err:
            raise DmlError("cannot create run folder %s (%s)" % (path, err.strerror or err)) from None
        os.mkdir(os.path.join(path, "logs"))
        os.mkdir(os.path.join(path, "params"))
        return path


def write_json(path, data):
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    def save(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
    write_atomic(save, path)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_run_json(run_dir, name):
    """``run_dir/name`` parsed; a missing or unreadable file is a :class:`DmlError`."""
    path = os.path.join(run_dir, name)
    if not os.path.isfile(path):
        raise DmlError("%s holds no %s: not a finished dml run folder (python -m dml train "
                       "writes one)" % (run_dir, name))
    try:
        return read_json(path)
    except (OSError, ValueError) as err:
        raise DmlError("cannot read %s (%s)" % (path, err)) from None


def find_runs(root):
    """Every run folder under ``root`` (itself included) that holds a ``metrics.json`` and a
    ``config.json``, sorted by path."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("logs", "params", "plots"))
        if "metrics.json" in files and "config.json" in files:
            found.append(folder)
    return sorted(found)


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
                           "finishes or evaluates (--eval-period)" % run_dir)
        return "net", path, int(read_json(info)["epoch"])
    if not os.path.isfile(checkpoint):
        raise DmlError("--checkpoint %s: no such file (pass last, best or a .params file)"
                       % checkpoint)
    name = os.path.basename(checkpoint)
    export = _EXPORT_PARAMS.match(name)
    if export:
        symbol = os.path.join(os.path.dirname(checkpoint), "embedding-symbol.json")
        if not os.path.isfile(symbol):
            raise DmlError("--checkpoint %s is a net.export file but %s is missing"
                           % (checkpoint, symbol))
        return "export", checkpoint, int(export.group(1))
    net = _NET_PARAMS.match(name)
    return "net", checkpoint, int(net.group(1)) if net else 0


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


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


def remove_partial_files(run_dir):
    """Delete the ``*.tmp`` files a killed run left (a write that never reached its rename)."""
    removed = []
    for folder, _, files in os.walk(run_dir):
        for name in files:
            if name.endswith(".tmp") or name.startswith(".tmp-"):
                os.remove(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
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
