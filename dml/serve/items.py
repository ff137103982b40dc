"""The images a serving command takes (folders, image files, list files, a run's dataset split)
as :class:`Item` rows, their embeddings, and the files they are written to.
"""
import numpy as np

from ..errors import DmlError


class Item:
    """One image of a collection: ``source`` (a file path, or ``dataset:split:index`` for an
    image of a run's own dataset), its ``label`` (a class name, "" when unknown) and, for dataset
    images, the decoded ``image``."""

    __slots__ = ("source", "label", "image")

    def __init__(self, source, label="", image=None):
        self.source, self.label, self.image = source, label, image


def _walk_images(folder):
    """``(path, first-level folder or "")`` for every image file under ``folder`` (see
    :func:`dml.data.datasets.walk_image_files`) and the number of other files."""
    import os

    from ..data.datasets import walk_image_files

    paths, skipped = walk_image_files(folder)
    found = []
    for path in paths:
        rel = os.path.relpath(os.path.dirname(path), folder)
        found.append((path, "" if rel == "." else rel.split(os.sep)[0]))
    return found, skipped


def _read_list_file(path):
    """A list file: one image path per line (relative paths are relative to the list file), and
    optionally a tab or a comma and its label; blank lines and ``#`` comments are skipped."""
    import os

    base = os.path.dirname(os.path.abspath(path))
    items = []
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not a path
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DmlError("cannot read the list file %s (%s)" % (path, getattr(err, "strerror", None)
                                                              or err)) from None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sep = "\t" if "\t" in line else ("," if "," in line else None)
        name, label = (line.split(sep, 1) + [""])[:2] if sep else (line, "")
        name = os.path.expanduser(name.strip())
        items.append(Item(name if os.path.isabs(name) else os.path.join(base, name),
                          label.strip()))
    if not items:
        raise DmlError("the list file %s names no image (one path per line, optionally a tab "
                       "and its label)" % path)
    return items


def collect(inputs, run=None, dataset_split=None):
    """The images to embed, as :class:`Item` s: ``inputs`` are folders (recursive; the label is
    the first folder level below the folder, when there is one), image files, or list files
    (``.txt``/``.lst``/``.csv``: see :func:`_read_list_file`); or ``dataset_split`` ("train",
    "test", or In-Shop's "gallery") of ``run``'s own dataset. A folder without images, or nothing
    at all, is a :class:`DmlError`."""
    import logging
    import os

    from ..data.datasets import image_extensions

    if dataset_split is not None:
        return _dataset_items(run, dataset_split)
    items = []
    for path in inputs:
        if os.path.isdir(path):
            found, skipped = _walk_images(path)
            if not found:
                raise DmlError("%s holds no image files (looked recursively for %s files)" % (
                    path, "/".join(sorted({e.lstrip(".") for e in (
                        ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif")}))))
            if skipped:
                logging.getLogger("dml").warning(
                    "%s: skipped %d files that are not images (by their extension)", path, skipped)
            items.extend(Item(p, label) for p, label in found)
        elif os.path.isfile(path):
            ext = os.path.splitext(path)[1].lower()
            if ext in (".txt", ".lst", ".csv") and ext not in image_extensions():
                items.extend(_read_list_file(path))
            else:
                items.append(Item(path))
        elif os.path.exists(path):
            raise DmlError("%s is not a regular file (a pipe or a device): give image files, "
                           "folders or list files" % path)
        else:
            raise DmlError("no file or folder at %s" % path)
    if not items:
        raise DmlError("no images given")
    return items


def _dataset_items(run, split):
    from ..data import load_dataset

    cfg = run.config
    splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    if split == "gallery" and splits.gallery is None:
        raise DmlError("%s has no gallery (In-Shop has one): choose train or test" % cfg.dataset)
    dataset = {"train": splits.train, "test": splits.test, "gallery": splits.gallery}[split]
    names = splits.class_names
    paths = getattr(dataset, "paths", None)
    items = []
    for i in range(len(dataset)):
        image, label = dataset[i]
        source = paths[i] if paths is not None else "%s:%s:%d" % (cfg.dataset, split, i)
        items.append(Item(source, names[int(label)], None if paths is not None else image))
    return items


def embed_items(run, items, batch_size=256, strict=False, progress=True):
    """Embed ``items`` with ``run`` (a :class:`LoadedRun`) -> ``(embeddings, kept items,
    problems)``: a file that cannot be decoded is skipped with a warning naming it (``problems``
    lists ``(source, reason)``), or with ``strict`` is a :class:`DmlError` before anything is
    embedded further."""
    import logging

    import mxnet as mx
    from tqdm import tqdm

    from ..data import normalize_batch

    log = logging.getLogger("dml")
    kept, problems, out = [], [], []
    with tqdm(total=len(items), desc="embedding", unit="image", disable=None if progress else True,
              leave=False, mininterval=1.0) as bar:
        for start in range(0, len(items), batch_size):
            images = []
            for item in items[start:start + batch_size]:
                try:
                    images.append(run._image(item.image if item.image is not None
                                             else item.source))
                    kept.append(item)
                except DmlError as err:
                    if strict:
                        raise DmlError("%s (`strict`: no bad file is skipped)" % err) from None
                    problems.append((item.source, str(err)))
                    log.warning("skipped: %s", err)
            bar.update(min(batch_size, len(items) - start))
            if images:
                x = mx.nd.array(normalize_batch(np.stack(images), run.mean, run.std),
                                ctx=run.ctx)
                out.append(run.net(x).asnumpy())
    if not kept:
        raise DmlError("none of the %d images could be decoded" % len(items))
    return np.concatenate(out).astype(np.float32), kept, problems


def write_embeddings(path, embeddings, items):
    """``path`` (``.npy``) and beside it ``<stem>.csv`` (index, path, label), each written
    through a temporary file and a rename; returns the CSV path."""
    import os

    from ..runs import write_atomic

    csv_path = os.path.splitext(path)[0] + ".csv"
    write_atomic(lambda tmp: save_npy(tmp, embeddings), path)
    try:
        write_atomic(lambda tmp: save_text(tmp, _items_csv(items)), csv_path)
    except Exception:
        os.remove(path)
        raise
    return csv_path


def save_npy(path, array):
    with open(path, "wb") as f:
        np.save(f, array)


def save_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def check_new_folder(path, what="index folder"):
    """``path`` must not exist (or be an empty folder) and its parent must be writable."""
    import os

    if not path:
        raise DmlError("an empty name is no %s: name a new folder" % what)
    if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)
                                      and not os.listdir(path)):
        raise DmlError("%s already exists: choose a new %s (nothing is overwritten)"
                       % (path, what))
    check_writable(path, folder=True)


def check_writable(path, folder=False):
    """``path`` can be written (checked before any work, so a bad target costs nothing and
    leaves nothing): a name, not a folder (unless ``folder``), in a folder that exists and is
    writable."""
    import os

    if not path:
        raise DmlError("an empty name is no file to write: name one")
    if not folder and os.path.isdir(path):
        raise DmlError("cannot write %s: it is a folder (name a file)" % path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DmlError("cannot write %s: there is no folder %s" % (path, parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DmlError("cannot write %s: the folder %s is not writable" % (path, parent))


ITEMS_HEADER = ["index", "path", "label"]


def _items_csv(items):
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(ITEMS_HEADER)
    for i, item in enumerate(items):
        writer.writerow([i, item.source, item.label])
    return text.getvalue()
