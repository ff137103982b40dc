"""Writing files so that a crash never leaves half of one: a temporary name and a rename, JSON,
hard links, and one line for a write that failed (a full disk, a read-only folder).
"""
import errno
import json
import os
import shutil

from ..errors import DmlError, WriteFailed


_LOW_SPACE = 64 << 20  # bytes: below this, a write that failed without saying why hit a full disk


def write_failure(path, err):
    """The :class:`WriteFailed` for a failed write of ``path``. MXNet's file writer reports a
    full disk only as "Write incomplete" (no errno), so such a failure with little free space
    left counts as one; an error that names its cause (permission denied, a read-only or
    pseudo file system such as /proc, which always shows no free space) is reported as it is."""
    folder = os.path.dirname(os.path.abspath(path))
    code = getattr(err, "errno", None)
    full = code in (errno.ENOSPC, errno.EDQUOT)
    if not full and code is None:
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


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file


def temporary_file(path):
    """A new, empty temporary file beside ``path`` (``.NAME.XXXXXXXX.tmp``), created with
    ``O_EXCL`` under a random name: a link planted at a predictable name cannot redirect the
    write. Its mode is what ``open`` would give ``path``."""
    import tempfile

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".%s." % os.path.basename(path), suffix=".tmp")
    try:
        os.fchmod(fd, _FILE_MODE)
    finally:
        os.close(fd)
    return tmp


def write_atomic(save, path):
    """``save(tmp)`` then rename ``tmp`` to ``path``: a reader (or a kill) never sees half a file,
    and the temporary file is a new one (:func:`temporary_file`), never a link someone planted.
    A failed write leaves no temporary file and raises :class:`dml.WriteFailed`; ``path`` naming
    a folder is a :class:`dml.DmlError`."""
    if os.path.isdir(path):
        raise DmlError("cannot write %s: it is a folder (name a file)" % path)
    try:
        tmp = temporary_file(path)
    except OSError as err:
        raise write_failure(path, err) from None
    try:
        save(tmp)
        os.replace(tmp, path)
    except Exception as err:  # OSError, MXNetError ("Write incomplete"), matplotlib's errors
        _remove_quietly(tmp)
        if isinstance(err, (DmlError, WriteFailed)):
            raise
        raise write_failure(path, err) from None


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


def _save_npz(path, arrays):
    import numpy as np

    with open(path, "wb") as f:  # (np.savez would append .npz to a temporary name)
        np.savez(f, **arrays)


def _link(source, path):
    """``path`` as a hard link to ``source`` (no second copy of the bytes on disk), replacing
    any earlier file atomically; False where the file system has no hard links."""
    tmp = path + ".tmp"
    try:
        if os.path.exists(path) and os.path.samefile(source, path):
            return True  # linked already (a resumed run); rename() of two links to one file
            # would do nothing and leave the temporary link behind
        if os.path.lexists(tmp):
            os.remove(tmp)  # (a link planted there is removed, not followed)
        os.link(source, tmp)
    except OSError:
        return False
    os.replace(tmp, path)
    return True


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []
