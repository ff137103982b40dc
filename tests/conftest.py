import os
import sys

# Before mxnet loads: the cores shared among pytest-xdist's workers for OpenMP (every core when
# the suite runs in one process), and no download attempts from the tests.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))
os.environ["DML_OFFLINE"] = "1"
sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def image_check_records(tmp_path_factory):
    """The records of decoded images (dml.data.checks) go to this session's folder, not the
    user's ~/.cache (the tests' subprocesses inherit it)."""
    os.environ["DML_CACHE_DIR"] = str(tmp_path_factory.mktemp("dml-cache"))
    yield
    os.environ.pop("DML_CACHE_DIR", None)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory):
    from fakedata import write_cifar

    root = tmp_path_factory.mktemp("cifar")
    write_cifar(str(root), "cifar10", "python", n_train=150, n_test=50)
    return str(root)


@pytest.fixture(scope="session")
def tiny_run(tiny_cifar, tmp_path_factory):
    """One 2-epoch run on tiny CIFAR-10 files: (output root, run folder, what it printed).
    Tests that change a run folder work on a copy."""
    import io
    from contextlib import redirect_stdout

    from dml.cli import main
    from runhelpers import TINY, only_run_dir

    out = str(tmp_path_factory.mktemp("out"))
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(["train", "--method", "triplet_semihard", "--dataset", "cifar10", "--data-root",
                     tiny_cifar, "--epochs", "2", "--save-period", "1", "--keep-checkpoints", "2",
                     "--output-root", out] + TINY)
    assert code == 0
    return out, only_run_dir(out, "cifar10", "triplet_semihard"), printed.getvalue()
