"""An index folder (``dml index``): the faiss index of a gallery's embeddings, its items and the
run that embedded them, each file's SHA-256 checked before use; searching it (``dml search``).
"""
from ..errors import DmlError
from .loaded import load_run
from .items import ITEMS_HEADER, _items_csv, Item, check_new_folder, embed_items, save_text


def file_sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


INDEX_FILE, ITEMS_FILE, META_FILE = "index.faiss", "items.csv", "index.json"
INDEX_FORMAT = 2  # 2: index.json holds the SHA-256 of index.faiss and items.csv


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

    from ..errors import WriteFailed
    from ..version import __version__
    from ..index import SearchIndex
    from ..runs import write_failure, write_json

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

    from ..index import SearchIndex
    from ..runs import read_json

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

        from ..data.images import read_image

        if item.image is not None:
            return item.image
        if os.path.isfile(item.source):
            return read_image(item.source)
        name, split, number = (item.source.split(":") + ["", ""])[:3]
        if name == self.run.config.dataset and split in ("train", "test") and number.isdigit():
            if self._splits is None:
                from ..data import load_dataset

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
