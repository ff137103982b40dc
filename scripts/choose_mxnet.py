"""Print the MXNet wheel `make install` installs here: mxnet-cu112 when nvidia-smi lists GPUs and
the wheel has code for every one of them, else mxnet (the CPU build), with the reason on stderr.
Runs with the system Python before anything is installed (dml.gpus imports no MXNet)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dml.gpus import choose_wheel  # noqa: E402

wheel, reason = choose_wheel()
if reason:
    sys.stderr.write("make install: %s\n" % reason)
print(wheel)
