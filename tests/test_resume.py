"""Crash-safe checkpoints and --resume: kills at several points, Ctrl-C, NaN, bad input."""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dml.runs import complete_checkpoints, partial_files
from runhelpers import (ROOT, TINY, load_json, only_run_dir, read_with_tensorboard,
                        run_main, signal_at_step)

EPOCHS = 3
SCORES = ["precision_at_1", "r_precision", "map_at_r", "recall_at_1", "recall_at_8", "nmi",
          "knn_accuracy"]

# Runs dml train with os.replace replaced: its N-th call SIGKILLs the process just before the
# rename (the temporary file written, the final name not yet), like a kill mid-write.
KILL_AT_RENAME = """
import os, signal, sys
n, calls, rename = int(sys.argv[1]), [0], os.replace
def replace(src, dst):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(src, dst)
os.replace = replace
from dml.cli import main
sys.exit(main(sys.argv[2:]))
"""


def train_args(tiny_cifar, out, *extra):
    return ["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", str(EPOCHS),
            "--output-root", out] + TINY + list(extra)


run, load = run_main, load_json


def subprocess_env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))


@pytest.fixture(scope="module")
def reference(tiny_cifar, tmp_path_factory):
    """An uninterrupted run: what every resumed run must reproduce."""
    out = str(tmp_path_factory.mktemp("reference"))
    code, _ = run(train_args(tiny_cifar, out))
    assert code == 0
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    return load(run_dir), load(run_dir, "logs/history.json")


def assert_same_run(run_dir, reference):
    metrics, history = reference
    for key in SCORES:
        assert load(run_dir)[key] == pytest.approx(metrics[key], abs=1e-6), key
    resumed = load(run_dir, "logs/history.json")
    assert [h["epoch"] for h in resumed] == list(range(1, EPOCHS + 1))
    for got, want in zip(resumed, history):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)


def assert_clean(run_dir):
    """No partial file, every checkpoint's files as its state file says, one export."""
    leftovers = partial_files(run_dir)  # (hidden ones too, which glob would not list)
    assert not leftovers
    states = glob.glob(os.path.join(run_dir, "params", "state-*.json"))
    assert len(complete_checkpoints(run_dir)) == len(states) >= 1


def test_resume_continues_exactly(tiny_cifar, reference, tmp_path):
    """2 epochs, then --resume --epochs 3: the metrics, losses and TensorBoard curves of one
    3-epoch run."""
    out = str(tmp_path)
    args = train_args(tiny_cifar, out)
    args[args.index("--epochs") + 1] = "2"
    assert run(args)[0] == 0
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    code, printed = run(["train", "--resume", run_dir])  # finished: nothing to continue
    assert code == 2
    assert run(["train", "--resume", run_dir, "--epochs", str(EPOCHS)])[0] == 0
    assert_same_run(run_dir, reference)
    assert_clean(run_dir)
    config = load(run_dir, "config.json")
    assert config["epochs"] == EPOCHS and len(config["resumed"]) == 1
    assert load(run_dir)["epochs"] == EPOCHS
    scalars = read_with_tensorboard(os.path.join(run_dir, "logs"))["scalars"]
    assert scalars["train/epoch_loss"] == [1, 2, 3]
    assert scalars["train/batch_loss"] == [10, 20]  # 9 batches an epoch, every 10 steps
    # the newest epoch checkpoint is kept (--keep-checkpoints 1)
    assert sorted(s["id"] for s in complete_checkpoints(run_dir)) == ["0003"]


# The renames of a 3-epoch run: config.json (1); per epoch net, trainer, state, history.json
# (2-5, 6-9); the last epoch's export (10, 11), its checkpoint with the net hard-linked to the
# export (12-14) and history (15); then params/best (16-19), history (20), the plots (21, 22) and
# metrics.json (23).
@pytest.mark.parametrize("kill_at", [6, 8, 9, 11, 12, 14, 18, 23])
def test_sigkill_at_any_write_then_resume(tiny_cifar, reference, tmp_path, kill_at):
    """SIGKILL at the kill_at-th rename: inside the 2nd checkpoint (6), before its state file
    (8: the checkpoint is incomplete, resume takes the 1st), after it (9), in the final export
    (11), at the final checkpoint's linked net (12), before its state file (14), in the best
    checkpoint (18) and before metrics.json (23).
    Resuming continues from the newest complete checkpoint and ends as the uninterrupted run;
    the partial files are gone."""
    out = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, str(kill_at)]
                          + train_args(tiny_cifar, out), env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
    code, _ = run(["train", "--resume", run_dir])
    assert code == 0
    assert_same_run(run_dir, reference)
    assert_clean(run_dir)
    scalars = read_with_tensorboard(os.path.join(run_dir, "logs"))["scalars"]
    assert scalars["train/epoch_loss"] == [1, 2, 3]


def test_kill_before_the_first_checkpoint_cannot_resume(tiny_cifar, tmp_path, capsys):
    out = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILL_AT_RENAME, "4"]
                          + train_args(tiny_cifar, out), env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    assert complete_checkpoints(run_dir) == []  # the 1st state file never got its name
    assert run(["train", "--resume", run_dir])[0] == 2
    assert "no complete checkpoint" in capsys.readouterr().err


def test_sigkill_of_a_real_process_mid_epoch(tiny_cifar, reference, tmp_path):
    """A plain SIGKILL while the 2nd epoch trains (after the 1st checkpoint)."""
    out = str(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "dml"] + train_args(tiny_cifar, out),
                            env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state = None
    while time.time() < deadline and proc.poll() is None:
        state = glob.glob(os.path.join(out, "cifar10", "triplet_semihard", "*", "params",
                                       "state-0001.json"))
        if state:
            break
        time.sleep(0.05)
    assert state, "the 1st checkpoint never appeared"
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    assert run(["train", "--resume", run_dir])[0] == 0
    assert_same_run(run_dir, reference)
    assert_clean(run_dir)


def test_a_truncated_checkpoint_is_ignored(tiny_cifar, tmp_path):
    """A file that no longer matches its state file (disk trouble, a copy cut short) makes its
    checkpoint incomplete: resume takes the one before (kept with --keep-checkpoints 2)."""
    out = str(tmp_path)
    args = train_args(tiny_cifar, out, "--keep-checkpoints", "2")
    args[args.index("--epochs") + 1] = "2"
    assert run(args)[0] == 0
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    path = os.path.join(run_dir, "params", "net-0002.params")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert [s["id"] for s in complete_checkpoints(run_dir)] == ["0001"]
    os.remove(os.path.join(run_dir, "metrics.json"))
    assert run(["train", "--resume", run_dir])[0] == 0
    assert [s["id"] for s in complete_checkpoints(run_dir)][-1] == "0002"


# Runs `dml train` in a fresh process and sends itself SIGINT (a real Ctrl-C) in its N-th step.
INT_AT_STEP = signal_at_step("SIGINT")


def test_ctrl_c_checkpoints_then_resume(tiny_cifar, reference, tmp_path):
    """SIGINT in a separate process, during the 3rd step of epoch 2 (9 steps an epoch): the step
    finishes, the partial-epoch checkpoint 0002-b000003 is written, exit 130; --resume, in this
    process, reads what that one wrote, goes on from batch 4 and ends as the uninterrupted run."""
    out = str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", INT_AT_STEP, "12"] + train_args(tiny_cifar, out),
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "checkpoint 0002-b000003 written" in proc.stderr and "--resume" in proc.stderr
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    newest = complete_checkpoints(run_dir)[-1]
    assert newest["id"] == "0002-b000003" and newest["batch"] == 3
    assert run(["train", "--resume", run_dir])[0] == 0
    assert_same_run(run_dir, reference)
    assert_clean(run_dir)


def test_ctrl_c_mid_epoch_writes_a_partial_checkpoint(tiny_cifar, reference, tmp_path,
                                                      monkeypatch, capsys):
    """SIGINT during the 3rd batch of epoch 2 (the real handler, in this process): checkpoint
    0002-b000003, exit 130; --resume continues from batch 4 and ends as the uninterrupted run."""
    import dml.train.loop as engine

    real_step = engine.train_step
    calls = [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 12:  # 9 batches an epoch
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", interrupted)
    out = str(tmp_path)
    assert run(train_args(tiny_cifar, out))[0] == 130
    assert "checkpoint 0002-b000003 written" in capsys.readouterr().err
    monkeypatch.setattr(engine, "train_step", real_step)
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    newest = complete_checkpoints(run_dir)[-1]
    assert (newest["epoch"], newest["batch"], newest["step"]) == (2, 3, 12)
    assert run(["train", "--resume", run_dir])[0] == 0
    assert_same_run(run_dir, reference)
    assert_clean(run_dir)
    # the partial checkpoint is dropped once later ones exist
    assert "0002-b000003" not in [s["id"] for s in complete_checkpoints(run_dir)]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_cifar, tmp_path, monkeypatch,
                                                           capsys):
    import mxnet as mx

    import dml.train.loop as engine

    real_step = engine.train_step
    calls = [0]

    def poisoned(*args, **kwargs):
        loss, stat = real_step(*args, **kwargs)
        calls[0] += 1
        if calls[0] > 12:  # the 4th batch of the 2nd epoch
            loss = loss * mx.nd.array([np.nan], ctx=loss.context)
        return loss, stat

    monkeypatch.setattr(engine, "train_step", poisoned)
    out = str(tmp_path)
    code, _ = run(train_args(tiny_cifar, out))
    assert code == 1
    err = capsys.readouterr().err
    assert "is nan" in err and "last good checkpoint, 0001" in err
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    assert [s["id"] for s in complete_checkpoints(run_dir)] == ["0001"]
    assert not os.path.exists(os.path.join(run_dir, "metrics.json"))
    assert not glob.glob(os.path.join(run_dir, "params", "net-0002*"))


@pytest.mark.parametrize("extra,message", [
    (["--method", "softmax"], "is a triplet_semihard run, not softmax"),
    (["--lr", "0.5"], "the run has --lr 0.001"),
    (["--output-root", "elsewhere"], "keeps its settings"),
])
def test_resume_keeps_the_runs_settings(tiny_run, tmp_path, capsys, extra, message):
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run[1], run_dir)
    before = sorted(os.listdir(os.path.join(run_dir, "params")))
    assert run(["train", "--resume", run_dir, "--epochs", "3"] + extra)[0] == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert sorted(os.listdir(os.path.join(run_dir, "params"))) == before


def test_resume_bad_folders(tmp_path, tiny_run, capsys):
    assert run(["train", "--resume", str(tmp_path / "missing")])[0] == 2
    assert "no such run folder" in capsys.readouterr().err
    assert run(["train", "--resume", str(tmp_path)])[0] == 2
    assert "holds no config.json" in capsys.readouterr().err
    run_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run[1], run_dir)
    for path in glob.glob(os.path.join(run_dir, "params", "state-*.json")):
        os.remove(path)
    assert run(["train", "--resume", run_dir, "--epochs", "3"])[0] == 2
    assert "no complete checkpoint" in capsys.readouterr().err
