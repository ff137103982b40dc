import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "scripts", "check_python.py")


def test_supported_python_passes_the_check():
    assert subprocess.run([sys.executable, CHECK]).returncode == 0


def _python312():
    found = glob.glob("/root/.pyenv/versions/3.12*/bin/python3.12") + glob.glob("/usr/bin/python3.12")
    return found[0] if found else None


@pytest.mark.skipif(_python312() is None, reason="no Python 3.12 on this machine")
def test_unsupported_python_gets_one_sentence(tmp_path):
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-s", "VENV=%s" % venv, "PYTHON=%s" % _python312(), "install"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "dml needs Python 3.8-3.11" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not venv.exists()  # nothing half-made


def test_install_is_idempotent():
    proc = subprocess.run(["make", "-n", "install"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "pip install" not in proc.stdout  # already installed: make has nothing to do
