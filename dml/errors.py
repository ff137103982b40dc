"""The exceptions every layer of dml raises, and the one line a user sees of any exception.

The lowest layer: it imports nothing of dml (and no MXNet)."""


class DmlError(Exception):
    """A problem with the user's input (arguments, data, paths): shown as one line, exit code 2."""


class WriteFailed(Exception):
    """A file of a run could not be written (the disk is full, the folder vanished): shown as one
    line, exit code 1. Its temporary file is removed; what was committed before stays usable."""


def error_summary(err, limit=200):
    """The line of an exception's message that says what went wrong. MXNet's messages start with
    "Traceback (most recent call last):" and C++ stack frames; the cause is the last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    lines = [line for line in lines if not (line.startswith("Traceback (most recent call")
                                            or line.startswith("File ")
                                            or line.startswith("[bt]")
                                            or line.startswith("Stack trace"))]
    if not lines:
        return type(err).__name__
    line = lines[-1]
    for prefix in ("MXNetError: ", "mxnet.base.MXNetError: "):
        if line.startswith(prefix):
            line = line[len(prefix):]
    return line[:limit]


# Their public name is dml.DmlError and dml.WriteFailed (tracebacks, pickles, the docs).
DmlError.__module__ = WriteFailed.__module__ = "dml"
