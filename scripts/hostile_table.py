"""The hostile cases of doc/hostile.md, each run as a user would (a fresh process), against an
older revision and this working tree: exit code and the line that explains the outcome.

    .venv/bin/python scripts/hostile_table.py --before 3b4a96f > doc/hostile.md

The older revision is checked out in a temporary git worktree and run with the same Python (its
package shadows this one through PYTHONPATH). Each case gets a fresh temporary folder. Takes
about ten minutes on two cores (the training cases run tiny ResNet-18 runs).
"""
import argparse
import glob
import os
import pickle
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from fakedata import write_cifar, write_image_folder  # noqa: E402

TINY = ["--n-classes", "4", "--n-samples", "4", "--embedding-dim", "16", "--num-workers", "1"]
_LOG = re.compile(r"^\d\d:\d\d:\d\d ")


class Case:
    def __init__(self, tree, work):
        self.tree, self.work = tree, work
        self.env = dict(os.environ, PYTHONPATH=tree, DML_OFFLINE="1")

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def run(self, argv, timeout=300, cwd=None, env=None, python=True):
        cmd = [sys.executable] + argv if python else argv
        started = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=cwd or self.work, env=env or self.env)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: a launcher stops the processes it started
            proc.communicate(timeout=120)
            return None, "(still running after %d s: stopped)" % timeout, ""
        return proc.returncode, stderr, "%.0f s" % (time.time() - started)

    def dml(self, *argv, **kwargs):
        return self.run(["-m", "dml"] + list(argv), **kwargs)

    def train_folder(self, root, out):
        """One tiny epoch of ``dml train --dataset folder`` on ``root``: (code, stderr, time)."""
        return self.dml("train", "--dataset", "folder", "--data-root", root, "--epochs", "1",
                        "--output-root", out, *TINY)

    def run_dir(self, out, dataset="cifar10", method="triplet_semihard"):
        runs = glob.glob(os.path.join(out, dataset, method, "*"))
        return runs[0] if runs else None

    def files(self, out):
        return len([p for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
                    if os.path.isfile(p)]) if os.path.isdir(out) else 0

    def cifar(self):
        root = self.path("cifar")
        if not os.path.isdir(root):
            write_cifar(root, "cifar10", "python", n_train=150, n_test=50)
        return root

    def folder(self):
        root = self.path("folder")
        if not os.path.isdir(root):
            write_image_folder(root)
        return root


def explain(stderr):
    """The line that says what happened: the error line, or a traceback's first and last."""
    lines = [l.strip() for l in stderr.splitlines() if l.strip() and not _LOG.match(l)
             and "it/s]" not in l and "s/it]" not in l and "batch/s" not in l
             and "WARNING" not in l and "warnings.warn" not in l]
    if not lines:
        return "(nothing on stderr)"
    if any(l.startswith("Traceback") for l in lines):
        return "Traceback ... %s" % lines[-1][:140]
    errors = [l for l in lines if "error" in l.lower()]
    return (errors[-1] if errors else lines[-1])[:220]


def trained(case, *extra):
    out = case.path("out")
    code, err, _ = case.dml("train", "--dataset", "cifar10", "--data-root", case.cifar(),
                            "--epochs", "2", "--output-root", out, *TINY, *extra)
    return out, code, err


# Each case: (name, function(case) -> (exit code, explanation)).

def checkpoint_vs_evaluated(case):
    """The demo's method on digits (3 epochs, tiny batches): metrics.json against `dml evaluate`
    of the last checkpoint in a new process."""
    import json
    out = case.path("out")
    code, err, _ = case.dml("train", "--dataset", "digits", "--epochs", "3", "--output-root", out,
                            *TINY, timeout=600)
    if code != 0:
        return code, explain(err)
    run = case.run_dir(out, "digits")
    first = json.load(open(os.path.join(run, "metrics.json")))
    code, err, _ = case.dml("evaluate", run)
    again = json.load(open(os.path.join(run, "metrics.json")))
    keys = [k for k in first if isinstance(first[k], float) and k != "train_seconds"]
    differ = [k for k in keys if first[k] != again.get(k)]
    return code, "map_at_r %.4f trained, %.4f evaluated in a new process; %d of %d metrics differ" % (
        first["map_at_r"], again["map_at_r"], len(differ), len(keys))


def sigterm_then_resume(case):
    script = ("import os, signal, sys\nimport dml.engine as e\nn, c, s = 3, [0], e.train_step\n"
              "def t(*a, **k):\n    c[0] += 1\n    if c[0] == n: os.kill(os.getpid(), "
              "signal.SIGTERM)\n    return s(*a, **k)\ne.train_step = t\nfrom dml.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    out = case.path("out")
    code, err, _ = case.run(["-c", script, "train", "--dataset", "cifar10", "--data-root",
                             case.cifar(), "--epochs", "1", "--output-root", out] + TINY)
    run = case.run_dir(out)
    states = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run or out, "params",
                                                                        "state-*.json")))
    return code, "%s; checkpoints: %s" % (explain(err), ", ".join(states) or "none")


def nan_loss_value(case):
    code, err, _ = case.run(["-c", "import mxnet as mx, numpy as np\nfrom dml.losses import "
                             "TripletSemiHardLoss\nx = mx.nd.full((16, 16), np.nan)\nprint("
                             "'loss', TripletSemiHardLoss(margin=0.2)(x, mx.nd.array(np.arange(16)"
                             " % 4)).asscalar())"])
    return code, "TripletSemiHardLoss of NaN embeddings = see stdout" if code else "ran"


def nan_loss(case):
    proc = subprocess.run([sys.executable, "-c", "import mxnet as mx, numpy as np\nfrom dml.losses "
                           "import TripletSemiHardLoss\nx = mx.nd.full((16, 16), np.nan)\nprint("
                           "TripletSemiHardLoss(margin=0.2)(x, mx.nd.array(np.arange(16) % 4))"
                           ".asscalar())"], capture_output=True, text=True, env=case.env,
                          cwd=case.work, timeout=120)
    return proc.returncode, "TripletSemiHardLoss()(NaN embeddings) = %s" % proc.stdout.strip()


def diverging(case):
    out = case.path("out")
    code, err, _ = case.dml("train", "--dataset", "digits", "--epochs", "1", "--lr", "1e30",
                            "--output-root", out, *TINY, timeout=400)
    run = case.run_dir(out, "digits")
    wrote = os.path.exists(os.path.join(run, "metrics.json")) if run else False
    return code, "%s%s" % (explain(err), " [metrics.json written]" if wrote else "")


def refused(argv):
    def case_fn(case):
        out = case.path("out")
        code, err, _ = case.dml("train", "--epochs", "1", "--output-root", out, *argv,
                                timeout=120)
        return code, "%s [%d files written]" % (explain(err), case.files(out))
    return case_fn


def collapsed_tsne(case):
    proc = subprocess.run([sys.executable, "-c", "import numpy as np\nfrom dml.plots import "
                           "embedding_2d\nprint(embedding_2d(np.ones((200, 16))).shape)"],
                          capture_output=True, text=True, env=case.env, cwd=case.work, timeout=300)
    return proc.returncode, explain(proc.stderr) if proc.returncode else \
        "t-SNE picture of identical embeddings: %s" % proc.stdout.strip()


def broken_image(kind):
    def case_fn(case):
        root = case.folder()
        path = os.path.join(root, "train", "cat", "bad.png")
        if kind == "truncated":
            from PIL import Image
            import numpy as np
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3),
                                                              dtype=np.uint8)).save(path)
            raw = open(path, "rb").read()
            open(path, "wb").write(raw[:len(raw) // 2])
        else:
            def chunk(k, d):
                return struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
            open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
                ">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(
                    b"\0" * 16)) + chunk(b"IEND", b""))
        out = case.path("out")
        code, err, _ = case.train_folder(root, out)
        return code, "%s [%d files written]" % (explain(err).replace(case.work, "TMP"),
                                                case.files(out))
    return case_fn


def pickle_payload(case):
    root = case.cifar()
    witness = case.path("pwned")

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch %s" % witness,))

    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_3"), "wb") as f:
        pickle.dump({b"data": Payload(), b"labels": [0]}, f)
    out = case.path("out")
    code, err, _ = case.dml("train", "--dataset", "cifar10", "--data-root", root, "--epochs",
                            "1", "--output-root", out, *TINY, timeout=300)
    return code, "%s [payload %s]" % (explain(err).replace(case.work, "TMP")[:150],
                                      "RAN" if os.path.exists(witness) else "did not run")


def evaluate_added_class(case):
    root = case.folder()
    out = case.path("out")
    case.train_folder(root, out)
    os.makedirs(os.path.join(root, "test", "zebra"))
    shutil.copy(glob.glob(os.path.join(root, "test", "cat", "*.png"))[0],
                os.path.join(root, "test", "zebra", "z.png"))
    code, err, _ = case.dml("evaluate", case.run_dir(out, "folder"))
    return code, explain(err).replace(case.work, "TMP")


def evaluate_other_run(case):
    out, _, _ = trained(case)
    run = case.run_dir(out)
    other = case.path("other")
    shutil.copytree(run, other)
    code, err, _ = case.dml("evaluate", run, "--checkpoint", os.path.join(other, "params",
                                                                          "net-0002.params"))
    return code, explain(err).replace(case.work, "TMP")[:160] if code else \
        "evaluated another run's file into this run's metrics.json"


def evaluate_truncated_metrics(case):
    out, _, _ = trained(case)
    run = case.run_dir(out)
    path = os.path.join(run, "metrics.json")
    text = open(path).read()
    open(path, "w").write(text[:len(text) // 2])
    before = case.files(run)
    code, err, _ = case.dml("evaluate", run)
    return code, "%s [%d files added]" % (explain(err).replace(case.work, "TMP")[:150],
                                          case.files(run) - before)


def evaluate_not_params(case):
    out, _, _ = trained(case)
    run = case.run_dir(out)
    code, err, _ = case.dml("evaluate", run, "--checkpoint",
                            os.path.join(run, "params", "state-0002.json"))
    return code, explain(err).replace(case.work, "TMP")[:200]


def launch(argv, timeout=40):
    def case_fn(case):
        code, err, _ = case.run([os.path.join(case.tree, "scripts", "launch.py"), "-n", "2", "--"]
                                + argv, timeout=timeout)
        return code, explain(err)
    return case_fn


def disk_full(case):
    mount = case.path("disk")
    os.makedirs(mount)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m", "tmpfs", mount]).returncode:
        return None, "(cannot mount a tmpfs: not root)"
    try:
        code, err, _ = case.dml("train", "--dataset", "digits", "--epochs", "3",
                                "--output-root", mount, *TINY, timeout=600)
        tmp = [p for p in glob.glob(os.path.join(mount, "**", "*"), recursive=True)
               if p.endswith(".tmp") or os.path.basename(p).startswith(".tmp-")]
        return code, "%s [%d temporary files left]" % (
            explain(err).replace(case.work, "TMP")[:170], len(tmp))
    finally:
        subprocess.run(["umount", mount])


def relative_data_root(case):
    case.folder()
    out = case.path("out")
    case.dml("train", "--dataset", "folder", "--data-root", "folder", "--epochs", "1",
             "--output-root", out, *TINY)
    code, err, _ = case.dml("evaluate", case.run_dir(out, "folder"), cwd="/")
    return code, explain(err).replace(case.work, "TMP") if code else "evaluate from / works"


def folder_layout(what):
    def case_fn(case):
        root = case.folder()
        if what == "nested":
            nested = os.path.join(root, "train", "owl", "sub")
            os.makedirs(nested)
            for p in glob.glob(os.path.join(root, "train", "owl", "*.*")):
                shutil.move(p, nested)
        elif what == "junk":
            open(os.path.join(root, "train", "cat", "Thumbs.db"), "w").write("x")
        else:
            os.makedirs(os.path.join(root, "test", "emu"))
        out = case.path("out")
        code, err, _ = case.train_folder(root, out)
        import json
        run = case.run_dir(out, "folder")
        detail = ""
        if code == 0 and run:
            names = json.load(open(os.path.join(run, "config.json")))["class_names"]
            detail = "trained; classes %s" % ",".join(names)
        return code, (detail or explain(err)).replace(case.work, "TMP")[:200]
    return case_fn


def no_install(case):
    # -S: no site-packages, like a Python where make install never ran
    code, err, _ = case.run([sys.executable, "-S", "-m", "dml", "train"], python=False,
                            cwd=case.tree)
    return code, explain(err)


def launcher_method(case):
    code, err, _ = case.run(["bash", os.path.join(case.tree, "train_cifar_triplet_semihard.sh"),
                             "--method", "siamese", "--epochs", "1", "--data-root", case.cifar(),
                             "--output-root", case.path("out")], python=False,
                            env=dict(case.env, PYTHON=sys.executable))
    return code, explain(err)


def run_size(case):
    out, code, _ = trained(case)
    run = case.run_dir(out)
    du = subprocess.run(["du", "-sm", run], capture_output=True, text=True).stdout.split()[0]
    return code, "a finished 2-epoch run folder: %s MB" % du


CASES = [
    ("the checkpoint is the evaluated net", checkpoint_vs_evaluated),
    ("SIGTERM mid-epoch", sigterm_then_resume),
    ("loss of NaN embeddings", nan_loss),
    ("--lr 1e30 (diverges)", diverging),
    ("--lr inf", refused(["--lr", "inf"])),
    ("--lr nan", refused(["--lr", "nan"])),
    ("--wd nan", refused(["--wd", "nan"])),
    ("--margin inf", refused(["--margin", "inf"])),
    ("t-SNE of a collapsed embedding", collapsed_tsne),
    ("a PNG cut in half", broken_image("truncated")),
    ("a 30000 x 30000 PNG", broken_image("bomb")),
    ("CIFAR pickle with a payload", pickle_payload),
    ("evaluate after a class was added", evaluate_added_class),
    ("evaluate RUN_A --checkpoint RUN_B/...", evaluate_other_run),
    ("launch.py -n 2 without --kvstore dist_*",
     launch([sys.executable, "-m", "dml", "train", "--epochs", "1"] + TINY)),
    ("disk full (200 MB tmpfs)", disk_full),
    ("--image-size 100000", refused(["--image-size", "100000"] + TINY)),
    ("--embedding-dim 1000000000", refused(["--embedding-dim", "1000000000"])),
    ("--cpus 64, batch of 16", refused(["--cpus", "64"] + TINY[:4])),
    ("--seed -1", refused(["--seed", "-1"])),
    ("--seed 99999999999", refused(["--seed", "99999999999"])),
    ("evaluate with a truncated metrics.json", evaluate_truncated_metrics),
    ("evaluate --checkpoint state-0002.json", evaluate_not_params),
    ("launch.py -- /nonexistent/binary", launch(["/nonexistent/binary"])),
    ("python -m dml without make install", no_install),
    ("train_cifar_triplet_semihard.sh --method siamese", launcher_method),
    ("relative --data-root, evaluate from /", relative_data_root),
    ("class images in a subfolder", folder_layout("nested")),
    ("Thumbs.db in a class folder", folder_layout("junk")),
    ("an empty class folder", folder_layout("empty")),
    ("run folder size", run_size),
]


# Issue 26: every command, not only train.

def _digits_run(case):
    """A 1-epoch digits run (tiny batches) in this case's folder: its run folder, or None."""
    out = case.path("run")
    code, _, _ = case.dml("train", "--dataset", "digits", "--epochs", "1", "--output-root", out,
                          *TINY, timeout=600)
    return case.run_dir(out, "digits") if code == 0 else None


def _query_images(case, n=4):
    from PIL import Image
    import numpy as np
    folder = case.path("photos", "cat")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
            os.path.join(folder, "%d.png" % i))
    return case.path("photos")


def omp_garbage(case):
    code, err, _ = case.dml("train", "--epochs", "1", env=dict(case.env, OMP_NUM_THREADS="abc"),
                            timeout=120)
    return code, explain(err)


def bench_args(argv):
    def case_fn(case):
        code, err, _ = case.run(["-m", "dml.bench"] + argv, timeout=300)
        return code, explain(err)
    return case_fn


def single_image_classes(case):
    root = case.path("folder")
    write_image_folder(root, per_class=(8, 1))
    out = case.path("out")
    code, err, _ = case.train_folder(root, out)
    return code, "%s [%d files written]" % (explain(err).replace(case.work, "TMP"),
                                            case.files(out))


def huge_memory(case):
    out = case.path("out")
    code, err, _ = case.dml("train", "--method", "multi_similarity", "--memory-size", "1048576",
                            "--embedding-dim", "65536", "--epochs", "1", "--output-root", out,
                            timeout=300)
    return code, "%s [%d files written]" % (explain(err), case.files(out))


def embed_fifo(case):
    run = _digits_run(case)
    if run is None:
        return None, "(the digits run failed)"
    fifo = case.path("x.png")
    os.mkfifo(fifo)
    code, err, _ = case.dml("embed", run, fifo, "-o", case.path("e.npy"), timeout=60)
    return code, explain(err).replace(case.work, "TMP")


def embed_onto_folder(case):
    run = _digits_run(case)
    if run is None:
        return None, "(the digits run failed)"
    os.makedirs(case.path("taken.npy"))
    code, err, _ = case.dml("embed", run, _query_images(case), "-o", case.path("taken.npy"),
                            timeout=120)
    return code, explain(err).replace(case.work, "TMP")


def embed_through_link(case):
    run = _digits_run(case)
    if run is None:
        return None, "(the digits run failed)"
    victim = case.path("victim.txt")
    open(victim, "w").write("precious\n")
    os.symlink(victim, case.path("out.npy.tmp"))
    code, err, _ = case.dml("embed", run, _query_images(case), "-o", case.path("out.npy"),
                            timeout=120)
    kept = open(victim, "rb").read() == b"precious\n"
    return code, "%s; victim.txt %s" % (explain(err).replace(case.work, "TMP") if code else "done",
                                        "untouched" if kept else "OVERWRITTEN")


def swapped_faiss(case):
    """index.faiss replaced by another index of the same size and dimension."""
    run = _digits_run(case)
    if run is None:
        return None, "(the digits run failed)"
    photos = _query_images(case)
    code, err, _ = case.dml("index", run, photos, "-o", case.path("a"), timeout=120)
    if code:
        return code, explain(err)
    import faiss
    import numpy as np
    other = faiss.IndexFlatL2(faiss.read_index(case.path("a", "index.faiss")).d)
    other.add(np.random.default_rng(0).normal(size=(4, other.d)).astype(np.float32))
    faiss.write_index(other, case.path("a", "index.faiss"))
    code, err, _ = case.dml("search", case.path("a"), os.path.join(photos, "cat", "0.png"),
                            "-k", "2", timeout=120)
    return code, explain(err).replace(case.work, "TMP") if code else "searched the swapped index"


def copied_run_compare(case):
    run = _digits_run(case)
    if run is None:
        return None, "(the digits run failed)"
    shutil.copytree(run, run + "-copy")
    proc = subprocess.run([sys.executable, "-m", "dml", "compare", case.path("run")],
                          capture_output=True, text=True, env=case.env, cwd=case.work, timeout=120)
    if proc.returncode:
        return proc.returncode, explain(proc.stderr)
    row = [l for l in proc.stdout.splitlines() if "triplet_semihard" in l][:1]
    note = [l for l in proc.stderr.splitlines() if "same seed" in l or "copy" in l][:1]
    return 0, " ".join(" ".join(r.split()) for r in row + note)[:220].replace(case.work, "TMP")


def cub_outside(case):
    from fakedata import write_cub200
    root = case.path("cub")
    write_cub200(root)
    images = os.path.join(root, "CUB_200_2011", "images.txt")
    if not os.path.exists(images):
        images = os.path.join(root, "images.txt")
    lines = open(images).read().splitlines()
    first = lines[0].split(" ", 1)[0]
    lines[0] = "%s ../../../../../../etc/hostname" % first
    open(images, "w").write("\n".join(lines) + "\n")
    out = case.path("out")
    code, err, _ = case.dml("train", "--dataset", "cub200", "--data-root", root, "--no-pretrained",
                            "--image-size", "32", "--epochs", "1", "--output-root", out, *TINY,
                            timeout=300)
    return code, "%s [%d files written]" % (explain(err).replace(case.work, "TMP"),
                                            case.files(out))


def _index(case):
    run = _digits_run(case)
    if run is None:
        return None, None
    photos = _query_images(case)
    code, _, _ = case.dml("index", run, photos, "-o", case.path("ix"), timeout=120)
    return (photos if code == 0 else None), run


def index_damaged(how):
    def case_fn(case):
        import json
        photos, _ = _index(case)
        if photos is None:
            return None, "(the digits run or its index failed)"
        meta, items = case.path("ix", "index.json"), case.path("ix", "items.csv")
        if how == "half":
            raw = open(meta).read()
            open(meta, "w").write(raw[:len(raw) // 2])
        elif how == "hnsw":
            data = json.load(open(meta))
            data["kind"] = "hnsw"
            json.dump(data, open(meta, "w"))
        else:
            lines = open(items).read().splitlines()
            open(items, "w").write("\n".join(["idx,where,label"] + lines[1:]) + "\n")
        code, err, _ = case.dml("search", case.path("ix"), os.path.join(photos, "cat", "0.png"),
                                "-k", "2", timeout=120)
        return code, explain(err).replace(case.work, "TMP") if code else "searched"
    return case_fn


def python_embed(expression):
    def case_fn(case):
        run = _digits_run(case)
        if run is None:
            return None, "(the digits run failed)"
        _query_images(case)
        script = ("import numpy as np, dml\nrun = dml.load_run(%r)\nout = run.embed(%s)\n"
                  "print('embedding of shape', out.shape)" % (run, expression))
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=case.env, cwd=case.path("photos", "cat"), timeout=300)
        return proc.returncode, (proc.stdout.strip() if proc.returncode == 0
                                 else explain(proc.stderr)).replace(case.work, "TMP")
    return case_fn


def moved_data_lost_a_test_class(case):
    root = case.path("folder")
    write_image_folder(root, classes=("cat", "dog", "fox", "owl", "emu", "yak"))
    out = case.path("out")
    code, err, _ = case.train_folder(root, out)
    run = case.run_dir(out, "folder")
    if code or run is None:
        return code, explain(err)
    moved = case.path("moved")
    shutil.copytree(root, moved)
    shutil.rmtree(os.path.join(moved, "test", "yak"))
    code, err, _ = case.dml("evaluate", run, "--data-root", moved, timeout=300)
    return code, explain(err).replace(case.work, "TMP") if code else "evaluated on the rest"


ISSUE_26 = [
    ("OMP_NUM_THREADS=abc", omp_garbage),
    ("bench serve --dim 0", bench_args(["serve", "--dim", "0"])),
    ("bench train --steps 0", bench_args(["train", "--steps", "0"])),
    ("bench losses --batch-sizes abc", bench_args(["losses", "--batch-sizes", "abc"])),
    ("a test split of one image a class", single_image_classes),
    ("--memory-size 1048576 --embedding-dim 65536", huge_memory),
    ("embed a FIFO named x.png", embed_fifo),
    ("embed -o onto a folder", embed_onto_folder),
    ("embed -o out.npy, out.npy.tmp a planted link", embed_through_link),
    ("search an index whose index.faiss was swapped", swapped_faiss),
    ("compare a copied run folder", copied_run_compare),
    ("CUB images.txt path ../../etc/hostname", cub_outside),
    ("search with index.json cut in half", index_damaged("half")),
    ("search, index.json kind hnsw on a flat index", index_damaged("hnsw")),
    ("search, items.csv header edited", index_damaged("header")),
    ("run.embed(\"0.png\")", python_embed("'0.png'")),
    ("run.embed(np.zeros((0, 0, 3), np.uint8))", python_embed("np.zeros((0, 0, 3), np.uint8)")),
    ("evaluate --data-root MOVED, MOVED lost a test class", moved_data_lost_a_test_class),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--issue-26", action="store_true",
                        help="the cases of issue 26 (every command) instead of the first set")
    parser.add_argument("--only", default=None, help="run only the cases whose name has this")
    args = parser.parse_args()
    before = tempfile.mkdtemp(prefix="dml-before-")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", before, args.before],
                   check=True)
    rows = []
    try:
        for name, fn in (ISSUE_26 if args.issue_26 else CASES):
            if args.only and args.only not in name:
                continue
            row = [name]
            for tree in (before, ROOT):
                work = tempfile.mkdtemp(prefix="dml-case-")
                try:
                    code, text = fn(Case(tree, work))
                except Exception as err:  # a case that cannot even be set up on that tree
                    code, text = None, "(case failed: %s)" % err
                finally:
                    subprocess.run(["umount", os.path.join(work, "disk")], capture_output=True)
                    shutil.rmtree(work, ignore_errors=True)
                row += ["-" if code is None else str(code), text.replace("|", "\\|")]
            rows.append(row)
            sys.stderr.write("%s: %s / %s\n" % (name, row[1], row[3]))
    finally:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", before])
    print("# Hostile input and failures: before and after\n")
    print("Made with `.venv/bin/python scripts/hostile_table.py --before %s%s > doc/hostile%s.md` "
          "(each case a fresh process in a fresh folder; TMP is that folder).\n"
          % (args.before, " --issue-26" if args.issue_26 else "", "-26" if args.issue_26 else ""))
    print("| case | exit before | before | exit now | now |")
    print("|---|---:|---|---:|---|")
    for row in rows:
        print("| %s |" % " | ".join(row))


if __name__ == "__main__":
    main()
