"""What the process's environment says (the lowest layer: imports nothing of dml)."""
import os


def offline():
    """True when ``DML_OFFLINE`` is set (and not 0): no download is attempted."""
    return os.environ.get("DML_OFFLINE", "") not in ("", "0")
