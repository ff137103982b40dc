import os
import sys

# Before mxnet loads: every core for OpenMP, and no download attempts from the tests.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ["DML_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(__file__))
