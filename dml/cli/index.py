"""``dml index RUN_DIR GALLERY... -o INDEX_DIR``: a nearest-neighbour index of a gallery."""
from .common import (_collection_arguments, _context, _Formatter, _inputs, _positive_int,
                     _report_problems, _run_options)



def add_parser(sub):
    """The ``index`` subcommand's parser."""
    index = sub.add_parser(
        "index", help="build a nearest-neighbour index of a gallery",
        description="Embed a gallery with a run's network and build a faiss index in the run's "
        "distance, in a new folder INDEX_DIR (index.faiss, items.csv, index.json with the run's "
        "identity: a search with another network is refused).", formatter_class=_Formatter)
    index.set_defaults(func=cmd_index)
    _collection_arguments(index, "gallery", "GALLERY", "index", "INDEX_DIR",
                          "the folder to create (it must not exist)")
    index.add_argument("--kind", choices=("exact", "ivf", "hnsw"), default="exact",
                       help="exact: every gallery image is compared (brute force results); ivf "
                       "or hnsw: approximate and faster on large galleries (doc/serving.md)")
    index.add_argument("--nlist", type=_positive_int, default=None,
                       help="ivf: the number of k-means cells (default about 4 sqrt(N))")
    _run_options(index)


def cmd_index(args):
    from ..serve import build_index, check_new_folder, load_run

    check_new_folder(args.out)
    run = load_run(args.run_dir, args.checkpoint, _context(args))
    items = _inputs(args, run, args.gallery)
    gallery, problems = build_index(run, items, args.out, args.kind, args.nlist, args.strict)
    _report_problems(problems, len(items))
    print("indexed %d images (%s, %s distance, %d dimensions) with %s" % (
        gallery.index.count, args.kind, gallery.meta["distance"], gallery.index.dim,
        run.checkpoint))
    print("index:       %s" % args.out)
    print("search:      python -m dml search %s QUERY... -k 10" % args.out)
    return 0
