"""Run folders: ``<output-root>/<dataset>/<method>/<YYYYmmddHHMM>[-N]/`` with ``logs/``,
``params/``, ``config.json`` and ``metrics.json``. An existing folder is never reused."""
import json
import os
import time

from . import DmlError


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
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)
