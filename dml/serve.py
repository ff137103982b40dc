"""Use a trained run: ``dml.load_run(run_dir)`` gives its network, config and class names, and
embeds images with exactly the run's evaluation preprocessing."""
import os

import numpy as np

from .errors import DmlError


class LoadedRun:
    """A run folder's network, ready to embed images.

    ``net`` (a hybridized Gluon block), ``config`` (the run's :class:`dml.config.RunConfig`),
    ``class_names``, ``mean``/``std`` (the per-channel normalization), ``input_size`` (H, W),
    ``resize`` (``square`` or ``center_crop``: :mod:`dml.data.transforms`), ``checkpoint`` (the
    params file), ``run_dir`` and ``ctx``.
    """

    def __init__(self, net, config, class_names, mean, std, input_size, checkpoint, ctx,
                 run_dir=None, resize="square"):
        self.run_dir = run_dir
        self.net, self.config, self.class_names = net, config, list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size, self.checkpoint, self.ctx = tuple(input_size), checkpoint, ctx
        self.resize = resize

    def _image(self, image):
        """One image as uint8 H x W x 3 at the run's input size, decoded and brought there as
        the run's own datasets do (RGB, bilinear; resized whole, or resized and centre-cropped:
        ``resize``)."""
        from PIL import Image

        from .data.images import read_image
        from .data.transforms import fit_image

        height, width = self.input_size
        if isinstance(image, str):
            if height == width:  # as the run's own datasets read a file (JPEG at a reduced scale)
                return read_image(image, height, self.resize)
            image = read_image(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                    image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise DmlError("an image array must be uint8 H x W or H x W x 3, not %s %s"
                               % (image.dtype, image.shape))
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise DmlError("an image array of %d x %d pixels holds no image"
                               % image.shape[:2])
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1
                                    else image)
        if not hasattr(image, "convert"):
            raise DmlError("cannot embed a %s: pass file paths, PIL images or uint8 arrays"
                           % type(image).__name__)
        image = image.convert("RGB")
        if height == width:
            image = fit_image(image, height, self.resize)
        elif image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    def preprocess(self, images):
        """``images`` (file paths, PIL images or uint8 H x W x 3 arrays; or one N x H x W x 3
        uint8 array; or one image) -> the float32 N x 3 x H x W batch the network takes: resized
        to the run's input size, ``(pixel / 255 - mean) / std`` per channel (for other runtimes
        too)."""
        from .data import normalize_batch

        images = _image_list(images)
        if not images:
            raise DmlError("no images to preprocess")
        batch = np.stack([self._image(image) for image in images])
        return normalize_batch(batch, self.mean, self.std)

    def embed(self, images, batch_size=256):
        """The embeddings (float32 N x D numpy) of ``images`` (as :meth:`preprocess` takes; one
        image gives 1 x D), in batches on the run's context."""
        import mxnet as mx

        images = _image_list(images)
        out = []
        for start in range(0, len(images), batch_size):
            x = mx.nd.array(self.preprocess(images[start:start + batch_size]), ctx=self.ctx)
            out.append(self.net(x).asnumpy())
        if not out:
            return np.zeros((0, self.config.embedding_dim), dtype=np.float32)
        return np.concatenate(out)


def _image_list(images):
    """``images`` as a list of single images: one path, PIL image or H x W (x C) array is a list
    of one (a path is not a sequence of characters), an N x H x W x 3 array a list of N."""
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
        return [os.fspath(images) if isinstance(images, os.PathLike) else images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def load_run(run_dir, checkpoint=None, ctx=None):
    """Load a run folder written by ``dml train``: ``checkpoint`` is ``last``, ``best`` or a
    params file (``net-*.params`` or an exported ``embedding-*.params``); None: the one the
    run's metrics report (``best`` when its validation classes selected it, else ``last``).
    ``ctx`` an MXNet context (default the CPU). Returns a :class:`LoadedRun`."""
    import mxnet as mx

    from .train.job import load_net, open_run, reported_checkpoint

    run, stored, cfg = open_run(run_dir)
    kind, path, _ = run.resolve(checkpoint or reported_checkpoint(run))
    if checkpoint not in (None, "last", "best"):
        run.check_own(path)  # another run's network with this run's preprocessing: refused
    ctx = ctx or mx.cpu()
    net = load_net(cfg, kind, path, [ctx])
    norm = stored.get("normalization")
    if norm is None:  # a run from before config.json recorded it: ask its dataset
        from .data import load_dataset

        splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
        norm = dict(mean=splits.mean, std=splits.std, input_size=input_size(splits),
                    resize=splits.resize)
    return LoadedRun(net, cfg, stored.get("class_names", []), norm["mean"], norm["std"],
                     norm["input_size"], path, ctx, run_dir=str(run.path),
                     resize=norm.get("resize", "square"))


def input_size(splits):
    """The (H, W) of the images a dataset's network takes (:attr:`DatasetSplits.input_size`)."""
    return splits.input_size


# ------------------------------------------------------------------------------------------------
# Image collections: what `dml embed`, `dml index` and `dml search` read.


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

    from .data.datasets import walk_image_files

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

    from .data.datasets import image_extensions

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
    from .data import load_dataset

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

    from .data import normalize_batch

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

    from .runs import write_atomic

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


def file_sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------
# A gallery index (``dml index``) and searching it (``dml search``).

INDEX_FILE, ITEMS_FILE, META_FILE = "index.faiss", "items.csv", "index.json"
INDEX_FORMAT = 2  # 2: index.json holds the SHA-256 of index.faiss and items.csv
ITEMS_HEADER = ["index", "path", "label"]


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


def _items_csv(items):
    import csv
    import io

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(ITEMS_HEADER)
    for i, item in enumerate(items):
        writer.writerow([i, item.source, item.label])
    return text.getvalue()


class Gallery:
    """An index folder: the faiss :class:`dml.index.SearchIndex`, its ``items`` (gallery images,
    in index order) and ``meta`` (index.json: the run, checkpoint and its SHA-256, distance,
    kind, count)."""

    def __init__(self, path, index, items, meta):
        self.path, self.index, self.items, self.meta = path, index, items, meta


def build_index(run, items, index_dir, kind="exact", nlist=None, strict=False):
    """Embed ``items`` with ``run`` and write ``index_dir`` (a new folder): ``index.faiss``,
    ``items.csv`` and ``index.json`` with the run's identity. The folder is built under a
    temporary name and renamed: it exists complete or not at all. Returns ``(Gallery,
    problems)``."""
    import errno
    import os
    import shutil
    import tempfile

    from .errors import WriteFailed
    from .version import __version__
    from .index import SearchIndex
    from .runs import write_failure, write_json

    check_new_folder(index_dir)
    embeddings, kept, problems = embed_items(run, items, strict=strict)
    index = SearchIndex.build(embeddings, run.config.distance, kind, nlist, seed=run.config.seed)
    kept = [Item(os.path.abspath(item.source) if os.path.isfile(item.source) else item.source,
                 item.label, item.image) for item in kept]  # searchable from any folder
    meta = dict(format=INDEX_FORMAT, dml_version=__version__, kind=kind, nlist=index.nlist,
                distance=run.config.distance, embedding_dim=int(embeddings.shape[1]),
                count=index.count, run_dir=os.path.abspath(run.run_dir),
                checkpoint=os.path.abspath(run.checkpoint),
                checkpoint_sha256=file_sha256(run.checkpoint),
                labelled=all(item.label for item in kept))
    parent = os.path.dirname(os.path.abspath(index_dir))
    try:
        tmp = tempfile.mkdtemp(dir=parent, prefix=".%s.tmp-" % os.path.basename(
            os.path.abspath(index_dir)))
    except OSError as err:
        raise write_failure(index_dir, err) from None
    try:
        index.save(os.path.join(tmp, INDEX_FILE))
        save_text(os.path.join(tmp, ITEMS_FILE), _items_csv(kept))
        meta["files"] = {name: file_sha256(os.path.join(tmp, name))
                         for name in (INDEX_FILE, ITEMS_FILE)}
        write_json(os.path.join(tmp, META_FILE), meta)
        os.chmod(tmp, 0o755)
        # rename(2) replaces only a missing or empty folder: of two builds racing for one
        # target, the second finds the first's index there and is refused
        os.rename(tmp, index_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
            raise DmlError("%s already exists: choose a new index folder (nothing is "
                           "overwritten)" % index_dir) from None
        raise write_failure(index_dir, err) from None
    except (RuntimeError, WriteFailed) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, WriteFailed):
            raise
        raise write_failure(index_dir, err) from None
    return Gallery(index_dir, index, kept, meta), problems


def open_index(index_dir):
    """The :class:`Gallery` written by :func:`build_index`, or a :class:`DmlError` saying what
    is wrong: a missing or unreadable file, an index.json this dml did not write, a file whose
    SHA-256 is not the one index.json recorded (another index's index.faiss, an edited
    items.csv), an index of another kind or size than index.json says."""
    import csv
    import os

    from .index import SearchIndex
    from .runs import read_json

    meta_path = os.path.join(index_dir, META_FILE)
    if not os.path.isfile(meta_path):
        raise DmlError("%s is not an index folder (no %s): build one with dml index"
                       % (index_dir, META_FILE))
    try:
        meta = read_json(meta_path)
    except (OSError, ValueError) as err:
        raise DmlError("cannot read %s (%s): rebuild the index with dml index"
                       % (meta_path, getattr(err, "strerror", None) or err)) from None
    if isinstance(meta, dict) and meta.get("format") == 1:
        raise DmlError("%s was built by an older dml, whose index.json holds no checksums of "
                       "its files: rebuild it with dml index" % index_dir)
    required = {"kind": str, "distance": str, "checkpoint_sha256": str, "count": int,
                "embedding_dim": int, "files": dict, "run_dir": str, "checkpoint": str}
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT or any(
            not isinstance(meta.get(key), kind) for key, kind in required.items()):
        raise DmlError("%s is not an index.json this dml wrote (format %s): rebuild the index "
                       "with dml index" % (meta_path, INDEX_FORMAT))
    for name in (INDEX_FILE, ITEMS_FILE):
        path = os.path.join(index_dir, name)
        if not os.path.isfile(path):
            raise DmlError("%s is missing: rebuild the index with dml index" % path)
        if file_sha256(path) != meta["files"].get(name):
            raise DmlError("%s is not the file this index was built with (its SHA-256 differs "
                           "from index.json's): rebuild the index with dml index" % path)
    items_path = os.path.join(index_dir, ITEMS_FILE)
    try:
        with open(items_path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DmlError("cannot read %s (%s)" % (items_path, getattr(err, "strerror", None)
                                               or err)) from None
    if header != ITEMS_HEADER or any(len(row) != 3 for row in rows):
        raise DmlError("%s is not an items.csv this dml wrote (header %s): rebuild the index"
                       % (items_path, ",".join(ITEMS_HEADER)))
    items = [Item(path, label) for _, path, label in rows]
    index = SearchIndex.load(os.path.join(index_dir, INDEX_FILE), meta["distance"], meta["kind"],
                             meta.get("nlist"), count=meta["count"], dim=meta["embedding_dim"])
    if not len(items) == index.count == meta["count"]:
        raise DmlError("%s is inconsistent: %d items, %d vectors, index.json says %d"
                       % (index_dir, len(items), index.count, meta["count"]))
    return Gallery(index_dir, index, items, meta)


def run_for_index(gallery, run_dir=None, checkpoint=None, ctx=None):
    """The :class:`LoadedRun` whose network built ``gallery``: by default the run and checkpoint
    index.json names; with ``run_dir`` (and ``checkpoint``, default the one the run reports)
    another copy of it.
    A network other than the one that embedded the gallery (another run, another checkpoint, or
    the same file retrained), or another distance, is a :class:`DmlError`: its queries would be
    compared with embeddings of a different space."""
    import os

    meta = gallery.meta
    if run_dir is None:
        run_dir = meta["run_dir"]
        if not os.path.isdir(run_dir):
            raise DmlError("the index's run folder %s is gone: give the run's folder (run="
                           "RUN_DIR), it must hold the same checkpoint" % run_dir)
        if checkpoint is None:
            checkpoint = meta["checkpoint"]
            if not os.path.isfile(checkpoint):
                raise DmlError("the index's checkpoint %s is gone (a run keeps only its newest "
                               "checkpoints): rebuild the index with dml index and a checkpoint "
                               "the run still has" % checkpoint)
    run = load_run(run_dir, checkpoint, ctx)
    if file_sha256(run.checkpoint) != meta["checkpoint_sha256"]:
        if os.path.realpath(run.checkpoint) == os.path.realpath(meta["checkpoint"]):
            raise DmlError("%s has changed since %s was built (its SHA-256 is not the one "
                           "index.json recorded): rebuild the index with dml index"
                           % (run.checkpoint, gallery.path))
        raise DmlError("%s was built with another network (%s): %s is a different checkpoint; "
                       "rebuild the index with dml index" % (
                           gallery.path, meta["checkpoint"], run.checkpoint))
    if run.config.distance != meta["distance"]:
        raise DmlError("%s is an index for the %s distance, but %s uses %s: rebuild the index"
                       % (gallery.path, meta["distance"], run_dir, run.config.distance))
    return run


def search(run, gallery, queries, k=10, nprobe=None, ef=None, strict=False):
    """Embed ``queries`` (:class:`Item` s) and find their ``k`` nearest gallery images ->
    ``(kept queries, distances Q x k, indices Q x k, problems)``."""
    gallery.index.check_k(k)  # before the queries are embedded
    embeddings, kept, problems = embed_items(run, queries, strict=strict)
    distances, indices = gallery.index.search(embeddings, k, nprobe=nprobe, ef=ef)
    return kept, distances, indices, problems


class ImageSource:
    """Decodes an :class:`Item` 's image for pictures: a file, or ``dataset:split:index`` of the
    run's own dataset (loaded once)."""

    def __init__(self, run):
        self.run, self._splits = run, None

    def __call__(self, item):
        import os

        from .data.images import read_image

        if item.image is not None:
            return item.image
        if os.path.isfile(item.source):
            return read_image(item.source)
        name, split, number = (item.source.split(":") + ["", ""])[:3]
        if name == self.run.config.dataset and split in ("train", "test") and number.isdigit():
            if self._splits is None:
                from .data import load_dataset

                cfg = self.run.config
                self._splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
            return getattr(self._splits, split)[int(number)][0]
        raise DmlError("cannot show %s: no such file" % item.source)


def result_rows(run, gallery, queries, distances, indices):
    """The rows :func:`dml.plots.neighbour_grid` draws."""
    image = ImageSource(run)
    rows = []
    for query, dist, idx in zip(queries, distances, indices):
        rows.append(dict(query=image(query), query_label=query.label, neighbours=[
            (image(gallery.items[i]), gallery.items[i].label, d)
            for d, i in zip(dist, idx) if i >= 0]))
    return rows


# ------------------------------------------------------------------------------------------------
# Query against gallery: `dml evaluate RUN --query DIR --gallery DIR`.


def labelled_items(folder, role):
    """The images of ``folder`` (a query or gallery folder: ``<class>/<image>``, recursively)
    with their class; an image outside a class folder is a :class:`DmlError`."""
    items = collect([folder])
    unlabelled = [item.source for item in items if not item.label]
    if unlabelled:
        raise DmlError("the %s folder %s must hold class folders (%s/<class>/<image>); %s is "
                       "not in one" % (role, folder, folder, unlabelled[0]))
    return items


def check_query_gallery_classes(query, gallery, query_dir, gallery_dir):
    """Every query class must have gallery images and every gallery class queries: a class on
    one side only is a :class:`DmlError` naming a few."""
    q, g = {i.label for i in query}, {i.label for i in gallery}
    for side, other, only in ((query_dir, gallery_dir, sorted(q - g)),
                              (gallery_dir, query_dir, sorted(g - q))):
        if only:
            raise DmlError("%d classes of %s are not in %s (%s): query and gallery must hold the "
                           "same classes" % (len(only), side, other, ", ".join(only[:3])))


def query_gallery_metrics(run, query_dir, gallery_dir, batch_size=256, strict=False):
    """Every retrieval metric (and the clustering of the queries, and ``knn_accuracy`` voting
    among the gallery) of the images in ``query_dir`` retrieved against those in
    ``gallery_dir``, embedded by ``run`` (a :class:`LoadedRun`): the definitions of
    :func:`dml.evaluation.all_metrics`. Returns the metrics."""
    from .evaluation import all_metrics

    query = labelled_items(query_dir, "query")
    gallery = labelled_items(gallery_dir, "gallery")
    check_query_gallery_classes(query, gallery, query_dir, gallery_dir)
    q_emb, q_kept, _ = embed_items(run, query, batch_size, strict)
    g_emb, g_kept, _ = embed_items(run, gallery, batch_size, strict)
    names = sorted({i.label for i in q_kept} | {i.label for i in g_kept})
    code = {name: c for c, name in enumerate(names)}
    q_labels = np.array([code[i.label] for i in q_kept])
    g_labels = np.array([code[i.label] for i in g_kept])
    metrics = all_metrics(q_emb, q_labels, g_emb, g_labels, run.config.distance,
                          seed=run.config.seed, gallery=g_emb, gallery_labels=g_labels)
    metrics.update(split="query_gallery", num_gallery=int(len(g_kept)),
                   query=os.path.abspath(query_dir), gallery=os.path.abspath(gallery_dir),
                   checkpoint=run.checkpoint)
    return metrics


evaluate_query_gallery = query_gallery_metrics  # its name before "evaluate" meant one function
