"""What the GPU can and cannot do (issue 19), with a stand-in ``nvidia-smi`` on the PATH (as the
ssh launcher test does for ``ssh``): the wheel ``make install`` picks, the train-time refusal of
a GPU the installed build has no code for, the default leaving such GPUs out, and ``dml doctor``.

MXNet 1.9.1's CUDA wheels have machine code for compute capability 5.0-8.6 and no PTX: Hopper
(9.0) cannot run them. The machine these tests run on has no GPU, so the build seen by the
train-time check is replaced with ``mxnet-cu112`` where a test needs it.
"""
import os
import subprocess
import sys

import pytest

from dml import gpus
from dml.cli import main
from runhelpers import ROOT, TINY

H100 = "0, NVIDIA H100 80GB HBM3, 9.0"
A100 = "0, NVIDIA A100-SXM4-40GB, 8.0"
RTX3090 = "1, NVIDIA GeForce RTX 3090, 8.6"
H200 = "1, NVIDIA H200, 9.0"


def stand_in_nvidia_smi(tmp_path, lines, code=0):
    """A folder holding an ``nvidia-smi`` that prints ``lines`` for any arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + "".join("echo '%s'\n" % l for l in lines) + "exit %d\n" % code)
    script.chmod(0o755)
    return str(bin_dir)


def make(tmp_path, lines, *targets, code=0):
    env = {k: v for k, v in os.environ.items() if k != "MXNET"}
    if lines is not None:
        env["PATH"] = stand_in_nvidia_smi(tmp_path, lines, code) + os.pathsep + env["PATH"]
    else:  # no nvidia-smi at all: a PATH without any folder that has one
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep)
                                      if not os.path.exists(os.path.join(p, "nvidia-smi")))
    return subprocess.run(["make", "-s", "-C", ROOT] + list(targets), capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize("lines,wheel,why", [
    ([RTX3090], "mxnet-cu112", None),
    ([A100, RTX3090], "mxnet-cu112", None),
    ([H100], "mxnet", "GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0)"),
    ([A100, H200], "mxnet", "GPU 1 (NVIDIA H200, compute capability 9.0)"),
    ([], "mxnet", None),
    (None, "mxnet", None),
], ids=["8.6", "8.0+8.6", "9.0", "8.0+9.0", "nvidia-smi lists nothing", "no nvidia-smi"])
def test_make_install_chooses_the_wheel_by_compute_capability(tmp_path, lines, wheel, why):
    proc = make(tmp_path, lines, "which-mxnet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == wheel
    if why is None:
        assert "installing the CPU build" not in proc.stderr
    else:
        line = proc.stderr.strip()
        assert len(line.splitlines()) == 1, line
        assert line.startswith("make install: installing the CPU build of mxnet: " + why)
        assert "compute capability 5.0 to 8.6 only (no PTX)" in line
        assert "MXNET=mxnet-cu112 make install forces it" in line


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path):
    proc = make(tmp_path, ["NVIDIA-SMI has failed because it couldn't communicate with the driver"],
                "which-mxnet", code=9)
    assert proc.stdout.strip() == "mxnet"


def test_mxnet_variable_still_overrides(tmp_path):
    env = dict(os.environ, MXNET="mxnet-cu112",
               PATH=stand_in_nvidia_smi(tmp_path, [H100]) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(["make", "-s", "-C", ROOT, "which-mxnet"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.stdout.strip() == "mxnet-cu112" and proc.stderr == ""


@pytest.mark.skipif(gpus.installed_build() != "mxnet" or gpus.query_gpus(),
                    reason="needs this CPU machine's install (the CPU wheel, no GPU)")
def test_a_second_make_install_is_a_no_op_and_an_hopper_gpu_keeps_it_so(tmp_path):
    """`make -q` answers whether install would do anything: nothing here, nothing with a 9.0 GPU
    (the CPU wheel again), something (the CUDA wheel) with an 8.6 GPU."""
    assert make(tmp_path, None, "-q", "install").returncode == 0
    assert make(tmp_path, [H100], "-q", "install").returncode == 0
    assert make(tmp_path, [RTX3090], "-q", "install").returncode == 1


def test_query_gpus_reads_index_name_and_capability(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", stand_in_nvidia_smi(tmp_path, [A100, "1, Some, GPU, name, 9.0",
                                                              "2, Old GPU, [N/A]"])
                       + os.pathsep + os.environ["PATH"])
    found = gpus.query_gpus()
    assert [(g.index, g.name, g.capability) for g in found] == [
        (0, "NVIDIA A100-SXM4-40GB", (8, 0)), (1, "Some, GPU, name", (9, 0)), (2, "Old GPU", None)]
    assert gpus.supports("mxnet-cu112", None)  # unknown: not refused
    assert not gpus.supports("mxnet-cu112", (9, 0)) and gpus.supports("mxnet-cu112", (5, 0))
    assert not gpus.supports("mxnet-cu117", (4, 0))


def test_train_refuses_a_gpu_the_build_cannot_run_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", stand_in_nvidia_smi(tmp_path, [A100, H200])
                       + os.pathsep + os.environ["PATH"])
    monkeypatch.setattr(gpus, "installed_build", lambda: "mxnet-cu112")
    out = tmp_path / "out"
    code = main(["train", "--gpus", "1", "--epochs", "1", "--output-root", str(out)] + TINY)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == ("dml train: error: GPU 1 (NVIDIA H200, compute capability 9.0) cannot run the "
                   "installed mxnet-cu112 1.9.1, which has GPU code for compute capability 5.0 to "
                   "8.6 only (no PTX): use the CPU (--gpus ''), an older GPU, or a build of MXNet "
                   "for that architecture")
    assert not out.exists()


def test_evaluate_refuses_it_too(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", stand_in_nvidia_smi(tmp_path, [H100])
                       + os.pathsep + os.environ["PATH"])
    monkeypatch.setattr(gpus, "installed_build", lambda: "mxnet-cu112")
    code = main(["evaluate", tiny_run[1], "--gpus", "0"])
    assert code == 2
    assert "GPU 0 (NVIDIA H100 80GB HBM3, compute capability 9.0) cannot run" in \
        capsys.readouterr().err


def test_the_default_leaves_unusable_gpus_out_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", stand_in_nvidia_smi(tmp_path, [A100, H200])
                       + os.pathsep + os.environ["PATH"])
    with caplog.at_level("WARNING", logger="dml"):
        assert gpus.usable_gpus(2, build="mxnet-cu112") == [0]
    assert "leaving out GPU 1 (NVIDIA H200, compute capability 9.0)" in caplog.text
    assert gpus.usable_gpus(2, build="mxnet") == [0, 1]  # the CPU build sees none anyway
    assert gpus.usable_gpus(0, build="mxnet-cu112") == []


def test_the_engine_refuses_it_without_the_cli(tmp_path, monkeypatch):
    from dml import DmlError
    from dml.engine import make_contexts

    monkeypatch.setenv("PATH", stand_in_nvidia_smi(tmp_path, [H100])
                       + os.pathsep + os.environ["PATH"])
    monkeypatch.setattr(gpus, "installed_build", lambda: "mxnet-cu112")
    with pytest.raises(DmlError, match=r"use the CPU \(gpus=''\)"):
        make_contexts([0])


def test_doctor_on_this_cpu_machine(tmp_path):
    env = dict(os.environ, PATH=stand_in_nvidia_smi(tmp_path, [A100, H200])
               + os.pathsep + os.environ["PATH"])
    proc = subprocess.run([sys.executable, "-m", "dml", "doctor"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for key in ("python", "mxnet", "numpy", "numba", "cpu cores", "OMP_NUM_THREADS"):
        assert any(line.startswith(key + " ") for line in out.splitlines()), (key, out)
    assert "1.9.1 (mxnet, CPU only)" in out
    assert "gpu 0" in out and "NVIDIA A100-SXM4-40GB, compute capability 8.0: not usable: this " \
        "is the CPU build of mxnet" in out
    assert "gpu 1" in out and "compute capability 9.0" in out
    assert "step on cpu(0)   ok: one ResNet-18 + semi-hard training step in" in out


def test_doctor_marks_a_gpu_the_build_cannot_run(tmp_path, monkeypatch):
    import mxnet as mx

    from dml import doctor

    monkeypatch.setenv("PATH", stand_in_nvidia_smi(tmp_path, [A100, H200])
                       + os.pathsep + os.environ["PATH"])
    monkeypatch.setattr(doctor, "installed_build", lambda: "mxnet-cu112")

    class Features:
        def is_enabled(self, name):
            return name == "CUDA"

    monkeypatch.setattr(mx.runtime, "Features", Features)
    monkeypatch.setattr(mx.context, "num_gpus", lambda: 2)
    rows = dict(doctor.environment())
    assert rows["mxnet"] == "1.9.1 (mxnet-cu112, CUDA 112)"
    assert rows["gpu 0"].endswith("compute capability 8.0: usable")
    assert rows["gpu 1"].endswith("compute capability 9.0: NOT usable: mxnet-cu112 has code for "
                                  "5.0 to 8.6 only")


def _script(tmp_path, body):
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(0o755)
    return str(bin_dir)


def test_a_failing_or_hung_nvidia_smi_is_reported_not_taken_for_no_gpu(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("PATH", _script(tmp_path, "echo 'NVIDIA-SMI has failed because it "
                                       "couldn'\\''t communicate with the NVIDIA driver.'; exit 9")
                       + os.pathsep + os.environ["PATH"])
    found, problem = gpus.gpu_report()
    assert found == [] and problem.startswith("nvidia-smi failed (exit 9): NVIDIA-SMI has failed")
    monkeypatch.setenv("PATH", _script(tmp_path, "sleep 60") + os.pathsep
                       + os.environ["PATH"])
    started = time.time()
    found, problem = gpus.gpu_report(timeout=2)
    assert time.time() - started < 10
    assert found == [] and problem == "nvidia-smi did not answer within 2 s (a hung driver?)"
    assert gpus.NVIDIA_SMI_TIMEOUT <= 5
