"""Reliability of every command (issue 26): a result is never computed on the wrong network, index
or data; files that are not regular image files are refused without hanging; an index folder is
checked file by file before use. Each case: the documented exit code and one line."""
import csv
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest

from dml.cli import main
from fakedata import write_image_folder
from runhelpers import ROOT, signal_at_step


def cli(*argv, cwd=None):
    """``python -m dml ARGV`` in a fresh process -> (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))
    proc = subprocess.run([sys.executable, "-m", "dml"] + list(argv), capture_output=True,
                          text=True, env=env, timeout=900, cwd=cwd)
    return proc.returncode, proc.stdout, proc.stderr


def one_line(capsys, argv, code=2):
    """In-process ``dml ARGV``: it must exit ``code`` with one ``dml ...: error:`` line."""
    capsys.readouterr()
    try:
        got = main(argv)
    except SystemExit as exit_:
        got = exit_.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [l for l in err.strip().splitlines() if l.startswith("dml ")]
    assert got == code and lines, (got, err)
    return lines[-1]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("photos")), per_class=(6, 3))


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory):
    """Two copies of one trained run (A and B), the second with a checkpoint renamed as if it
    were another network's."""
    base = tmp_path_factory.mktemp("two-runs")
    a, b = str(base / "a"), str(base / "b")
    shutil.copytree(tiny_run[1], a)
    shutil.copytree(tiny_run[1], b)
    return a, b


@pytest.fixture(scope="module")
def index(runs, photos, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("indexes") / "gallery")
    assert main(["index", runs[0], os.path.join(photos, "train"), "-o", out]) == 0
    return out


def test_another_runs_checkpoint_is_refused_by_every_command(runs, photos, tmp_path, capsys):
    a, b = runs
    other = os.path.join(b, "params", "net-0001.params")
    for argv in (["embed", a, os.path.join(photos, "test"), "-o", str(tmp_path / "e.npy")],
                 ["index", a, os.path.join(photos, "test"), "-o", str(tmp_path / "ix")],
                 ["export", a, "--onnx", str(tmp_path / "m.onnx")],
                 ["evaluate", a]):
        line = one_line(capsys, argv + ["--checkpoint", other])
        assert "is not in %s" % os.path.join(a, "params") in line, line
    assert not os.listdir(str(tmp_path))
    import dml

    with pytest.raises(dml.DmlError, match="is not in"):
        dml.load_run(a, other)
    assert dml.load_run(a, os.path.join(a, "params", "net-0001.params")).net is not None


def test_load_run_embeds_one_path_and_refuses_an_empty_image(runs, photos):
    import dml

    run = dml.load_run(runs[0])
    image = os.path.join(photos, "test", "cat", sorted(os.listdir(
        os.path.join(photos, "test", "cat")))[0])
    one = run.embed(image)
    assert one.shape == (1, 16)
    assert np.allclose(one, run.embed([image]))
    with pytest.raises(dml.DmlError, match="0 x 0 pixels holds no image"):
        run.embed(np.zeros((0, 0, 3), np.uint8))
    assert run.preprocess(image).shape == (1, 3, 32, 32)


def _edited(index, tmp_path, name, edit):
    import tempfile

    copy = os.path.join(tempfile.mkdtemp(dir=str(tmp_path)), "index")
    shutil.copytree(index, copy)
    path = os.path.join(copy, name)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(edit(data))
    return copy


def test_an_index_folder_is_checked_file_by_file(index, runs, photos, tmp_path, capsys):
    query = os.path.join(photos, "test", "cat")
    # another index's index.faiss (a smaller gallery)
    other = str(tmp_path / "other")
    assert main(["index", runs[0], os.path.join(photos, "test"), "-o", other]) == 0
    swapped = str(tmp_path / "swapped")
    shutil.copytree(index, swapped)
    shutil.copy(os.path.join(other, "index.faiss"), os.path.join(swapped, "index.faiss"))
    line = one_line(capsys, ["search", swapped, query])
    assert "index.faiss is not the file this index was built with" in line
    # items.csv edited
    line = one_line(capsys, ["search", _edited(index, tmp_path, "items.csv",
                                               lambda d: d.replace(b"label", b"class", 1)),
                             query])
    assert "items.csv is not the file this index was built with" in line
    # index.json cut in half
    line = one_line(capsys, ["search", _edited(index, tmp_path, "index.json",
                                               lambda d: d[:len(d) // 2]), query])
    assert "cannot read" in line and "index.json" in line and "rebuild" in line

    def meta_edit(key, value):
        def edit(data):
            meta = json.loads(data)
            meta[key] = value
            return json.dumps(meta).encode()
        return edit

    line = one_line(capsys, ["search", _edited(index, tmp_path, "index.json",
                                               meta_edit("kind", "hnsw")), query])
    assert "is a IndexFlatL2, not the hnsw index" in line
    line = one_line(capsys, ["search", _edited(index, tmp_path, "index.json",
                                               meta_edit("count", 2 ** 37)), query])
    assert "too few for 137438953472 vectors" in line
    line = one_line(capsys, ["search", _edited(index, tmp_path, "index.json",
                                               meta_edit("format", 1)), query])
    assert "older dml" in line and "rebuild" in line


def test_items_are_stored_with_absolute_paths_so_search_works_from_any_folder(runs, photos,
                                                                            tmp_path):
    gallery = os.path.relpath(os.path.join(photos, "train"), str(tmp_path))
    code, _, err = cli("index", runs[0], gallery, "-o", "ix", cwd=str(tmp_path))
    assert code == 0, err[-2000:]
    with open(str(tmp_path / "ix" / "items.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(os.path.isabs(r["path"]) for r in rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, _, err = cli("search", str(tmp_path / "ix"), os.path.join(photos, "test", "dog"),
                       "-k", "3", "--grid", "hits.png", cwd=str(elsewhere))
    assert code == 0, err[-2000:]
    assert os.path.getsize(str(elsewhere / "hits.png")) > 1000


def test_two_index_builds_racing_for_one_folder(runs, photos, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))
    target = str(tmp_path / "race")
    procs = [subprocess.Popen([sys.executable, "-m", "dml", "index", runs[0],
                               os.path.join(photos, "train"), "-o", target],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 2], [0, 0]) or codes == [0], results
    if codes == [0, 2]:  # the loser was refused in one line (the other may have checked first)
        loser = [err for code, err in results if code == 2][0]
        assert "already exists" in loser.strip().splitlines()[-1]
    assert sorted(os.listdir(target)) == ["index.faiss", "index.json", "items.csv"]
    assert not [n for n in os.listdir(str(tmp_path)) if ".tmp" in n]


def test_pipes_and_devices_are_not_read_for_ever(runs, photos, tmp_path, capsys):
    folder = tmp_path / "with-fifo"
    shutil.copytree(os.path.join(photos, "test"), str(folder))
    os.mkfifo(str(folder / "cat" / "x.png"))
    out = str(tmp_path / "e.npy")
    done = []

    def embed():
        done.append(main(["embed", runs[0], str(folder), "-o", out]))

    worker = threading.Thread(target=embed, daemon=True)
    worker.start()
    worker.join(120)
    assert done == [0]  # the pipe was skipped with a warning, not read
    err = capsys.readouterr().err
    assert "x.png is not a regular file" in err
    line = one_line(capsys, ["embed", runs[0], str(folder / "cat" / "x.png"), "-o", out])
    assert "x.png is not a regular file" in line
    line = one_line(capsys, ["embed", runs[0], "/dev/zero", "-o", out])
    assert "/dev/zero is not a regular file" in line


def test_list_files_with_a_byte_order_mark_and_a_missing_image(runs, photos, tmp_path, capsys):
    images = sorted(os.path.join(photos, "test", "cat", n)
                    for n in os.listdir(os.path.join(photos, "test", "cat")))
    listing = tmp_path / "list.txt"
    listing.write_bytes(("\ufeff%s\tfirst\n%s\n" % (images[0], images[1])).encode("utf-8"))
    out = str(tmp_path / "l.npy")
    assert main(["embed", runs[0], str(listing), "-o", out]) == 0
    assert np.load(out).shape[0] == 2  # the first line is an image, not "\ufeff/path"
    listing.write_text("%s\n%s\n" % (images[0], str(tmp_path / "gone.png")))
    line = one_line(capsys, ["embed", runs[0], str(listing), "-o", out, "--strict"])
    assert "gone.png: no such file" in line


def test_an_index_whose_checkpoint_was_pruned_says_rebuild(runs, photos, tmp_path, capsys):
    run = str(tmp_path / "run")
    shutil.copytree(runs[0], run)
    out = str(tmp_path / "ix")
    assert main(["index", run, os.path.join(photos, "train"), "-o", out,
                 "--checkpoint", os.path.join(run, "params", "net-0001.params")]) == 0
    os.remove(os.path.join(run, "params", "net-0001.params"))
    line = one_line(capsys, ["search", out, os.path.join(photos, "test", "cat")])
    assert "is gone" in line and "rebuild the index" in line and "--run" not in line


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KB tmpfs, filled: any write there fails with ENOSPC."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): %s" % proc.stderr.decode()[:100])
    with open(str(mount / "filler"), "wb") as f:
        try:
            f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    yield str(mount)
    subprocess.run(["umount", str(mount)], check=False)


def test_write_failures_outside_train_are_one_line(runs, photos, index, full_disk, tmp_path,
                                                   capsys):
    a = runs[0]
    query = os.path.join(photos, "test", "cat")
    cases = [
        ["embed", a, query, "-o", os.path.join(full_disk, "e.npy")],
        ["index", a, query, "-o", os.path.join(full_disk, "ix")],
        ["export", a, "--onnx", os.path.join(full_disk, "m.onnx")],
        ["search", index, query, "--grid", os.path.join(full_disk, "g.png")],
        ["search", index, query, "--out", os.path.join(full_disk, "r.csv")],
        ["compare", os.path.dirname(a), "--plot", os.path.join(full_disk, "c.png")],
    ]
    for argv in cases:
        line = one_line(capsys, argv, code=1)
        assert "no space left on the device" in line, (argv, line)
        assert sorted(os.listdir(full_disk)) == ["filler"], argv  # nothing half-written
    for argv in (["embed", a, query, "-o", str(tmp_path)],  # a folder
                 ["embed", a, query, "-o", ""], ["index", a, query, "-o", ""]):
        one_line(capsys, argv, code=2)
    line = one_line(capsys, ["embed", a, query, "-o", "/proc/x.npy"], code=1)
    assert "cannot write /proc/x.npy" in line and "space" not in line


def test_faiss_own_message_of_a_failed_write_is_not_glued_to_dmls_line(runs, photos, full_disk,
                                                                       capfd):
    """faiss writes "... close error: No space left on device" to file descriptor 2 itself, with
    no newline: dml's one line must be all the terminal shows."""
    code = main(["index", runs[0], os.path.join(photos, "test", "cat"), "-o",
                 os.path.join(full_disk, "ix")])
    err = capfd.readouterr().err
    assert code == 1
    assert err.strip().splitlines() == [
        "dml index: error: no space left on the device of %s (writing ix): free some space, or "
        "write the run elsewhere" % full_disk], err
    assert sorted(os.listdir(full_disk)) == ["filler"]


def test_temporary_files_never_follow_a_planted_link(runs, photos, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.npy"
    for name in ("out.npy.tmp", ".out.npy.tmp", "out.csv.tmp"):
        os.symlink(str(victim), str(tmp_path / name))
    code, _, err = cli("embed", runs[0], os.path.join(photos, "test", "cat"), "-o", str(out))
    assert code == 0, err[-2000:]
    assert victim.read_text() == "precious"
    assert np.load(str(out)).shape[1] == 16
    assert oct(os.stat(str(out)).st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------------
# train: checked before anything is written, one process per run folder, signals


def test_a_test_split_without_a_second_image_of_any_class_is_refused_up_front(tmp_path, capsys):
    data = tmp_path / "data"
    write_image_folder(str(data), per_class=(6, 1))  # one test image per class
    out = tmp_path / "out"
    line = one_line(capsys, ["train", "--dataset", "folder", "--data-root", str(data),
                             "--epochs", "1", "--output-root", str(out), "--n-classes", "4",
                             "--n-samples", "2", "--embedding-dim", "8"])
    assert "every class of the test split of folder has one image" in line
    assert not out.exists()


def test_a_memory_larger_than_the_machine_is_refused_up_front(tmp_path, capsys):
    out = tmp_path / "out"
    line = one_line(capsys, ["train", "--method", "multi_similarity", "--memory-size", "1048576",
                             "--embedding-dim", "65536", "--output-root", str(out)])
    assert "--memory-size 1048576 embeddings of --embedding-dim 65536 need 256.0 GiB" in line
    assert not out.exists()


def test_class_names_with_tabs_and_line_breaks_keep_the_projector_aligned(tmp_path):
    from runhelpers import only_run_dir, run_main

    data = write_image_folder(str(tmp_path / "data"), per_class=(6, 4))
    for split in ("train", "test"):
        os.rename(os.path.join(data, split, "cat"), os.path.join(data, split, "c\tat"))
        os.rename(os.path.join(data, split, "dog"), os.path.join(data, split, "d\nog"))
    code, _ = run_main(["train", "--dataset", "folder", "--data-root", data, "--epochs", "1",
                        "--output-root", str(tmp_path / "out"), "--n-classes", "4",
                        "--n-samples", "2", "--embedding-dim", "8", "--num-workers", "0"])
    assert code == 0
    run = only_run_dir(str(tmp_path / "out"), "folder", "triplet_semihard")
    folder = os.path.join(run, "logs", "test_embedding_000001")
    vectors = np.loadtxt(os.path.join(folder, "tensors.tsv"))
    with open(os.path.join(folder, "metadata.tsv"), encoding="utf-8") as f:
        names = f.read().rstrip("\n").split("\n")
    assert len(names) == len(vectors) == 16
    assert "c\\tat" in names and "d\\nog" in names


def test_two_resumes_of_one_run_at_once_the_second_is_refused(tiny_run, tmp_path):
    import time

    run = str(tmp_path / "run")
    shutil.copytree(tiny_run[1], run)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))
    first = subprocess.Popen([sys.executable, "-m", "dml", "train", "--resume", run,
                              "--epochs", "4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)
    deadline = time.time() + 300
    log = os.path.join(run, "logs", "train.log")
    size = os.path.getsize(log)
    while time.time() < deadline and first.poll() is None and os.path.getsize(log) == size:
        time.sleep(0.1)  # until the first one writes: it holds the folder
    code, _, err = cli("train", "--resume", run, "--epochs", "4")
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    assert code == 2, err[-2000:]
    assert "is being trained by another process" in err.strip().splitlines()[-1]


def test_a_bad_omp_num_threads_is_one_line_not_an_abort(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="abc", PYTHONPATH=ROOT)
    for argv in (["-m", "dml", "train", "--output-root", str(tmp_path)],
                 ["-m", "dml.bench", "losses"]):
        proc = subprocess.run([sys.executable] + argv, capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr[-1000:]
        assert proc.stderr.strip().splitlines()[-1].endswith(
            "OMP_NUM_THREADS='abc' is not a whole number of threads >= 1: unset it or set it "
            "to the number of cores (e.g. OMP_NUM_THREADS=2)")
    assert not os.listdir(str(tmp_path))


# Runs `dml train` and sends itself SIGTERM twice, 50 ms apart, in its N-th step.
TERM_TWICE = signal_at_step("SIGTERM", again_after=0.05)


def test_a_second_sigterm_stops_at_once_with_the_resume_command(tiny_cifar, tmp_path):
    from dml.runs import complete_checkpoints, partial_files
    from runhelpers import TINY, only_run_dir

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))
    out = str(tmp_path / "out")
    proc = subprocess.run([sys.executable, "-c", TERM_TWICE, "12", "train", "--dataset",
                           "cifar10", "--data-root", tiny_cifar, "--epochs", "3",
                           "--output-root", out] + TINY, capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 143, proc.stderr[-2000:]
    line = proc.stderr.strip().splitlines()[-1]
    run = only_run_dir(out, "cifar10", "triplet_semihard")
    assert line == ("dml train: stopped by SIGTERM a second time, at once; the last complete "
                    "checkpoint, 0001, is kept: continue with python -m dml train --resume %s"
                    % run), line
    assert complete_checkpoints(run)[-1]["id"] == "0001" and not partial_files(run)


# ------------------------------------------------------------------------------------------------
# messages that said the wrong thing


def test_messages_name_what_is_true(tiny_run, tmp_path, capsys):
    line = one_line(capsys, ["train", "--method", "multi_similarity", "--margin", "0.3",
                             "--output-root", str(tmp_path)])
    assert line.endswith("its loss has no margin (it has alpha 2, beta 50, base 0.5 and its "
                         "miner's epsilon 0.1, fixed)")
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run[1], run)
    config = json.load(open(os.path.join(run, "config.json")))
    config["margin"] = None
    json.dump(config, open(os.path.join(run, "config.json"), "w"))
    line = one_line(capsys, ["train", "--resume", run, "--margin", "0.4"])
    assert "the run has --margin unset (none)" in line
    line = one_line(capsys, ["embed", tiny_run[1], tiny_run[1], "-o", str(tmp_path / "e.npy"),
                             "--gpu", "0"])
    assert "--gpu 0: this machine's mxnet sees 0 GPU(s) (CPU-only build or no GPU)" in line


def test_every_method_without_a_margin_says_what_it_has_instead():
    from dml.registry import LOSS_PARAMETERS, METHOD_DEFAULTS

    assert sorted(LOSS_PARAMETERS) == sorted(m for m, d in METHOD_DEFAULTS.items()
                                             if "margin" in d and d["margin"] is None)


def test_evaluate_on_moved_data_that_lost_a_test_class_is_refused(tmp_path, capsys):
    from runhelpers import only_run_dir, run_main

    data = write_image_folder(str(tmp_path / "data"), per_class=(6, 4))
    code, _ = run_main(["train", "--dataset", "folder", "--data-root", data, "--epochs", "1",
                        "--output-root", str(tmp_path / "out"), "--n-classes", "4",
                        "--n-samples", "2", "--embedding-dim", "8", "--num-workers", "0"])
    assert code == 0
    run = only_run_dir(str(tmp_path / "out"), "folder", "triplet_semihard")
    metrics = open(os.path.join(run, "metrics.json")).read()
    moved = str(tmp_path / "moved")
    shutil.copytree(data, moved)
    shutil.rmtree(os.path.join(moved, "test", "owl"))  # the class is still in train/
    line = one_line(capsys, ["evaluate", run, "--data-root", moved])
    assert "the test split at %s holds 12 images of 3 classes, but" % moved in line
    assert "evaluated 16 images of 4 classes (missing classes: owl)" in line
    os.remove(sorted(os.path.join(moved, "test", "cat", n)
                     for n in os.listdir(os.path.join(moved, "test", "cat")))[0])
    shutil.copytree(os.path.join(data, "test", "owl"), os.path.join(moved, "test", "owl"))
    line = one_line(capsys, ["evaluate", run, "--data-root", moved])  # one image fewer
    assert "holds 15 images of 4 classes" in line
    assert open(os.path.join(run, "metrics.json")).read() == metrics  # untouched
    assert main(["evaluate", run, "--data-root", data]) == 0
