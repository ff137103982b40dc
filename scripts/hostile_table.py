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
    script = ("import os, signal, sys\ntry:\n    import dml.train.loop as e\nexcept ImportError:  # "
              "before dml.train\n    import dml.engine as e\nn, c, s = 3, [0], e.train_step\n"
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

_TRAINED = {}  # tree -> a folder holding one trained digits run, copied into each case


def _digits_run(case, name="run"):
    """A 1-epoch digits run (tiny batches) in this case's folder ``name``: its run folder.
    Trained once per tree, then copied (a copy is another run folder of the same network); a
    failed training raises (main() shows the case as failed)."""
    template = _TRAINED.get(case.tree)
    if template is None:
        template = tempfile.mkdtemp(prefix="dml-digits-")
        code, _, _ = case.dml("train", "--dataset", "digits", "--epochs", "1", "--output-root",
                              template, *TINY, timeout=600)
        if code != 0:
            shutil.rmtree(template, ignore_errors=True)
            raise RuntimeError("the digits run failed")
        _TRAINED[case.tree] = template
    out = case.path(name)
    shutil.copytree(template, out, symlinks=True)
    return case.run_dir(out, "digits")


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
    fifo = case.path("x.png")
    os.mkfifo(fifo)
    code, err, _ = case.dml("embed", run, fifo, "-o", case.path("e.npy"), timeout=60)
    return code, explain(err).replace(case.work, "TMP")


def embed_onto_folder(case):
    run = _digits_run(case)
    os.makedirs(case.path("taken.npy"))
    code, err, _ = case.dml("embed", run, _query_images(case), "-o", case.path("taken.npy"),
                            timeout=120)
    return code, explain(err).replace(case.work, "TMP")


def embed_through_link(case):
    run = _digits_run(case)
    victim = case.path("victim.txt")
    open(victim, "w").write("precious\n")
    os.symlink(victim, case.path("out.npy.tmp"))
    code, err, _ = case.dml("embed", run, _query_images(case), "-o", case.path("out.npy"),
                            timeout=120)
    kept = open(victim, "rb").read() == b"precious\n"
    return code, "%s; victim.txt %s" % (explain(err).replace(case.work, "TMP") if code else "done",
                                        "untouched" if kept else "OVERWRITTEN")


def index_of(case, run, folder="ix"):
    """``dml index`` of the case's query images with ``run`` into ``folder``: its path (a failed
    build raises: main() shows the case as failed)."""
    code, err, _ = case.dml("index", run, _query_images(case), "-o", case.path(folder),
                            timeout=300)
    if code:
        raise RuntimeError("dml index failed: %s" % explain(err))
    return case.path(folder)


def damaged_index(damage, folder="ix", searched="searched"):
    """A case: the index of a digits run, ``damage(case, index_dir, run)``, then ``dml search``
    of one of its images (-k 2: the index holds 4)."""
    def case_fn(case):
        run = _digits_run(case)
        ix = index_of(case, run, folder)
        damage(case, ix, run)
        code, err, _ = case.dml("search", ix, os.path.join(case.path("photos"), "cat", "0.png"),
                                "-k", "2", timeout=300)
        return code, _tmp(case, explain(err) if code else searched)
    return case_fn


def _edit_json(path, change):
    import json
    data = json.load(open(path))
    change(data)
    json.dump(data, open(path, "w"))


def half_index_json(case, ix, run):
    raw = open(os.path.join(ix, "index.json")).read()
    open(os.path.join(ix, "index.json"), "w").write(raw[:len(raw) // 2])


def hnsw_kind(case, ix, run):
    _edit_json(os.path.join(ix, "index.json"), lambda meta: meta.update(kind="hnsw"))


def items_header(case, ix, run):
    items = os.path.join(ix, "items.csv")
    lines = open(items).read().splitlines()
    open(items, "w").write("\n".join(["idx,where,label"] + lines[1:]) + "\n")


def swap_faiss(case, ix, run):
    """index.faiss replaced by another index of the same size and dimension."""
    import faiss
    import numpy as np
    other = faiss.IndexFlatL2(faiss.read_index(os.path.join(ix, "index.faiss")).d)
    other.add(np.random.default_rng(0).normal(size=(4, other.d)).astype(np.float32))
    faiss.write_index(other, os.path.join(ix, "index.faiss"))


def claim_2_37(case, ix, run):
    """IndexFlat's header: "IxF2", d (int32), ntotal (int64): claim 2^37 vectors, with
    index.json's hash brought in step, as an attacker would."""
    import hashlib
    path = os.path.join(ix, "index.faiss")
    data = bytearray(open(path, "rb").read())
    data[8:16] = struct.pack("<q", 1 << 37)
    open(path, "wb").write(bytes(data))

    def rehash(meta):
        if isinstance(meta.get("files"), dict):
            meta["files"]["index.faiss"] = hashlib.sha256(bytes(data)).hexdigest()
    _edit_json(os.path.join(ix, "index.json"), rehash)


def edit_checkpoint_sha256(case, ix, run):
    _edit_json(os.path.join(ix, "index.json"),
               lambda meta: meta.update(checkpoint_sha256="0" * 64))


def prune_checkpoints(case, ix, run):
    for path in glob.glob(os.path.join(run, "params", "net-*.params")):
        os.remove(path)


def copied_run_compare(case):
    run = _digits_run(case)
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


def python_embed(expression):
    def case_fn(case):
        run = _digits_run(case)
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


def _tmp(case, text):
    return text.replace(case.work, "TMP")


def command(argv_fn, timeout=300, env=None, note=None):
    """A command on a copy of the trained digits run: argv_fn(case, run) -> argv of ``dml``;
    ``note(case, run)`` adds what the exit code cannot show (e.g. what a file holds)."""
    def case_fn(case):
        run = _digits_run(case)
        argv = argv_fn(case, run)
        code, err, _ = case.dml(*argv, timeout=timeout,
                                env=dict(case.env, **env) if env else None)
        text = explain(err) if code else "done"
        if note:
            text = "%s; %s" % (text, note(case, run))
        return code, _tmp(case, text)
    return case_fn


def deep_image(kind):
    """A 16-bit PNG ramp (values 24..65525) or a float TIFF embedded beside its 8-bit twin."""
    def argv(case, run):
        import numpy as np
        from PIL import Image
        ramp = np.linspace(24, 65525, 32 * 32).reshape(32, 32)
        if kind == "png16":
            Image.fromarray(ramp.astype(np.uint16)).save(case.path("deep.png"))
        else:
            Image.fromarray((ramp / 65535).astype(np.float32)).save(case.path("deep.tif"))
        return ["embed", run, case.path("deep.png" if kind == "png16" else "deep.tif"),
                "-o", case.path("deep.npy")]

    def note(case, run):
        import numpy as np
        from PIL import Image
        if not os.path.exists(case.path("deep.npy")):
            return "nothing embedded"
        ramp = np.linspace(24, 65525, 32 * 32).reshape(32, 32) * 255 / 65535
        Image.fromarray(np.round(ramp).astype(np.uint8)).save(case.path("eight.png"))
        case.dml("embed", run, case.path("eight.png"), "-o", case.path("eight.npy"))
        deep, eight = np.load(case.path("deep.npy")), np.load(case.path("eight.npy"))
        return "distance to the 8-bit image's embedding %.3f" % np.linalg.norm(deep - eight)
    return command(argv, note=note)


def other_checkpoint(what):
    def argv(case, run):
        other = _digits_run(case, "other")
        params = sorted(glob.glob(os.path.join(other, "params", "net-*.params")))[-1]
        target = {"embed": ["-o", case.path("e.npy")], "index": ["-o", case.path("ix")],
                  "export": ["--onnx", case.path("m.onnx")]}[what]
        inputs = [] if what == "export" else [_query_images(case)]
        return [what, run] + inputs + ["--checkpoint", params] + target
    return command(argv)


def compare_nan(case):
    import json
    run = _digits_run(case)
    parent = os.path.dirname(run)
    for seed, value in ((7, float("nan")), (8, 0.01)):
        copy = "%s-seed%d" % (run, seed)
        shutil.copytree(run, copy)
        for name, key, new in (("config.json", "seed", seed), ("metrics.json", "map_at_r", value)):
            path = os.path.join(copy, name)
            data = json.load(open(path))
            data[key] = new
            json.dump(data, open(path, "w"))
    proc = subprocess.run([sys.executable, "-m", "dml", "compare", parent, "--runs"],
                          capture_output=True, text=True, env=case.env, cwd=case.work, timeout=120)
    if proc.returncode:
        return proc.returncode, explain(proc.stderr)
    order = [("nan" if "-seed7" in l else "0.01" if "-seed8" in l else "trained")
             for l in proc.stdout.splitlines() if "triplet_semihard" in l]
    return 0, "rows in order: %s" % ", ".join(order)


def odd_class_names(case):
    import numpy as np
    root = case.path("folder")
    write_image_folder(root, per_class=(6, 4))
    for split in ("train", "test"):
        os.rename(os.path.join(root, split, "cat"), os.path.join(root, split, "c\tat"))
        os.rename(os.path.join(root, split, "dog"), os.path.join(root, split, "d\nog"))
    out = case.path("out")
    code, err, _ = case.train_folder(root, out)
    run = case.run_dir(out, "folder")
    found = glob.glob(os.path.join(run or out, "logs", "test_embedding_*", "metadata.tsv"))
    if code or not found:
        return code, _tmp(case, explain(err))
    folder = os.path.dirname(sorted(found)[-1])
    lines = open(os.path.join(folder, "metadata.tsv"), encoding="utf-8").read().rstrip("\n")
    vectors = np.loadtxt(os.path.join(folder, "tensors.tsv"))
    return 0, "metadata.tsv has %d lines for %d vectors" % (len(lines.split("\n")), len(vectors))


def benchmark_file(name, how):
    def case_fn(case):
        from test_benchmarks import _corrupt
        import fakedata
        root = case.path(name)
        writer = {"cub200": fakedata.write_cub200, "sop": fakedata.write_sop,
                  "inshop": fakedata.write_inshop}[name]
        writer(root)
        _corrupt(name, root, how)
        out = case.path("out")
        code, err, _ = case.dml("train", "--dataset", name, "--data-root", root,
                                "--no-pretrained", "--image-size", "32", "--epochs", "1",
                                "--output-root", out, *TINY, timeout=300)
        return code, _tmp(case, "%s [%d files written]" % (explain(err), case.files(out)))
    return case_fn


def two_devices(case):
    """Epoch 1's loss on 1 and on 2 CPU contexts, same seed (the CLI's ResNet-18 has BatchNorm)."""
    import json
    losses = []
    for cpus in ("1", "2"):
        out = case.path("out" + cpus)
        code, err, _ = case.dml("train", "--dataset", "digits", "--epochs", "1", "--cpus", cpus,
                                "--output-root", out, "--n-classes", "4", "--n-samples", "4",
                                "--embedding-dim", "16", "--num-workers", "1", timeout=600)
        if code:
            return code, explain(err)
        history = json.load(open(os.path.join(case.run_dir(out, "digits"), "logs",
                                              "history.json")))
        epochs = history if isinstance(history, list) else history.get("epochs", [])
        losses.append(epochs[-1].get("train_loss", epochs[-1].get("loss")))
    return 0, "epoch-1 loss %.4f on 1 context, %.4f on 2" % tuple(losses)


def bench_warm_up(case):
    proc = subprocess.run([sys.executable, "-m", "dml.bench", "train", "--methods",
                           "softmax,triplet_semihard,softmax", "--steps", "6"],
                          capture_output=True, text=True, env=case.env, cwd=case.work,
                          timeout=900)
    if proc.returncode:
        return proc.returncode, explain(proc.stderr)
    rows = [l for l in proc.stdout.splitlines() if l.lstrip("| ").startswith("softmax")]
    return 0, "softmax timed twice: %s images/s" % " then ".join(r.split()[2] for r in rows)


def full_disk(argv_fn):
    """A command writing onto a full 64 KB tmpfs: what it says and what it leaves there."""
    def case_fn(case):
        run = _digits_run(case)
        mount = case.path("disk")
        os.makedirs(mount)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mount]).returncode:
            return None, "(cannot mount a tmpfs: not root)"
        try:
            with open(os.path.join(mount, "filler"), "wb") as f:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
        code, err, _ = case.dml(*argv_fn(case, run, mount), timeout=300)
        left = sorted(set(os.listdir(mount)) - {"filler"})
        return code, _tmp(case, "%s [left on the disk: %s]" % (explain(err), ", ".join(left)
                                                               or "nothing"))
    return case_fn


def racing_indexes(case):
    run = _digits_run(case)
    photos = _query_images(case, 40)
    argv = [sys.executable, "-m", "dml", "index", run, photos, "-o", case.path("ix")]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=case.env, cwd=case.work) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    loser = [err for code, err in results if code]
    return codes[-1], _tmp(case, "exit codes %s%s" % (
        " and ".join(map(str, codes)), "; " + explain(loser[0]) if loser else ""))


def same_size_and_time(case):
    """A training image rewritten (same size, same modification time) after a first run."""
    root = case.folder()
    hour_ago = time.time() - 3600  # not "racily clean": the first run's check is remembered
    for path in glob.glob(os.path.join(root, "*", "*", "*")):
        os.utime(path, (hour_ago, hour_ago))
    case.env["DML_CACHE_DIR"] = case.path("cache")
    code, err, _ = case.train_folder(root, case.path("first"))
    if code:
        return code, explain(err)
    path = sorted(glob.glob(os.path.join(root, "train", "*", "*")))[0]
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.write(b"\0" * 64)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    out = case.path("out")
    code, err, _ = case.train_folder(root, out)
    return code, _tmp(case, "%s [%d files written]" % (explain(err), case.files(out)))


def two_resumes(case):
    run = _digits_run(case)
    argv = [sys.executable, "-m", "dml", "train", "--resume", run, "--epochs", "3"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=case.env, cwd=case.work)
    log = os.path.join(run, "logs", "train.log")
    size, deadline = os.path.getsize(log), time.time() + 300
    while time.time() < deadline and first.poll() is None and os.path.getsize(log) == size:
        time.sleep(0.1)
    code, err, _ = case.run(argv[1:], timeout=600)
    first.wait(timeout=600)
    return code, _tmp(case, explain(err) if code else "both trained the folder at once")


def double_sigterm(case):
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from runhelpers import signal_at_step
    out = case.path("out")
    code, err, _ = case.run(["-c", signal_at_step("SIGTERM", again_after=0.05), "12", "train",
                             "--dataset", "cifar10", "--data-root", case.cifar(), "--epochs", "3",
                             "--output-root", out] + TINY, timeout=600)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    return code, _tmp(case, lines[-1][:220] if lines else "(nothing on stderr)")


def offline_benchmark(case):
    import fakedata
    root = case.path("cub")
    fakedata.write_cub200(root)
    out = case.path("out")
    code, err, _ = case.dml("train", "--dataset", "cub200", "--data-root", root, "--epochs", "1",
                            "--output-root", out, timeout=300)
    line = err.strip().splitlines()[-1] if err.strip() else "(nothing on stderr)"
    return code, _tmp(case, "... " + line[-120:])


def resume_margin_none(case):
    import json
    run = _digits_run(case)
    path = os.path.join(run, "config.json")
    config = json.load(open(path))
    config["margin"] = None
    json.dump(config, open(path, "w"))
    code, err, _ = case.dml("train", "--resume", run, "--margin", "0.4", timeout=300)
    return code, _tmp(case, explain(err))


def doctor_failing_smi(case):
    bin_dir = case.path("bin")
    os.makedirs(bin_dir)
    script = os.path.join(bin_dir, "nvidia-smi")
    open(script, "w").write("#!/bin/sh\necho 'NVIDIA-SMI has failed because it couldn'\\''t "
                            "communicate with the NVIDIA driver.'\nexit 9\n")
    os.chmod(script, 0o755)
    proc = subprocess.run([sys.executable, "-m", "dml", "doctor"], capture_output=True, text=True,
                          env=dict(case.env, PATH=bin_dir + os.pathsep + os.environ["PATH"]),
                          cwd=case.work, timeout=120)
    gpu = [l.strip() for l in (proc.stdout + proc.stderr).splitlines()
           if "nvidia" in l.lower() or "gpu" in l.lower()]
    return proc.returncode, " / ".join(gpu)[:220] or explain(proc.stderr)


def list_file(how):
    def argv(case, run):
        photos = _query_images(case)
        images = sorted(glob.glob(os.path.join(photos, "cat", "*.png")))
        listing = case.path("list.txt")
        if how == "bom":
            open(listing, "wb").write(("\ufeff%s\n%s\n" % (images[0], images[1])).encode())
        else:
            open(listing, "w").write("%s\n%s\n" % (images[0], case.path("gone.png")))
        return ["embed", run, listing, "-o", case.path("l.npy"), "--strict"]

    def note(case, run):
        import numpy as np
        path = case.path("l.npy")
        return "%d of 2 images embedded" % (np.load(path).shape[0] if os.path.exists(path) else 0)
    return command(argv, note=note)


def bomb_strict(case):
    run = _digits_run(case)
    from PIL import Image
    Image.new("RGB", (300, 300)).save(case.path("big.png"))
    script = ("import sys\nfrom PIL import Image\nImage.MAX_IMAGE_PIXELS = 300 * 300 - 1\n"
              "from dml.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    code, err, _ = case.run(["-c", script, "embed", run, case.path("big.png"), "-o",
                             case.path("b.npy"), "--strict"], timeout=300)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    return code, _tmp(case, "%d lines on stderr; last: %s" % (len(lines), lines[-1][:150]
                                                              if lines else "-"))


def compare_truncated(case):
    run = _digits_run(case)
    shutil.copytree(run, run + "-cut")
    open(os.path.join(run + "-cut", "metrics.json"), "w").write('{"map_at_r": 0.8')
    proc = subprocess.run([sys.executable, "-m", "dml", "compare", case.path("run")],
                          capture_output=True, text=True, env=case.env, cwd=case.work, timeout=120)
    warned = [l for l in proc.stderr.splitlines() if "skipping" in l or "WARNING" in l]
    return proc.returncode, "%d warning lines about the one file" % len(warned)


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
    ("search an index whose index.faiss was swapped",
     damaged_index(swap_faiss, folder="a", searched="searched the swapped index")),
    ("compare a copied run folder", copied_run_compare),
    ("CUB images.txt path ../../etc/hostname", cub_outside),
    ("search with index.json cut in half", damaged_index(half_index_json)),
    ("search, index.json kind hnsw on a flat index", damaged_index(hnsw_kind)),
    ("search, items.csv header edited", damaged_index(items_header)),
    ("run.embed(\"0.png\")", python_embed("'0.png'")),
    ("run.embed(np.zeros((0, 0, 3), np.uint8))", python_embed("np.zeros((0, 0, 3), np.uint8)")),
    ("evaluate --data-root MOVED, MOVED lost a test class", moved_data_lost_a_test_class),
    ("embed a 16-bit PNG (values 24..65525)", deep_image("png16")),
    ("embed a float TIFF", deep_image("float")),
    ("embed RUN_A --checkpoint RUN_B's", other_checkpoint("embed")),
    ("index RUN_A --checkpoint RUN_B's", other_checkpoint("index")),
    ("export RUN_A --checkpoint RUN_B's", other_checkpoint("export")),
    ("compare with a NaN map_at_r (best first)", compare_nan),
    ("class folders named with a tab and a line break", odd_class_names),
    ("CUB images.txt with an image id twice", benchmark_file("cub200", "duplicate_id")),
    ("SOP Ebay_train.txt without its header line", benchmark_file("sop", "no_header")),
    ("In-Shop count line 9999", benchmark_file("inshop", "count")),
    ("In-Shop without Img/", benchmark_file("inshop", "no_img")),
    ("ResNet-18 on --cpus 2 vs 1 (BatchNorm)", two_devices),
    ("bench train --methods softmax,triplet_semihard,softmax", bench_warm_up),
    ("embed -o ''", command(lambda c, r: ["embed", r, _query_images(c), "-o", ""])),
    ("embed -o onto a full disk", full_disk(
        lambda c, r, d: ["embed", r, _query_images(c), "-o", os.path.join(d, "e.npy")])),
    ("index -o onto a full disk", full_disk(
        lambda c, r, d: ["index", r, _query_images(c), "-o", os.path.join(d, "ix")])),
    ("export --onnx onto a full disk", full_disk(
        lambda c, r, d: ["export", r, "--onnx", os.path.join(d, "m.onnx")])),
    ("compare --plot onto a full disk", full_disk(
        lambda c, r, d: ["compare", os.path.dirname(r), "--plot", os.path.join(d, "c.png")])),
    ("search --grid onto a full disk", full_disk(
        lambda c, r, d: ["search", index_of(c, r), os.path.join(c.path("photos"), "cat"),
                         "-k", "2", "--grid", os.path.join(d, "g.png")])),
    ("embed -o /proc/x.npy", command(lambda c, r: ["embed", r, _query_images(c), "-o",
                                                   "/proc/x.npy"])),
    ("two index -o racing for one folder", racing_indexes),
    ("search, index.faiss claiming 2^37 vectors", damaged_index(claim_2_37)),
    ("an image rewritten with the same size and mtime", same_size_and_time),
    ("two train --resume of one run at once", two_resumes),
    ("embed /dev/zero", command(lambda c, r: ["embed", r, "/dev/zero", "-o", c.path("z.npy")],
                                timeout=60)),
    ("bench losses --batch-sizes 0", bench_args(["losses", "--batch-sizes", "0"])),
    ("bench losses --batch-sizes -8", bench_args(["losses", "--batch-sizes=-8"])),
    ("bench losses --repeats 0", bench_args(["losses", "--repeats", "0"])),
    ("bench serve --gallery 0", bench_args(["serve", "--gallery", "0"])),
    ("bench serve --kinds bogus", bench_args(["serve", "--kinds", "bogus"])),
    ("bench checks --side 0", bench_args(["checks", "--side", "0"])),
    ("bench train --methods bogus", bench_args(["train", "--methods", "bogus"])),
    ("bench train --n-classes 0", bench_args(["train", "--n-classes", "0"])),
    ("bench memory --memory-sizes -5", bench_args(["memory", "--memory-sizes=-5"])),
    ("SIGTERM twice, 50 ms apart", double_sigterm),
    ("a benchmark offline without --no-pretrained", offline_benchmark),
    ("--margin on multi_similarity", refused(["--method", "multi_similarity", "--margin", "0.3"])),
    ("--resume with --margin on a run whose margin is unset", resume_margin_none),
    ("embed --gpu 0 on the CPU build", command(
        lambda c, r: ["embed", r, _query_images(c), "-o", c.path("e.npy"), "--gpu", "0"])),
    ("doctor with a failing nvidia-smi", doctor_failing_smi),
    ("a list file naming a missing image", list_file("missing")),
    ("a list file with a UTF-8 byte order mark", list_file("bom")),
    ("a decompression bomb under --strict", bomb_strict),
    ("index.json's checkpoint_sha256 edited", damaged_index(edit_checkpoint_sha256)),
    ("search an index whose checkpoint was pruned", damaged_index(prune_checkpoints)),
    ("compare with one truncated metrics.json", compare_truncated),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the git revision to compare with")
    parser.add_argument("--issue-26", action="store_true",
                        help="the cases of issue 26 (every command) instead of the first set")
    parser.add_argument("--only", default=None,
                        help="run only the cases whose name has this (A|B: either)")
    args = parser.parse_args()
    before = tempfile.mkdtemp(prefix="dml-before-")
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", before, args.before],
                   check=True)
    rows = []
    try:
        for name, fn in (ISSUE_26 if args.issue_26 else CASES):
            if args.only and not any(part in name for part in args.only.split("|")):
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
        for template in _TRAINED.values():
            shutil.rmtree(template, ignore_errors=True)
    print("# Hostile input and failures%s: before and after\n"
          % (" of issue 26 (every command)" if args.issue_26 else ""))
    print("Made with `.venv/bin/python scripts/hostile_table.py --before %s%s > doc/hostile%s.md` "
          "(each case a fresh process in a fresh folder; TMP is that folder).\n"
          % (args.before, " --issue-26" if args.issue_26 else "", "-26" if args.issue_26 else ""))
    print("| case | exit before | before | exit now | now |")
    print("|---|---:|---|---:|---|")
    for row in rows:
        print("| %s |" % " | ".join(row))


if __name__ == "__main__":
    main()
