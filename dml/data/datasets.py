"""Datasets: the embedded digits set, CIFAR-10/100 and (Fashion-)MNIST from their official files,
and image folders.

Every loader returns a :class:`DatasetSplits` whose ``train`` and ``test`` are Gluon datasets of
``(uint8 HxWx3 image, int label)`` with a fast ``batch(indices)`` used by :class:`dml.data.BatchLoader`.
Nothing here downloads unless the files are missing, and then only one attempt through MXNet's own
downloader (skipped when ``DML_OFFLINE=1``); a missing or corrupt file is a :class:`dml.DmlError`
naming the folder and the files looked for.
"""
import gzip
import logging
import os
import pickle
import struct
import tarfile
import zlib

import numpy as np

from ..environ import offline
from ..errors import DmlError
from ..registry import DATASETS
from .base import (IMAGENET_MEAN, IMAGENET_STD, DatasetSplits, ImageArrayDataset,  # noqa: F401
                   ImageFileDataset, _splits, default_data_root)
from .benchmarks import BENCHMARKS, load_benchmark
from .checks import check_images
from .glyphs import load_glyphs
from .images import read_image  # noqa: F401  (where it was; dml.data.images owns it)
from .splits import (MIN_UNSEEN_CLASSES, VAL_CLASSES_SEED, apply_split,  # noqa: F401
                     check_same_classes, class_subset, count_val_classes, hold_out_classes,
                     unseen_class_splits)

log = logging.getLogger(__name__)


def _mxnet_download(namespace, filename, sha1, root):
    """One attempt at MXNet's own download of a dataset file; True when it arrived."""
    if offline():
        return False
    from mxnet.gluon.utils import _get_repo_file_url, download

    try:
        os.makedirs(root, exist_ok=True)
        log.info("%s not found under %s: trying MXNet's download", filename, root)
        download(_get_repo_file_url(namespace, filename), path=os.path.join(root, filename),
                 sha1_hash=sha1, retries=1)
        return True
    except Exception as err:  # network errors come in many types; any of them means "not here"
        log.info("download of %s failed: %s", filename, err)
        return False


# --------------------------------------------------------------------------------------------
# digits


def load_digits(image_size=32, test_fraction=0.25, seed=0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), resized to
    ``image_size`` and repeated over 3 channels, with a fixed stratified train/test split."""
    from PIL import Image
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    digits = sk_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = np.stack([
        np.asarray(Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR))
        for img in small
    ])
    images = np.repeat(big[..., None], 3, axis=3)
    labels = digits.target.astype(np.int32)
    idx_train, idx_test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                           stratify=labels, random_state=seed)
    train_pixels = images[idx_train].astype(np.float64) / 255.0
    mean = float(train_pixels.mean())
    std = float(train_pixels.std())
    # handwriting: a mirrored digit is another shape, so no flip
    return _splits("digits", ImageArrayDataset(images[idx_train], labels[idx_train]),
                   ImageArrayDataset(images[idx_test], labels[idx_test]),
                   [str(i) for i in range(10)], (mean,) * 3, (std,) * 3, crop_pad=max(1, image_size // 16))


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: python pickles or binary records, as folders or the official archives

_CIFAR = {
    "cifar10": dict(
        py_dir="cifar-10-batches-py", bin_dir="cifar-10-batches-bin",
        py_tar="cifar-10-python.tar.gz", bin_tar="cifar-10-binary.tar.gz",
        py_train=["data_batch_%d" % i for i in range(1, 6)], py_test=["test_batch"],
        bin_train=["data_batch_%d.bin" % i for i in range(1, 6)], bin_test=["test_batch.bin"],
        py_meta="batches.meta", py_names=b"label_names", py_label=b"labels",
        bin_names="batches.meta.txt", label_bytes=1, num_classes=10,
        sha1="fab780a1e191a7eda0f345501ccd62d20f7ed891",
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        py_dir="cifar-100-python", bin_dir="cifar-100-binary",
        py_tar="cifar-100-python.tar.gz", bin_tar="cifar-100-binary.tar.gz",
        py_train=["train"], py_test=["test"], bin_train=["train.bin"], bin_test=["test.bin"],
        py_meta="meta", py_names=b"fine_label_names", py_label=b"fine_labels",
        bin_names="fine_label_names.txt", label_bytes=2, num_classes=100,
        sha1="a0bb982c76b83111308126cc779a992fa506b90b",
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
    ),
}


class _FolderSource:
    def __init__(self, folder):
        self.folder = folder

    def has(self, name):
        return os.path.isfile(os.path.join(self.folder, name))

    def read(self, name):
        with open(os.path.join(self.folder, name), "rb") as f:
            return f.read()

    def where(self, name):
        return os.path.join(self.folder, name)


class _TarSource:
    """Members of an official archive, read without extracting it."""

    def __init__(self, path, folder):
        self.path = path
        self.folder = folder
        try:
            self.tar = tarfile.open(path, "r:gz")
            self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DmlError("%s is not a readable .tar.gz archive (%s): delete it and put the "
                           "official file there" % (path, err)) from None

    def has(self, name):
        return "%s/%s" % (self.folder, name) in self.members

    def read(self, name):
        try:
            return self.tar.extractfile(self.members["%s/%s" % (self.folder, name)]).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise DmlError("%s is corrupt (%s): delete it and put the official file there"
                           % (self.path, err)) from None

    def where(self, name):
        return "%s:%s/%s" % (self.path, self.folder, name)


def _cifar_layouts(spec, root):
    """The four official layouts, in the order they are looked for."""
    return [
        ("python", spec["py_dir"], lambda: _FolderSource(os.path.join(root, spec["py_dir"]))),
        ("binary", spec["bin_dir"], lambda: _FolderSource(os.path.join(root, spec["bin_dir"]))),
        ("python", spec["py_tar"],
         lambda: _TarSource(os.path.join(root, spec["py_tar"]), spec["py_dir"])),
        ("binary", spec["bin_tar"],
         lambda: _TarSource(os.path.join(root, spec["bin_tar"]), spec["bin_dir"])),
    ]


def _find_cifar_source(name, root):
    spec = _CIFAR[name]
    for kind, entry, make in _cifar_layouts(spec, root):
        path = os.path.join(root, entry)
        if entry.endswith(".tar.gz") and os.path.isfile(path):
            return kind, make()
        if not entry.endswith(".tar.gz") and os.path.isdir(path):
            return kind, make()
    return None, None


# What an official CIFAR python file (a dict of bytes, lists and one numpy array) may import.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
}


class RefusedPickle(DmlError):
    """A data file whose pickle would import something the official files never do."""


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR files hold: a pickle that names any other global
    (``os.system``, ``builtins.eval``, ...) is refused before anything runs."""

    def find_class(self, module, name):
        if (module, name) in _CIFAR_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _ForbiddenGlobal("it imports %s.%s, which no CIFAR file does" % (module, name))


def load_cifar_pickle(raw, where):
    """A CIFAR python file's object, unpickled with :class:`_CifarUnpickler`."""
    import io

    try:
        return _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _ForbiddenGlobal as err:
        raise RefusedPickle("%s is refused: %s (nothing in it was run); replace it with the official "
                       "file" % (where, err)) from None
    except Exception as err:  # unpickling garbage raises almost anything
        raise DmlError("%s is not a CIFAR python batch (%s): replace it with the official file"
                       % (where, type(err).__name__)) from None


def _cifar_records(spec, kind, source, files):
    images, labels = [], []
    for fname in files:
        if not source.has(fname):
            raise DmlError("%s is missing: put the complete official CIFAR files there"
                           % source.where(fname))
        raw = source.read(fname)
        if kind == "python":
            batch = load_cifar_pickle(raw, source.where(fname))
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                lab = np.asarray(batch[spec["py_label"]], dtype=np.int64)
                data = data.reshape(-1, 3, 32, 32)
            except Exception as err:  # unpickling garbage raises almost anything
                raise DmlError("%s is not a CIFAR python batch (%s): replace it with the official "
                               "file" % (source.where(fname), type(err).__name__)) from None
        else:
            record = spec["label_bytes"] + 3072
            if len(raw) == 0 or len(raw) % record:
                raise DmlError("%s is not a CIFAR binary batch (%d bytes is not a multiple of %d): "
                               "replace it with the official file"
                               % (source.where(fname), len(raw), record))
            rows = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
            lab = rows[:, spec["label_bytes"] - 1].astype(np.int64)  # the fine label is the last
            data = rows[:, spec["label_bytes"]:].reshape(-1, 3, 32, 32)
        if len(lab) != len(data) or (len(lab) and (lab.min() < 0 or lab.max() >= spec["num_classes"])):
            raise DmlError("%s has labels outside 0..%d or a label count that does not match its "
                           "images: replace it with the official file"
                           % (source.where(fname), spec["num_classes"] - 1))
        images.append(data.transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def _cifar_class_names(spec, kind, source):
    try:
        if kind == "python" and source.has(spec["py_meta"]):
            meta = load_cifar_pickle(source.read(spec["py_meta"]), source.where(spec["py_meta"]))
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[spec["py_names"]]]
        elif kind == "binary" and source.has(spec["bin_names"]):
            names = [n.strip() for n in source.read(spec["bin_names"]).decode().splitlines()]
            names = [n for n in names if n]
        else:
            names = []
    except RefusedPickle:
        raise
    except Exception:  # names are cosmetic: fall back to numbers
        names = []
    if len(names) != spec["num_classes"]:
        names = [str(i) for i in range(spec["num_classes"])]
    return names


def load_cifar(name, root=None):
    spec = _CIFAR[name]
    root = root or default_data_root(name)
    kind, source = _find_cifar_source(name, root)
    if source is None and _mxnet_download("gluon/dataset/" + name, spec["bin_tar"], spec["sha1"], root):
        kind, source = _find_cifar_source(name, root)
    if source is None:
        looked = ", ".join([spec["py_dir"] + "/", spec["bin_dir"] + "/", spec["py_tar"], spec["bin_tar"]])
        raise DmlError("%s not found in %s (looked for %s): put one of them there or pass "
                       "`data_root`" % (name.upper().replace("CIFAR", "CIFAR-"), root, looked))
    train = _cifar_records(spec, kind, source, spec["py_train" if kind == "python" else "bin_train"])
    test = _cifar_records(spec, kind, source, spec["py_test" if kind == "python" else "bin_test"])
    return _splits(name, ImageArrayDataset(*train), ImageArrayDataset(*test),
                   _cifar_class_names(spec, kind, source), spec["mean"], spec["std"],
                   crop_pad=4)


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST: idx files, plain or gzipped

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_SHA1 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d",
        "train-labels-idx1-ubyte.gz": "2a80914081dc54586dbdf242f9805a6b8d2a15fc",
        "t10k-images-idx3-ubyte.gz": "c3a25af1f52dad7f726cce8cacb138654b760d48",
        "t10k-labels-idx1-ubyte.gz": "763e7fa3757d93b0cdec073cef058b2004252c17",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "0cf37b0d40ed5169c6b3aba31069a9770ac9043d",
        "train-labels-idx1-ubyte.gz": "236021d52f1e40852b06a4c3008d8de8aef1e40b",
        "t10k-images-idx3-ubyte.gz": "626ed6a7c06dd17c0eec72fa3be1740f146a2863",
        "t10k-labels-idx1-ubyte.gz": "17f9ab60e7257a1620f4ad76bbbaf857c3920701",
    },
}
_MNIST_STATS = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]


def _find_idx(root, base_name):
    for candidate in (base_name, base_name + ".gz"):
        if os.path.isfile(os.path.join(root, candidate)):
            return os.path.join(root, candidate)
    return None


def _read_idx(path, expected_magic):
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
        magic = struct.unpack(">i", raw[:4])[0]
        if magic != expected_magic:
            raise ValueError("magic number %d, expected %d" % (magic, expected_magic))
        ndim = magic & 0xFF
        dims = struct.unpack(">" + "i" * ndim, raw[4:4 + 4 * ndim])
        data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
        return data.reshape(dims)
    except (OSError, ValueError, struct.error, EOFError) as err:
        raise DmlError("%s is not an idx file (%s): replace it with the official file"
                       % (path, err)) from None


def load_mnist(name, root=None):
    root = root or default_data_root(name)
    wanted = [f for pair in _MNIST_FILES.values() for f in pair]
    if any(_find_idx(root, f) is None for f in wanted):
        for fname, sha1 in _MNIST_SHA1[name].items():
            if _find_idx(root, fname[:-3]) is None and not _mxnet_download(
                    "gluon/dataset/" + name, fname, sha1, root):
                break
    missing = [f for f in wanted if _find_idx(root, f) is None]
    if missing:
        raise DmlError("%s files not found in %s (looked for %s, plain or .gz): put them there or "
                       "pass `data_root`" % (name, root, ", ".join(missing)))
    splits = {}
    for split, (img_name, lab_name) in _MNIST_FILES.items():
        images = _read_idx(_find_idx(root, img_name), 2051)
        labels = _read_idx(_find_idx(root, lab_name), 2049).astype(np.int32)
        if images.ndim != 3 or len(images) != len(labels) or (len(labels) and labels.max() > 9):
            raise DmlError("%s and %s in %s do not match (%d images, %d labels): replace them with "
                           "the official files" % (img_name, lab_name, root, len(images), len(labels)))
        padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))  # 28x28 -> 32x32, the backbone's input
        splits[split] = ImageArrayDataset(np.repeat(padded[..., None], 3, axis=3), labels)
    mean, std = _MNIST_STATS[name]
    return _splits(name, splits["train"], splits["test"],
                   FASHION_CLASSES if name == "fashion-mnist" else [str(i) for i in range(10)],
                   (mean,) * 3, (std,) * 3,
                   crop_pad=2)


# --------------------------------------------------------------------------------------------
# image folders: ROOT/train/<class>/<image>, ROOT/test/<class>/<image>


def image_extensions():
    """The file endings Pillow can read (``.png``, ``.jpg``, ...), lower case."""
    from PIL import Image

    Image.init()
    return {ext.lower() for ext in Image.registered_extensions()}


def walk_image_files(folder):
    """``(paths, skipped)``: every image file below ``folder`` (recursively, by Pillow's file
    endings; folders walked in sorted order, files sorted within each; hidden files and folders
    left out, links not followed) and the number of other files."""
    extensions = image_extensions()
    paths, skipped = [], 0
    for here, dirs, files in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in extensions:
                paths.append(os.path.join(here, name))
            else:
                skipped += 1
    return paths, skipped


def _list_class_tree(split_dir):
    """``(classes, items, skipped)``: the class folders of ``split_dir`` (first level, sorted),
    ``(path, class)`` for every image below each one (recursively: a class may keep its images
    in subfolders), and the number of other files (``Thumbs.db``, ``labels.csv``, ...), which
    are skipped. A class folder without a single image is a :class:`dml.DmlError`."""
    classes = sorted(d for d in os.listdir(split_dir)
                     if os.path.isdir(os.path.join(split_dir, d)) and not d.startswith("."))
    items, skipped = [], 0
    for name in classes:
        class_dir = os.path.join(split_dir, name)
        paths, others = walk_image_files(class_dir)
        skipped += others
        found = [(path, name) for path in paths]
        if not found:
            raise DmlError("class folder %s holds no image (looked for %s files, also in "
                           "subfolders): add images or remove the folder"
                           % (class_dir, "/".join(sorted(e.lstrip(".") for e in (
                               ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif")))))
        items.extend(found)
    return classes, items, skipped


def load_folder(root, image_size=32):
    if not root:
        raise DmlError("dataset=folder needs data_root=ROOT holding ROOT/train/<class>/<image> "
                       "and ROOT/test/<class>/<image>")
    splits = {}
    for split in ("train", "test"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            raise DmlError("%s is not a folder: dataset=folder reads ROOT/train/<class>/<image> "
                           "and ROOT/test/<class>/<image>" % split_dir)
        if not any(os.path.isdir(os.path.join(split_dir, d)) and not d.startswith(".")
                   for d in os.listdir(split_dir)):
            raise DmlError("%s holds no class folders (expected %s/<class>/<image>)"
                           % (split_dir, split_dir))
        classes, items, skipped = _list_class_tree(split_dir)
        if skipped:
            log.warning("%s: skipped %d files that are not images (by their extension)",
                        split_dir, skipped)
        splits[split] = (classes, items)
    class_names = sorted(set(splits["train"][0]) | set(splits["test"][0]))
    index = {name: i for i, name in enumerate(class_names)}
    datasets = {}
    for split, (_, items) in splits.items():
        paths = [p for p, _ in items]
        check_images(paths, image_size)
        datasets[split] = ImageFileDataset(paths, [index[c] for _, c in items], image_size)
    train_classes = sorted({index[c] for _, c in splits["train"][1]})
    eval_classes = sorted({index[c] for _, c in splits["test"][1]})
    every = list(range(len(class_names)))
    return _splits("folder", datasets["train"], datasets["test"], class_names, IMAGENET_MEAN,
                   IMAGENET_STD, crop_pad=max(1, image_size // 8),
                   train_classes=None if train_classes == every else train_classes,
                   eval_classes=None if eval_classes == every else eval_classes)


def load_dataset(name, data_root=None, image_size=32):
    """Load a dataset by its ``--dataset`` name; raises :class:`dml.DmlError` on user errors."""
    if name == "digits":
        return load_digits(image_size=image_size)
    if name in _CIFAR:
        return load_cifar(name, data_root)
    if name in _MNIST_SHA1:
        return load_mnist(name, data_root)
    if name == "folder":
        return load_folder(data_root, image_size=image_size)
    if name == "glyphs":
        return load_glyphs(data_root, image_size=image_size)
    if name in BENCHMARKS:
        return load_benchmark(name, data_root, image_size=image_size)
    raise DmlError("unknown dataset %r: choose one of %s" % (name, ", ".join(DATASETS)))
