"""Fail with one sentence (exit 2) when this Python cannot run the pinned MXNet stack."""
import sys

if not ((3, 8) <= sys.version_info[:2] < (3, 12)):
    sys.stderr.write(
        "dml needs Python 3.8-3.11 (mxnet 1.9.1 needs numpy 1.23.5, which has no wheel for Python "
        "%d.%d): install python3.11 and run `make PYTHON=python3.11 install`.\n" % sys.version_info[:2]
    )
    sys.exit(2)
