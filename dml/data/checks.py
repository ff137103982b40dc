"""The full decode check of image files, remembered between runs.

Every image of a folder or benchmark dataset is decoded in full when it loads, so a missing,
truncated or undecodable file fails with its path before training, never mid-run or as a grey
image. Stanford Online Products holds 120,053 images: minutes of decoding at every start. So a
record of the files that decoded, each with its size, modification and inode change times
(nanoseconds) and inode number, is kept in ``$DML_CACHE_DIR`` (default ``$XDG_CACHE_HOME/dml``,
else ``~/.cache/dml``), one JSON file per image folder, image size and resize rule; a file whose
record changed since is decoded again (a rewrite that keeps the size and sets the modification
time back still changes the inode change time, which no program can set). As git does with its
index, a file modified less than two seconds before its check is not recorded ("racily clean": a same-size rewrite within the file system's timestamp
granularity would keep its modification time), so it is decoded again next time. Delete the
record (or set ``DML_RECHECK=1``) to decode everything again. A record that cannot be read (not
JSON, too large, another layout) is ignored and rewritten; one that cannot be written (a read-only
home) only costs the next start its minutes.
"""
import hashlib
import json
import logging
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor

from ..errors import DmlError
from .images import read_image

log = logging.getLogger("dml.data")
MAX_RECORD_BYTES = 256 << 20  # ~2.5 million files; a larger record is not ours and is ignored
_VERSION = 2  # 1 recorded [size, mtime_ns] only
RACY_NS = 2 * 10 ** 9  # a file modified this recently before its check is checked again
# what identifies an unchanged file: a rewrite that keeps the size and the modification time
# (touch -d, a copy with its times) still changes the inode change time, which no user can set
_STAMP = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino")


def cache_dir():
    """Where the records live: ``$DML_CACHE_DIR``, else ``$XDG_CACHE_HOME/dml``, else
    ``~/.cache/dml``."""
    if os.environ.get("DML_CACHE_DIR"):
        return os.path.expanduser(os.environ["DML_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dml")


def record_path(paths, size, resize):
    """The record of ``paths`` checked at ``size`` with ``resize``: one file per folder (their
    common parent) and setting."""
    root = os.path.commonpath(paths) if paths else ""
    key = hashlib.sha1(("%s\0%s\0%s" % (root, size, resize)).encode()).hexdigest()[:20]
    return os.path.join(cache_dir(), "checked-images-%s.json" % key)


def _read_record(path):
    """``{file: [size, mtime_ns, ctime_ns, inode]}`` of an earlier check, or {} (no record, or not a record)."""
    try:
        if os.path.getsize(path) > MAX_RECORD_BYTES:
            return {}
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) and data.get("version") == _VERSION \
        else None
    if not isinstance(files, dict):
        return {}
    return {k: v for k, v in files.items() if isinstance(v, list) and len(v) == len(_STAMP)
            and all(isinstance(n, int) for n in v)}


def _write_record(path, files):
    import tempfile

    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".checked-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": _VERSION, "files": files}, f)
        os.replace(tmp, path)
    except OSError as err:
        log.debug("could not write the image check record %s: %s", path, err)
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


def check_images(paths, size, resize="square", missing="%s is missing"):
    """Decode every image of ``paths`` in full, as :func:`dml.data.images.read_image` at
    ``size`` with ``resize`` (threads: Pillow releases the GIL), except those that decoded in an
    earlier check and have not changed since (size, times and inode). A missing file is a
    :class:`dml.DmlError` of ``missing % path``; an undecodable one read_image's. Returns the
    number of images decoded."""
    from tqdm import tqdm

    stamps = {}  # each file once, in order: its _STAMP
    for path in map(os.path.abspath, paths):
        try:
            st = os.stat(path)
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise DmlError(missing % path)
        stamps[path] = [int(getattr(st, field)) for field in _STAMP]
    record = record_path(list(stamps), size, resize)
    recheck = os.environ.get("DML_RECHECK", "") not in ("", "0")
    known = {} if recheck else _read_record(record)
    todo = [p for p, stamp in stamps.items() if known.get(p) != stamp]
    checked = {}  # the files of todo that decoded

    def check(path):
        read_image(path, size, resize)
        return path

    try:
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool, tqdm(
                total=len(todo), desc="checking images", unit="image", disable=None, leave=False,
                mininterval=1.0) as bar:
            for path in pool.map(check, todo):
                checked[path] = stamps[path]
                bar.update(1)
    finally:  # the files that decoded are remembered even when a later one did not
        if todo:
            settled = time.time_ns() - RACY_NS
            _write_record(record, {**known, **{p: stamp for p, stamp in checked.items()
                                               if stamp[1] < settled}})
    if len(todo) < len(stamps):
        log.debug("decoded %d of %d images in full; %d are unchanged since an earlier check "
                  "(%s; DML_RECHECK=1 decodes them all)", len(todo), len(stamps),
                 len(stamps) - len(todo), record)
    return len(todo)
