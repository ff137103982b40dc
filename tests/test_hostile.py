"""Hostile input and failures, end to end (issue 14): every case is one line on stderr with the
documented exit code and nothing half-written; what one process writes and the next reads
(checkpoints, resume, evaluate) is checked with two real processes.

Exit codes: 2 for bad input (nothing written), 1 for a failure during the run (the disk, the
memory, a diverged loss: the last complete checkpoint stays resumable), 128 + signal after Ctrl-C
(130) and SIGTERM (143), which checkpoint first.
"""
import glob
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from dml.runs import complete_checkpoints, partial_files
from fakedata import write_cifar, write_image_folder
from runhelpers import ROOT, TINY, only_run_dir, refused, signal_at_step

# Runs `dml train` and sends itself SIGTERM (what Slurm and Kubernetes send) in its N-th step.
TERM_AT_STEP = signal_at_step("SIGTERM")


def env():
    return dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))


def dml(*argv, cwd=None, script=None, script_args=()):
    """``python -m dml ARGV`` in a fresh process -> (exit code, stdout, stderr)."""
    cmd = [sys.executable] + (["-c", script] + list(script_args) if script else ["-m", "dml"])
    proc = subprocess.run(cmd + list(argv), capture_output=True, text=True, env=env(), cwd=cwd,
                          timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


def error_line(stderr):
    """The one line a failure prints (log lines before it carry a time stamp)."""
    lines = [l for l in stderr.strip().splitlines() if l.startswith("dml ") or "error" in l]
    assert lines, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[-1]


def load(path):
    with open(path) as f:
        return json.load(f)


def scores(metrics):
    return {k: v for k, v in metrics.items() if k not in ("train_seconds", "checkpoint")}


def no_partial_files(root):
    return partial_files(root)  # (hidden ones too, which glob would not list)


# One method of each kind of batch: P x K online mining, random tuples, plain image batches.
KINDS = {
    "pk": ["--method", "triplet_semihard"] + TINY,
    "tuple": ["--method", "triplet", "--batch-size", "16", "--embedding-dim", "16",
              "--num-workers", "1"],
    "softmax": ["--method", "softmax", "--batch-size", "16", "--embedding-dim", "16",
                "--num-workers", "1"],
    # learnable proxies (checkpointed with the run, 100x learning rate) and a miner's pairs
    "proxy": ["--method", "proxy_anchor", "--batch-size", "16", "--embedding-dim", "16",
              "--num-workers", "1"],
    "mined": ["--method", "multi_similarity"] + TINY,
}


@pytest.fixture(scope="module")
def reference_runs(tiny_cifar, tmp_path_factory):
    """One uninterrupted 2-epoch run of each kind, each trained in its own process."""
    runs = {}
    for kind, argv in KINDS.items():
        out = str(tmp_path_factory.mktemp("ref-" + kind))
        code, _, err = dml("train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs",
                           "2", "--output-root", out, *argv)
        assert code == 0, err[-3000:]
        runs[kind] = only_run_dir(out, "cifar10", argv[1])
    return runs


@pytest.mark.parametrize("kind", list(KINDS))
def test_evaluate_in_another_process_reproduces_the_metrics(reference_runs, tmp_path, kind):
    """The last checkpoint is the network that was evaluated: `dml evaluate` in a new process
    gives metrics.json to the last digit (BatchNorm's moving statistics, updated by MXNet in the
    backward pass, were saved stale before the fix: 0.9707 printed, 0.9643 re-evaluated)."""
    run = str(tmp_path / "run")
    shutil.copytree(reference_runs[kind], run)
    trained = load(os.path.join(run, "metrics.json"))
    code, _, err = dml("evaluate", run)
    assert code == 0, err[-3000:]
    assert scores(load(os.path.join(run, "metrics.json"))) == scores(trained)


@pytest.mark.parametrize("kind", list(KINDS))
def test_sigterm_checkpoints_and_resume_in_a_new_process_equals_the_uninterrupted_run(
        reference_runs, tiny_cifar, tmp_path, kind):
    """SIGTERM mid-epoch: exit 143 with a partial-epoch checkpoint and the resume command; the
    resumed process ends with the uninterrupted run's metrics to the last digit."""
    out = str(tmp_path / "out")
    argv = ["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", "2",
            "--output-root", out] + KINDS[kind]
    code, _, err = dml(*argv, script=TERM_AT_STEP, script_args=["3"])
    assert code == 143, err[-3000:]
    run = only_run_dir(out, "cifar10", KINDS[kind][1])
    line = error_line(err)
    assert "stopped by SIGTERM; checkpoint 0001-b000003 written" in line
    assert "--resume %s" % run in line
    assert not os.path.exists(os.path.join(run, "metrics.json"))
    assert [s["id"] for s in complete_checkpoints(run)] == ["0001-b000003"]
    code, _, err = dml("train", "--resume", run)
    assert code == 0, err[-3000:]
    assert scores(load(os.path.join(run, "metrics.json"))) == \
        scores(load(os.path.join(reference_runs[kind], "metrics.json")))


def disk_usage(folder):
    """Bytes on disk under ``folder``, each hard-linked file once (what du reports)."""
    seen, total = set(), 0
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        info = os.lstat(path)
        if os.path.isfile(path) and (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


def test_a_finished_run_keeps_its_final_weights_once(reference_runs):
    """The final checkpoint's net, the export and best/ are one file: a finished ResNet-18 run
    (final weights 45 MB, Adam's states 89 MB) stays under 150 MB (it was 386 MB)."""
    params = os.path.join(reference_runs["pk"], "params")
    export = os.path.join(params, "embedding-0002.params")
    for name in ("net-0002.params", "best/net.params", "best/embedding-0000.params"):
        assert os.path.samefile(os.path.join(params, name), export), name
    assert sorted(glob.glob(os.path.join(params, "net-*.params"))) == [
        os.path.join(params, "net-0002.params")]
    assert disk_usage(reference_runs["pk"]) < 150e6
    assert disk_usage(reference_runs["softmax"]) < 150e6


# ------------------------------------------------------------------------------------------------
# Divergence


def test_diverging_run_stops_with_the_last_good_checkpoint(tiny_cifar, tmp_path):
    """--lr 1e30: the weights blow up in the first steps; the guard stops the run with exit 1,
    names the last good checkpoint (none yet) and writes no metrics, plots or embeddings."""
    out = str(tmp_path / "out")
    code, _, err = dml("train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", "2",
                       "--lr", "1e30", "--output-root", out, *TINY)
    assert code == 1, err[-3000:]
    line = error_line(err)
    assert "stopped:" in line and ("the loss is nan" in line or "the weights hold" in line), line
    assert "no checkpoint had been written" in line
    run = only_run_dir(out, "cifar10", "triplet_semihard")
    assert not os.path.exists(os.path.join(run, "metrics.json"))
    assert not os.path.exists(os.path.join(run, "plots"))
    assert complete_checkpoints(run) == []


def test_non_finite_parameters_names_the_arrays():
    import mxnet as mx

    from dml.hooks import NonFiniteLoss, StopGuard, non_finite_parameters
    from dml.nets import EmbeddingNet

    net = EmbeddingNet(8, backbone="cifar_resnet20_v1")
    net.initialize()
    net(mx.nd.zeros((2, 3, 32, 32)))
    assert non_finite_parameters(net) == []
    weight = net.embedding.weight
    weight.set_data(weight.data() * np.inf)
    assert non_finite_parameters(net) == [weight.name]
    with pytest.raises(NonFiniteLoss, match="the weights hold NaN or inf at step 7"):
        StopGuard(net).check(0.5, "at step 7", None)
    with pytest.raises(NonFiniteLoss, match="the loss is nan in epoch 2"):
        StopGuard(net).check(float("nan"), "in epoch 2", "0001")


# ------------------------------------------------------------------------------------------------
# Degenerate embeddings


def test_collapsed_embedding_is_evaluated_and_drawn_with_a_warning(caplog):
    from dml.engine import check_embeddings
    from dml.evaluation import all_metrics, is_collapsed
    from dml.plots import embedding_2d

    labels = np.arange(120) % 6
    for collapsed in (np.ones((120, 16), np.float32), np.zeros((120, 16), np.float32)):
        assert is_collapsed(collapsed)
        metrics = all_metrics(collapsed, labels, collapsed, labels)
        assert all(np.isfinite(v) for v in metrics.values())
        assert embedding_2d(collapsed).shape == (120, 2)  # t-SNE segfaulted here
        with caplog.at_level("WARNING", logger="dml"):
            caplog.clear()
            check_embeddings(collapsed, "test")
        assert len(caplog.records) == 1 and "the embedding collapsed" in caplog.records[0].message
    assert not is_collapsed(np.random.default_rng(0).normal(size=(120, 16)))


def test_non_finite_embeddings_are_refused():
    from dml.engine import NonFiniteLoss, check_embeddings

    bad = np.ones((10, 4), np.float32)
    bad[3, 1] = np.nan
    with pytest.raises(NonFiniteLoss, match="embeddings hold NaN or inf"):
        check_embeddings(bad, "test")


# ------------------------------------------------------------------------------------------------
# Untrusted data files


def _truncated_png(path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        path)
    raw = open(path, "rb").read()
    open(path, "wb").write(raw[:len(raw) // 2])


def _bomb_png(path, side=30000):
    """A valid tiny PNG whose header claims side x side pixels (Pillow's bomb check fires)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("make,message", [
    (_truncated_png, "is not an image Pillow can decode"),
    (_bomb_png, "is too large to decode safely"),
], ids=["truncated", "decompression-bomb"])
def test_broken_image_is_refused_with_its_path(tmp_path, capsys, make, message):
    """GluonCV's import sets LOAD_TRUNCATED_IMAGES for the whole process; a half PNG trained as a
    grey image and a bomb was a traceback."""
    import gluoncv  # noqa: F401  (the import that flipped Pillow's flag)

    root = write_image_folder(str(tmp_path / "data"))
    bad = os.path.join(root, "train", "cat", "bad.png")
    make(bad)
    out = tmp_path / "out"
    code, err = refused(["train", "--dataset", "folder", "--data-root", root,
                         "--output-root", str(out)] + TINY, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert bad in err and message in err, err
    assert not out.exists()


def test_cifar_pickle_payload_is_refused_and_never_runs(tmp_path, capsys):
    root = str(tmp_path / "cifar")
    write_cifar(root, "cifar10", "python", n_train=50, n_test=20)
    witness = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch %s" % witness,))

    path = os.path.join(root, "cifar-10-batches-py", "data_batch_3")
    with open(path, "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    out = tmp_path / "out"
    code, err = refused(["train", "--dataset", "cifar10", "--data-root", root,
                         "--output-root", str(out)] + TINY, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "data_batch_3 is refused: it imports" in err and "system" in err
    assert not witness.exists()
    assert not out.exists()


def test_cifar_meta_payload_is_refused_too(tmp_path):
    from dml import DmlError
    from dml.data.datasets import load_cifar

    root = str(tmp_path / "cifar")
    write_cifar(root, "cifar10", "python", n_train=20, n_test=10)
    with open(os.path.join(root, "cifar-10-batches-py", "batches.meta"), "wb") as f:
        f.write(pickle.dumps(eval))  # a builtin: "builtins.eval"
    with pytest.raises(DmlError, match="batches.meta is refused: it imports builtins.eval"):
        load_cifar("cifar10", root)


def test_official_cifar_layout_still_loads(tmp_path):
    from dml.data.datasets import load_cifar

    root = str(tmp_path / "cifar")
    write_cifar(root, "cifar100", "python", n_train=40, n_test=20)
    splits = load_cifar("cifar100", root)
    assert len(splits.train) == 40 and len(splits.class_names) == 100


def test_folder_reads_subfolders_skips_non_images_and_refuses_empty_classes(tmp_path, caplog):
    from dml import DmlError
    from dml.data.datasets import load_folder

    root = write_image_folder(str(tmp_path / "data"))
    nested = os.path.join(root, "train", "owl", "2019", "march")
    os.makedirs(nested)
    shutil.copy(os.path.join(root, "train", "owl", "owl_1.png"), os.path.join(nested, "x.png"))
    for junk in ("Thumbs.db", "labels.csv"):
        open(os.path.join(root, "train", "cat", junk), "w").write("not an image")
    with caplog.at_level("WARNING"):
        splits = load_folder(root)
    assert os.path.join(nested, "x.png") in splits.train.paths
    assert len(splits.train) == 4 * 8 + 1
    assert any("skipped 2 files that are not images" in r.message for r in caplog.records)
    os.makedirs(os.path.join(root, "test", "emu"))
    with pytest.raises(DmlError, match="class folder .*emu holds no image"):
        load_folder(root)


# ------------------------------------------------------------------------------------------------
# Bad arguments: one line, exit 2, nothing written


BAD_ARGS = [
    (["--lr", "inf"], "'inf' must be a finite number"),
    (["--lr", "nan"], "'nan' must be a finite number"),
    (["--wd", "nan"], "'nan' must be a finite number"),
    (["--wd", "-1"], "must be >= 0"),
    (["--margin", "inf"], "'inf' must be a finite number"),
    (["--lr-factor", "inf"], "'inf' must be a finite number"),
    (["--image-size", "100000"], "must be between 16 and 1024"),
    (["--embedding-dim", "1000000000"], "must be between 1 and 65536"),
    (["--cpus", "64"], "64 devices (--cpus) but a batch holds only 16 samples"),
    (["--cpus", "100000"], "must be between 0 and 256"),
    (["--seed", "-1"], "must be between 0 and 4294967295"),
    (["--seed", "99999999999"], "must be between 0 and 4294967295"),
]


@pytest.mark.parametrize("argv,message", BAD_ARGS, ids=[" ".join(a) for a, _ in BAD_ARGS])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    code, err = refused(["train", "--output-root", str(out)] + TINY[:4] + argv, capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("error", ["MemoryError", "MXNetError"])
def test_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch, error):
    import mxnet as mx

    import dml.train.job

    def fit(*args, **kwargs):
        if error == "MemoryError":
            raise MemoryError()
        raise mx.base.MXNetError("Traceback (most recent call last):\n  File \"src/storage/"
                                 "./cpu_device_storage.h\", line 74\nMXNetError: Failed to "
                                 "allocate CPU Memory")

    monkeypatch.setattr(dml.train.job, "fit", fit)
    code, err = refused(["train", "--epochs", "1", "--output-root", str(tmp_path)] + TINY, capsys)
    assert code == 1
    line = err.splitlines()[-1]
    assert line.startswith("dml train: error: out of memory"), err
    assert "lower --image-size, --embedding-dim, --memory-size or the batch size" in line
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------------
# The disk, the run folder, evaluate


@pytest.fixture
def small_disk(tmp_path):
    """A 200 MB tmpfs: one ResNet-18 checkpoint (134 MB with Adam's states) fits, two do not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", str(mount)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): %s" % proc.stderr.decode()[:100])
    yield str(mount)
    subprocess.run(["umount", str(mount)], check=False)


def test_disk_full_is_one_line_leaves_no_temporary_file_and_keeps_a_resumable_checkpoint(
        small_disk, tiny_cifar, tmp_path):
    code, _, err = dml("train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs",
                       "3", "--output-root", small_disk, *TINY)
    assert code == 1, err[-3000:]
    line = error_line(err)
    assert line.startswith("dml train: error: no space left on the device of "), line
    run = only_run_dir(small_disk, "cifar10", "triplet_semihard")
    assert os.path.join(run, "params") in line
    assert "checkpoint 0001 is complete: python -m dml train --resume %s" % run in line
    assert no_partial_files(small_disk) == []
    moved = str(tmp_path / "moved")
    shutil.copytree(run, moved)
    code, _, err = dml("train", "--resume", moved)
    assert code == 0, err[-3000:]
    assert load(os.path.join(moved, "metrics.json"))["epochs"] == 3


def test_resume_takes_data_that_moved(tiny_cifar, tmp_path):
    data = str(tmp_path / "cifar")
    shutil.copytree(tiny_cifar, data)
    out = str(tmp_path / "out")
    code, _, err = dml("train", "--dataset", "cifar10", "--data-root", data, "--epochs", "1",
                       "--output-root", out, *KINDS["pk"], script=TERM_AT_STEP, script_args=["2"])
    assert code == 143, err[-2000:]
    run = only_run_dir(out, "cifar10", "triplet_semihard")
    moved = str(tmp_path / "moved")
    shutil.move(data, moved)
    code, _, err = dml("train", "--resume", run)
    assert code == 2 and "CIFAR-10 not found in %s" % data in error_line(err)
    code, _, err = dml("train", "--resume", run, "--data-root", moved)
    assert code == 0, err[-3000:]
    assert load(os.path.join(run, "config.json"))["data_root"] == moved


@pytest.fixture
def folder_run(tmp_path):
    """A 1-epoch run on an image folder given by a relative --data-root."""
    data = write_image_folder(str(tmp_path / "data"))
    out = str(tmp_path / "out")
    code, _, err = dml("train", "--dataset", "folder", "--data-root", "data", "--epochs", "1",
                       "--output-root", out, *TINY, cwd=str(tmp_path))
    assert code == 0, err[-3000:]
    return data, only_run_dir(out, "folder", "triplet_semihard")


def test_data_root_is_stored_absolute_and_can_be_pointed_elsewhere(folder_run, tmp_path):
    data, run = folder_run
    assert load(os.path.join(run, "config.json"))["data_root"] == data
    trained = load(os.path.join(run, "metrics.json"))
    code, _, err = dml("evaluate", run, cwd="/")  # from another folder
    assert code == 0, err[-3000:]
    moved = str(tmp_path / "moved-data")
    shutil.move(data, moved)
    code, _, err = dml("evaluate", run)
    assert code == 2 and "is not a folder" in error_line(err)
    code, _, err = dml("evaluate", run, "--data-root", moved)
    assert code == 0, err[-3000:]
    assert scores(load(os.path.join(run, "metrics.json"))) == scores(trained)


def test_evaluate_refuses_a_changed_class_list_and_another_runs_checkpoint(folder_run, tmp_path,
                                                                          capsys):
    data, run = folder_run
    before = load(os.path.join(run, "metrics.json"))
    other = str(tmp_path / "other")
    shutil.copytree(run, other)
    code, err = refused(["evaluate", run, "--checkpoint",
                         os.path.join(other, "params", "net-0001.params")], capsys)
    assert code == 2 and "is not in %s" % os.path.join(run, "params") in err, err
    extra = os.path.join(data, "test", "zebra")
    os.makedirs(extra)
    shutil.copy(os.path.join(data, "test", "cat", "cat_1.png"), os.path.join(extra, "z.png"))
    code, err = refused(["evaluate", run], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "does not hold the 4 classes" in err and "1 new (zebra)" in err
    assert load(os.path.join(run, "metrics.json")) == before


def test_evaluate_checks_everything_before_writing(folder_run, capsys):
    _, run = folder_run
    logs = sorted(os.listdir(os.path.join(run, "logs")))
    plots = {p: os.path.getmtime(os.path.join(run, "plots", p))
             for p in os.listdir(os.path.join(run, "plots"))}
    metrics = os.path.join(run, "metrics.json")
    text = open(metrics).read()
    open(metrics, "w").write(text[:len(text) // 2])
    code, err = refused(["evaluate", run], capsys)
    assert code == 2 and "cannot read %s" % metrics in err, err
    assert sorted(os.listdir(os.path.join(run, "logs"))) == logs
    assert {p: os.path.getmtime(os.path.join(run, "plots", p)) for p in plots} == plots
    open(metrics, "w").write(text)
    not_params = os.path.join(run, "params", "state-0001.json")
    code, err = refused(["evaluate", run, "--checkpoint", not_params], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "does not fit this run's network" in err
    assert "Traceback (most recent call last)" not in err


# ------------------------------------------------------------------------------------------------
# Launchers


def test_launch_refuses_independent_workers_and_unknown_programs():
    launch = [sys.executable, os.path.join(ROOT, "scripts", "launch.py"), "-n", "2", "--"]
    for command, message in [
        ([sys.executable, "-m", "dml", "train", "--epochs", "1"],
         "-n 2 workers of dml train without --kvstore dist_sync"),
        ([sys.executable, "-m", "dml", "train", "--kvstore", "device"],
         "would train 2 independent runs"),
        (["/nonexistent/binary"], "/nonexistent/binary: no such program"),
    ]:
        proc = subprocess.run(launch + command, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_cifar_launcher_refuses_another_method():
    proc = subprocess.run(["bash", os.path.join(ROOT, "train_cifar_triplet_semihard.sh"),
                           "--method", "siamese"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "train_cifar_triplet_semihard.sh: error: this launcher trains triplet_semihard (its batch "
        "options are that method's); for --method siamese run: bash train_cifar_siamese.sh")


def test_launcher_without_install_says_make_install(tmp_path):
    home = tmp_path / "dml"
    (home / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "scripts", "train_common.sh"), home / "scripts")
    shutil.copy(os.path.join(ROOT, "train_cifar_siamese.sh"), home)
    fake = tmp_path / "python-without-mxnet"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(home / "train_cifar_siamese.sh")], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, PYTHON=str(fake)))
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("train_cifar_siamese.sh: error: dml is not installed (no %s/"
                                   ".venv): run make install in %s first" % (home, home))


def test_python_without_the_dependencies_says_make_install():
    # -S: no site-packages, so mxnet cannot be imported (like a python where make install never ran)
    proc = subprocess.run([sys.executable, "-S", "-m", "dml", "train", "--epochs", "1"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "is not installed for" in line, line
    assert "run make install" in line


# ------------------------------------------------------------------------------------------------
# Class-disjoint data (issue 16's first point): defaults that work and metrics that mean something


def test_leave_one_out_knn_matches_brute_force():
    from dml.evaluation import knn_accuracy_leave_one_out

    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4))
    labels = rng.integers(0, 4, size=60)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    votes = np.array([np.bincount(labels[np.argsort(row, kind="stable")[:5]], minlength=4)
                      for row in d])
    expected = np.mean(np.argmax(votes, axis=1) == labels)  # ties to the smaller label
    assert knn_accuracy_leave_one_out(x, labels) == pytest.approx(expected)


def test_class_disjoint_folder_trains_with_defaults_and_reports_meaningful_metrics(tmp_path):
    """Train classes a-e, test classes f-j (the zero-shot benchmarks' layout): the P x K batch
    shrinks to the 5 training classes (the folder default is 8), config.json records which
    classes trained and which were evaluated, and knn_accuracy votes among the test split
    (leave-one-out) instead of among training images that share no class with it: 0 by
    construction before."""
    root = str(tmp_path / "data")
    write_image_folder(str(tmp_path / "seen"), classes=("a", "b", "c", "d", "e"))
    write_image_folder(str(tmp_path / "new"), classes=("f", "g", "h", "i", "j"))
    os.makedirs(root)
    shutil.move(str(tmp_path / "seen" / "train"), os.path.join(root, "train"))
    shutil.move(str(tmp_path / "new" / "test"), os.path.join(root, "test"))
    out = str(tmp_path / "out")
    code, _, err = dml("train", "--dataset", "folder", "--data-root", root, "--epochs", "1",
                       "--n-samples", "4", "--embedding-dim", "16", "--output-root", out)
    assert code == 0, err[-3000:]
    assert "the training split holds 5 classes, so batches take 5 classes" in err
    assert "training augmentation: crop-flip (the default of folder)" in err
    assert "votes among the evaluated split itself (leave-one-out)" in err
    run = only_run_dir(out, "folder", "triplet_semihard")
    config = load(os.path.join(run, "config.json"))
    assert config["n_classes"] == 5
    assert config["train_classes"] == list("abcde") and config["eval_classes"] == list("fghij")
    metrics = load(os.path.join(run, "metrics.json"))
    assert 0 < metrics["knn_accuracy"] <= 1
    code, _, err = dml("evaluate", run)
    assert code == 0 and scores(load(os.path.join(run, "metrics.json"))) == scores(metrics)


def test_unseen_split_names_the_classes(tmp_path, capsys):
    root = write_image_folder(str(tmp_path / "data"), classes=("ant", "bee", "cat", "dog"),
                              per_class=(3, 2))
    shutil.rmtree(os.path.join(root, "test", "cat"))
    shutil.rmtree(os.path.join(root, "test", "dog"))
    os.makedirs(os.path.join(root, "test", "dog"))
    shutil.copy(glob.glob(os.path.join(root, "train", "dog", "*"))[0],
                os.path.join(root, "test", "dog", "x.png"))
    code, err = refused(["train", "--dataset", "folder", "--data-root", root, "--split",
                         "unseen", "--output-root", str(tmp_path / "out")], capsys)
    assert code == 2 and "fewer than 2 of the classes cat to dog" in err, err


# ------------------------------------------------------------------------------------------------
# Using a finished run from another process (issue 18's Python API)


def test_load_run_embeds_the_test_split_as_training_evaluated_it(reference_runs, tiny_cifar,
                                                                 tmp_path):
    """Training (its own process) wrote the test embeddings it evaluated to the projector's
    tensors.tsv; dml.load_run in this process embeds the raw test images to the same values, from
    a path, a PIL image or a uint8 array alike."""
    from PIL import Image

    import dml
    from dml import DmlError
    from dml.data.datasets import load_cifar

    run = reference_runs["pk"]
    loaded = dml.load_run(run)
    assert loaded.class_names[:2] == ["airplane", "automobile"]
    assert loaded.input_size == (32, 32) and loaded.config.method == "triplet_semihard"
    images = load_cifar("cifar10", tiny_cifar).test.images
    trained = np.loadtxt(os.path.join(run, "logs", "test_embedding_000002", "tensors.tsv"))
    embedded = loaded.embed(images)
    assert embedded.shape == trained.shape == (50, 16)
    assert np.abs(embedded - trained).max() < 1e-4
    batch = loaded.preprocess(images[:3])
    assert batch.dtype == np.float32 and batch.shape == (3, 3, 32, 32)
    path = str(tmp_path / "x.png")
    Image.fromarray(images[0]).save(path)
    alike = loaded.embed([path, Image.open(path), images[0]])
    assert np.abs(alike - embedded[0]).max() < 1e-5
    assert np.allclose(dml.load_run(run, "best").embed(images[:2]), embedded[:2], atol=1e-5)
    with pytest.raises(DmlError, match="pass file paths, PIL images or uint8 arrays"):
        loaded.embed([42])
    with pytest.raises(DmlError, match="no run folder"):
        dml.load_run(str(tmp_path / "nothing"))
    # a run from before config.json recorded the normalization: its dataset is asked instead
    older = str(tmp_path / "older")
    shutil.copytree(run, older)
    config = load(os.path.join(older, "config.json"))
    del config["normalization"]
    with open(os.path.join(older, "config.json"), "w") as f:
        json.dump(config, f)
    assert np.allclose(dml.load_run(older).embed(images[:4]), embedded[:4], atol=1e-6)
