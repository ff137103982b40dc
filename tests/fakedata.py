"""Tiny datasets written in the official on-disk formats (the real ones cannot be downloaded here)."""
import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def _images(rng, n, labels):
    """Images whose mean brightness depends on the class, so a tiny run has something to learn."""
    base = (labels[:, None, None, None] * 23 % 256).astype(np.int64)
    noise = rng.integers(0, 40, size=(n, 3, 32, 32))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def cifar_arrays(num_classes, n_train, n_test, seed=0):
    rng = np.random.default_rng(seed)
    y_train = np.arange(n_train) % num_classes
    y_test = np.arange(n_test) % num_classes
    return (_images(rng, n_train, y_train), y_train), (_images(rng, n_test, y_test), y_test)


def write_cifar(root, name="cifar10", fmt="python", archive=False, n_train=150, n_test=50, seed=0):
    """Write CIFAR-10/100 in the official python-pickle or binary layout (optionally as the
    official .tar.gz). Returns ((train images NCHW, labels), (test images, labels))."""
    num_classes = 10 if name == "cifar10" else 100
    (x_tr, y_tr), (x_te, y_te) = cifar_arrays(num_classes, n_train, n_test, seed)
    files = {}
    if name == "cifar10":
        folder = "cifar-10-batches-py" if fmt == "python" else "cifar-10-batches-bin"
        chunks = np.array_split(np.arange(n_train), 5)
        splits = [("data_batch_%d" % (i + 1), x_tr[c], y_tr[c]) for i, c in enumerate(chunks)]
        splits.append(("test_batch", x_te, y_te))
        for fname, x, y in splits:
            if fmt == "python":
                files[fname] = pickle.dumps({b"batch_label": fname.encode(), b"labels": y.tolist(),
                                             b"data": x.reshape(len(x), -1),
                                             b"filenames": [b"x.png"] * len(x)})
            else:
                rows = np.concatenate([y[:, None].astype(np.uint8), x.reshape(len(x), -1)], axis=1)
                files[fname + ".bin"] = rows.tobytes()
        if fmt == "python":
            files["batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in CIFAR10_NAMES],
                                                  b"num_vis": 3072, b"num_cases_per_batch": 10000})
        else:
            files["batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n").encode()
    else:
        folder = "cifar-100-python" if fmt == "python" else "cifar-100-binary"
        for fname, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
            coarse = y // 5
            if fmt == "python":
                files[fname] = pickle.dumps({b"filenames": [b"x.png"] * len(x), b"fine_labels": y.tolist(),
                                             b"coarse_labels": coarse.tolist(),
                                             b"data": x.reshape(len(x), -1)})
            else:
                rows = np.concatenate([coarse[:, None].astype(np.uint8), y[:, None].astype(np.uint8),
                                       x.reshape(len(x), -1)], axis=1)
                files[fname + ".bin"] = rows.tobytes()
        names = ["class_%d" % i for i in range(100)]
        if fmt == "python":
            files["meta"] = pickle.dumps({b"fine_label_names": [n.encode() for n in names],
                                          b"coarse_label_names": [b"c"] * 20})
        else:
            files["fine_label_names.txt"] = ("\n".join(names) + "\n").encode()
    os.makedirs(root, exist_ok=True)
    if archive:
        tar_name = {("cifar10", "python"): "cifar-10-python.tar.gz",
                    ("cifar10", "binary"): "cifar-10-binary.tar.gz",
                    ("cifar100", "python"): "cifar-100-python.tar.gz",
                    ("cifar100", "binary"): "cifar-100-binary.tar.gz"}[(name, fmt)]
        with tarfile.open(os.path.join(root, tar_name), "w:gz") as tar:
            for fname, data in files.items():
                info = tarfile.TarInfo("%s/%s" % (folder, fname))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        for fname, data in files.items():
            with open(os.path.join(root, folder, fname), "wb") as f:
                f.write(data)
    return (x_tr, y_tr), (x_te, y_te)


def write_idx(root, n_train=60, n_test=20, gz=True, seed=0):
    """MNIST-style idx files (28x28 grayscale)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        for kind, magic, arr in (("images-idx3-ubyte", 2051, x), ("labels-idx1-ubyte", 2049, y)):
            raw = struct.pack(">i", magic) + struct.pack(">" + "i" * arr.ndim, *arr.shape) + arr.tobytes()
            path = os.path.join(root, "%s-%s" % (prefix, kind))
            if gz:
                with gzip.open(path + ".gz", "wb") as f:
                    f.write(raw)
            else:
                with open(path, "wb") as f:
                    f.write(raw)
        out[prefix] = (x, y)
    return out


def write_image_folder(root, classes=("cat", "dog", "fox", "owl"), per_class=(8, 4), size=(40, 30),
                       seed=0):
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png, some grayscale, some RGB."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for ci, cls in enumerate(classes):
            d = os.path.join(root, split, cls)
            os.makedirs(d, exist_ok=True)
            for i in range(count):
                level = 30 + 50 * ci
                if i % 2:
                    arr = np.clip(level + rng.integers(0, 30, size=(size[1], size[0])), 0, 255)
                    img = Image.fromarray(arr.astype(np.uint8), mode="L")
                else:
                    arr = np.clip(level + rng.integers(0, 30, size=(size[1], size[0], 3)), 0, 255)
                    img = Image.fromarray(arr.astype(np.uint8), mode="RGB")
                img.save(os.path.join(d, "%s_%d.%s" % (cls, i, "png" if i % 3 else "jpg")))
    return root
