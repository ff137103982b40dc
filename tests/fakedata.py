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


def _photo(path, class_index, rng, size):
    """A small RGB photo whose colour depends on the class (JPEG or PNG by the file name)."""
    from PIL import Image

    base = np.array([(37 * class_index) % 256, (91 * class_index) % 256, (151 * class_index) % 256])
    arr = np.clip(base[None, None, :] + rng.integers(-25, 25, size=(size[1], size[0], 3)), 0, 255)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="RGB").save(path)


def write_cub200(root, classes=(1, 2, 3, 4, 101, 102, 103, 104), per_class=5, size=(48, 36),
                 official_folder=True, seed=0):
    """CUB-200-2011's layout: ``CUB_200_2011/{images.txt, image_class_labels.txt, classes.txt,
    images/<class folder>/<image>.jpg}`` (classes 1-100 train, 101-200 test). Returns the folder
    holding the files."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "CUB_200_2011") if official_folder else root
    images, labels, names = [], [], []
    image_id = 0
    for ci, cls in enumerate(classes):
        class_dir = "%03d.Bird_%d" % (cls, cls)
        names.append("%d %s" % (cls, class_dir))
        for i in range(per_class):
            image_id += 1
            rel = "%s/Bird_%d_%04d.jpg" % (class_dir, cls, i)
            _photo(os.path.join(folder, "images", rel), ci, rng, size)
            images.append("%d %s" % (image_id, rel))
            labels.append("%d %d" % (image_id, cls))
    for fname, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                         ("classes.txt", names)):
        with open(os.path.join(folder, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def write_cars196(root, classes=(1, 2, 3, 4, 99, 100, 101, 102), per_class=5, size=(50, 30),
                  seed=0, annotations=True):
    """Stanford Cars' layout: ``cars_annos.mat`` (``annotations`` with ``relative_im_path``,
    bounding boxes, ``class`` and ``test``; ``class_names``) and ``car_ims/*.jpg``."""
    import scipy.io

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
             ("bbox_y2", "O"), ("class", "O"), ("test", "O")]
    rows = []
    number = 0
    for ci, cls in enumerate(classes):
        for i in range(per_class):
            number += 1
            rel = "car_ims/%06d.jpg" % number
            _photo(os.path.join(root, rel), ci, rng, size)
            rows.append((rel, 1, 1, size[0], size[1], cls, i % 2))
    record = np.array(rows, dtype=dtype).reshape(1, -1)
    names = np.array(["Car Model %d" % c for c in range(1, 197)], dtype=object).reshape(1, -1)
    content = {"class_names": names}
    if annotations:
        content["annotations"] = record
    scipy.io.savemat(os.path.join(root, "cars_annos.mat"), content)
    return root


def write_sop(root, train_classes=(1, 2, 3, 4), test_classes=(11319, 11320, 11321, 11322),
              per_class=4, size=(40, 40), seed=0):
    """Stanford Online Products' layout: ``Stanford_Online_Products/{Ebay_train.txt,
    Ebay_test.txt, <super class>_final/<product>_<n>.JPG}``."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "Stanford_Online_Products")
    image_id = 0
    for fname, classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for ci, cls in enumerate(classes):
            superclass = ("bicycle", "chair")[ci % 2]
            for i in range(per_class):
                image_id += 1
                rel = "%s_final/%d_%d.JPG" % (superclass, 100000 + cls, i)
                _photo(os.path.join(folder, rel), cls % 50, rng, size)
                lines.append("%d %d %d %s" % (image_id, cls, 1 + ci % 2, rel))
        with open(os.path.join(folder, fname), "w") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def write_inshop(root, train_items=4, test_items=4, per_item=(4, 2, 3), size=(32, 48), seed=0):
    """In-Shop's layout: ``In-shop Clothes Retrieval Benchmark/Eval/list_eval_partition.txt`` and
    ``.../Img/img/WOMEN/<category>/<item>/<n>_front.jpg``; ``per_item``: images of a training
    item, and the query and gallery images of a test item."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "In-shop Clothes Retrieval Benchmark")
    rows = []
    for n in range(train_items + test_items):
        item = "id_%08d" % (n + 1)
        statuses = (["train"] * per_item[0] if n < train_items
                    else ["query"] * per_item[1] + ["gallery"] * per_item[2])
        for i, status in enumerate(statuses):
            rel = "img/WOMEN/Dresses/%s/%02d_%d_front.jpg" % (item, i + 1, i)
            _photo(os.path.join(folder, "Img", rel), n, rng, size)
            rows.append("%s %s %s" % (rel, item, status))
    os.makedirs(os.path.join(folder, "Eval"), exist_ok=True)
    with open(os.path.join(folder, "Eval", "list_eval_partition.txt"), "w") as f:
        f.write("%d\nimage_name item_id evaluation_status\n" % len(rows))
        f.write("\n".join(rows) + "\n")
    return folder
