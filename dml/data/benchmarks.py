"""The four zero-shot retrieval benchmarks, read in their official layouts, with the split every
metric-learning paper uses (training and test classes are disjoint):

- ``cub200`` CUB-200-2011: ``images.txt`` (``<id> <path>``), ``image_class_labels.txt``
  (``<id> <class 1-200>``), ``images/<path>``, optionally ``classes.txt`` (the names). Classes
  1-100 train, 101-200 test.
- ``cars196`` Stanford Cars: ``cars_annos.mat`` (``annotations``: ``relative_im_path``,
  ``class`` 1-196; ``class_names``) and ``car_ims/``. Classes 1-98 train, 99-196 test (the
  file's own train/test flag is not the zero-shot split and is ignored).
- ``sop`` Stanford Online Products: ``Ebay_train.txt`` and ``Ebay_test.txt`` (a header, then
  ``image_id class_id super_class_id path``) and the images under the same folder: 11,318
  training classes, 11,316 test classes.
- ``inshop`` In-Shop Clothes Retrieval: ``list_eval_partition.txt`` (a count, a header, then
  ``image_name item_id train|query|gallery``) and ``img/``: the training items, and for the
  test the queries retrieved against the gallery.

``--data-root`` is the folder holding those files, or its parent when it holds the official
folder (``CUB_200_2011/``, ``Stanford_Online_Products/``, ``In-shop Clothes Retrieval
Benchmark/`` with ``Eval/`` and ``Img/``). Every image is decoded in full when the dataset
loads, and remembered: a later load decodes only the files that changed
(:mod:`dml.data.checks`). A missing or malformed file is a :class:`dml.DmlError` naming the file
and what belongs there. Nothing is downloaded: the benchmarks' licences ask users to fetch them
themselves.
"""
import os

import numpy as np

from ..errors import DmlError
from .checks import check_images
from .base import IMAGENET_MEAN, IMAGENET_STD, ImageFileDataset, _splits, default_data_root

BENCHMARKS = ("cub200", "cars196", "sop", "inshop")
MAX_LIST_BYTES = 64 << 20  # a list file larger than this is not one of the official ones
_OFFICIAL = {
    "cub200": ("CUB_200_2011",),
    "cars196": ("stanford_cars", "cars196"),
    "sop": ("Stanford_Online_Products",),
    "inshop": ("In-shop Clothes Retrieval Benchmark", "InShop"),
}
_WHERE = {
    "cub200": "CUB-200-2011 (images.txt, image_class_labels.txt and images/)",
    "cars196": "Stanford Cars (cars_annos.mat and car_ims/)",
    "sop": "Stanford Online Products (Ebay_train.txt, Ebay_test.txt and the image folders)",
    "inshop": "In-Shop (Eval/list_eval_partition.txt and Img/img/)",
}


def _read_text(path, what):
    if not os.path.isfile(path):
        raise DmlError("%s is missing: %s belongs there" % (path, what))
    if os.path.getsize(path) > MAX_LIST_BYTES:
        raise DmlError("%s is %d MB, larger than any official list file (%d MB): replace it with "
                       "the official file" % (path, os.path.getsize(path) >> 20,
                                              MAX_LIST_BYTES >> 20))
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise DmlError("cannot read %s (%s): replace it with the official file"
                       % (path, getattr(err, "strerror", None) or err)) from None


def _rows(path, what, columns, skip=0):
    """The non-blank lines of ``path`` after ``skip`` header lines, each split on whitespace into
    at least ``columns`` fields (the last keeps any spaces): ``(line number, fields)``."""
    rows = []
    for number, line in enumerate(_read_text(path, what)[skip:], skip + 1):
        if not line.strip():
            continue
        fields = line.split(None, columns - 1)
        if len(fields) < columns:
            raise DmlError("%s line %d is %r, not %d fields: replace it with the official file"
                           % (path, number, line[:80], columns))
        rows.append((number, fields))
    return rows


def _integer(path, number, text, low=None, high=None, what="a number"):
    try:
        value = int(text)
    except ValueError:
        raise DmlError("%s line %d: %r is not %s: replace it with the official file"
                       % (path, number, text, what)) from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise DmlError("%s line %d: %s %d is outside %d-%d: replace it with the official file"
                       % (path, number, what, value, low, high))
    return value


def _inside(path, number, rel, root):
    """``root/rel``, refused unless ``rel`` is a relative path that stays inside ``root`` (a
    list file naming ``../../etc/hostname`` or ``/etc/passwd`` is not the official one)."""
    rel = rel.strip()
    normal = os.path.normpath(rel)
    if not rel or os.path.isabs(rel) or normal == ".." or normal.startswith(".." + os.sep):
        raise DmlError("%s line %d: %r leads outside %s: replace it with the official file"
                       % (path, number, rel[:80], root))
    return os.path.join(root, normal)


def _unique(path, number, key, seen, what):
    if key in seen:
        raise DmlError("%s line %d: %s %s is listed twice (also on line %d): replace it with "
                       "the official file" % (path, number, what, key, seen[key]))
    seen[key] = number


def find_root(name, root):
    """The folder holding ``name``'s files: ``root`` itself, or the official folder inside it."""
    for candidate in (root,) + tuple(os.path.join(root, sub) for sub in _OFFICIAL[name]):
        if os.path.isdir(candidate) and _marker(name, candidate) is not None:
            return candidate
    return root


def _marker(name, folder):
    """The file that shows ``folder`` holds ``name`` (None when it does not)."""
    for rel in {"cub200": ["images.txt"], "cars196": ["cars_annos.mat"],
                "sop": ["Ebay_train.txt"],
                "inshop": ["list_eval_partition.txt", os.path.join("Eval",
                                                                   "list_eval_partition.txt")]}[name]:
        if os.path.isfile(os.path.join(folder, rel)):
            return os.path.join(folder, rel)
    return None


def _cub200(root):
    images = os.path.join(root, "images.txt")
    labels_file = os.path.join(root, "image_class_labels.txt")
    paths, lines = {}, {}
    for number, (image_id, rel) in _rows(images, "CUB-200-2011's images.txt", 2):
        key = _integer(images, number, image_id, 1, None, "an image id")
        _unique(images, number, key, lines, "image id")
        paths[key] = _inside(images, number, rel, os.path.join(root, "images"))
    labels, lines = {}, {}
    for number, (image_id, label) in _rows(labels_file, "CUB-200-2011's image_class_labels.txt",
                                           2):
        key = _integer(labels_file, number, image_id, 1, None, "an image id")
        _unique(labels_file, number, key, lines, "image id")
        labels[key] = _integer(labels_file, number, label.strip(), 1, 200, "class")
    if set(paths) != set(labels):
        missing = sorted(set(paths) ^ set(labels))
        raise DmlError("%s and %s list different images (%d ids in one only, first %d): the "
                       "files are truncated or mixed; replace them with the official files"
                       % (images, labels_file, len(missing), missing[0]))
    names = {c: "%03d" % c for c in range(1, 201)}
    classes_file = os.path.join(root, "classes.txt")
    if os.path.isfile(classes_file):
        for number, (class_id, class_name) in _rows(classes_file, "CUB-200-2011's classes.txt",
                                                    2):
            names[_integer(classes_file, number, class_id, 1, 200, "class")] = class_name.strip()
    items = [(paths[i], labels[i]) for i in sorted(paths)]
    return items, names, lambda c: c <= 100


def _cars196(root):
    import scipy.io

    path = os.path.join(root, "cars_annos.mat")
    if not os.path.isfile(path):
        raise DmlError("%s is missing: Stanford Cars' cars_annos.mat belongs there" % path)
    if os.path.getsize(path) > MAX_LIST_BYTES:
        raise DmlError("%s is larger than the official cars_annos.mat: replace it" % path)
    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=True)
    except Exception as err:  # scipy raises ValueError, TypeError, NotImplementedError, ...
        raise DmlError("%s is not a MATLAB file scipy can read (%s): replace it with the official "
                       "cars_annos.mat" % (path, str(err).splitlines()[0][:120])) from None
    annotations = mat.get("annotations")
    fields = getattr(getattr(annotations, "dtype", None), "names", None) or ()
    if annotations is None or "relative_im_path" not in fields or "class" not in fields:
        raise DmlError("%s holds no annotations with relative_im_path and class: replace it with "
                       "the official cars_annos.mat" % path)
    annotations = np.atleast_1d(annotations)
    items = []
    for number, record in enumerate(annotations, 1):
        rel = str(record["relative_im_path"]).strip()
        label = _integer(path, number, str(np.asarray(record["class"]).reshape(-1)[0]), 1, 196,
                         "class")
        items.append((_inside(path, number, rel, root), label))
    names = {c: "%03d" % c for c in range(1, 197)}
    raw_names = np.atleast_1d(mat.get("class_names", []))
    if len(raw_names) == 196:
        names = {c: str(n).strip() or names[c] for c, n in zip(range(1, 197), raw_names)}
    return items, names, lambda c: c <= 98


def _sop(root):
    items = {"train": [], "test": []}
    for split, fname in (("train", "Ebay_train.txt"), ("test", "Ebay_test.txt")):
        path = os.path.join(root, fname)
        first = next((line for line in _read_text(path, "Stanford Online Products' %s" % fname)
                      if line.strip()), "")
        if first.split()[:1] != ["image_id"]:
            raise DmlError("%s does not start with its header line (image_id class_id "
                           "super_class_id path) but with %r: replace it with the official file"
                           % (path, first[:80]))
        for number, fields in _rows(path, "Stanford Online Products' %s" % fname, 4, skip=1):
            label = _integer(path, number, fields[1], 1, 22634, "class_id")
            items[split].append((_inside(path, number, fields[3], root), label))
    train_labels = {c for _, c in items["train"]}
    shared = train_labels & {c for _, c in items["test"]}
    if shared:
        raise DmlError("Ebay_train.txt and Ebay_test.txt in %s share %d classes (first %d): the "
                       "official split is class-disjoint; replace them with the official files"
                       % (root, len(shared), min(shared)))
    return items


def _inshop(root):
    path = _marker("inshop", root) or os.path.join(root, "list_eval_partition.txt")
    what = "In-Shop's list_eval_partition.txt (from Eval/)"
    rows = _rows(path, what, 3, skip=2)
    count = next((line for line in _read_text(path, what) if line.strip()), "").strip()
    if not count.isdigit() or int(count) != len(rows):
        raise DmlError("%s says it lists %s images on its first line, but lists %d: the file is "
                       "truncated or edited; replace it with the official file"
                       % (path, count[:20] if count.isdigit() else repr(count[:40]), len(rows)))
    base = os.path.dirname(os.path.dirname(path)) if os.path.basename(
        os.path.dirname(path)) == "Eval" else os.path.dirname(path)
    if os.path.isdir(os.path.join(base, "Img")):
        image_root = os.path.join(base, "Img")  # the official layout: Img/img/<...>
    elif os.path.isdir(os.path.join(base, "img")):
        image_root = base
    else:
        raise DmlError("%s holds no Img/ folder (In-Shop's images, Img/img/<...>, belong "
                       "there)" % base)
    items = {"train": [], "query": [], "gallery": []}
    seen = {}
    for number, (image, item, status) in rows:
        status = status.strip()
        if status not in items:
            raise DmlError("%s line %d: evaluation status %r is not train, query or gallery: "
                           "replace it with the official file" % (path, number, status))
        _unique(path, number, image, seen, "image")
        items[status].append((_inside(path, number, image, image_root), item))
    for status, found in items.items():
        if not found:
            raise DmlError("%s lists no %s image: replace it with the official file"
                           % (path, status))
    return items


def load_benchmark(name, root=None, image_size=224):
    """The benchmark ``name`` (one of :data:`BENCHMARKS`) from ``root`` (default
    ``~/.mxnet/datasets/<name>``) as :class:`dml.data.DatasetSplits`: images read lazily and
    evaluated resized to 256/224 of ``image_size`` and centre-cropped; trained with a random
    resized crop and a flip; ImageNet's normalization."""
    root = os.path.abspath(os.path.expanduser(root or default_data_root(name)))
    if not os.path.isdir(root):
        raise DmlError("%s not found: no folder at %s; put %s there or pass `data_root` "
                       "(the README says where each file goes)" % (name, root, _WHERE[name]))
    folder = find_root(name, root)
    if _marker(name, folder) is None:
        raise DmlError("%s holds no %s: put %s there or pass `data_root`" % (
            root, {"cub200": "images.txt", "cars196": "cars_annos.mat", "sop": "Ebay_train.txt",
                   "inshop": "list_eval_partition.txt"}[name], _WHERE[name]))
    gallery = None
    if name in ("cub200", "cars196"):
        items, names, is_train = (_cub200 if name == "cub200" else _cars196)(folder)
        used = sorted({c for _, c in items})
        class_ids = used
        train_items = [(p, c) for p, c in items if is_train(c)]
        test_items = [(p, c) for p, c in items if not is_train(c)]
        class_names = [names[c] for c in class_ids]
    else:
        split = _sop(folder) if name == "sop" else _inshop(folder)
        train_items = split["train"]
        test_items = split["test"] if name == "sop" else split["query"]
        gallery_items = split.get("gallery")
        every = [c for _, c in train_items + test_items + (gallery_items or [])]
        class_ids = sorted(set(every))
        class_names = [str(c) for c in class_ids]
        if gallery_items is not None:
            gallery = gallery_items
    for what, found in (("training", train_items), ("test", test_items)):
        if len({c for _, c in found}) < 2:
            raise DmlError("%s in %s: the %s split holds fewer than 2 classes; the files are "
                           "truncated: replace them with the official files" % (name, folder, what))
    index = {c: i for i, c in enumerate(class_ids)}
    every_path = [p for p, _ in train_items + test_items + (gallery or [])]
    check_images(every_path, image_size, "center_crop",
                 missing="%s is missing: the benchmark's image belongs there")

    def dataset(found):
        return ImageFileDataset([p for p, _ in found], [index[c] for _, c in found], image_size,
                                resize="center_crop")

    train, test = dataset(train_items), dataset(test_items)
    gallery_set = dataset(gallery) if gallery is not None else None
    if gallery_set is not None:
        missing = sorted({class_names[c] for c in np.unique(test.labels)}
                         - {class_names[c] for c in np.unique(gallery_set.labels)})
        if missing:
            raise DmlError("%s in %s: %d query items have no gallery image (first %s): the "
                           "files are truncated; replace them with the official files"
                           % (name, folder, len(missing), missing[0]))
    train_classes = sorted(int(c) for c in np.unique(train.labels))
    eval_classes = sorted(int(c) for c in np.unique(test.labels))
    return _splits(name, train, test, class_names, IMAGENET_MEAN, IMAGENET_STD,
                   resize="center_crop",
                   train_classes=train_classes, eval_classes=eval_classes, gallery=gallery_set)
