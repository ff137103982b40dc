"""``dml search INDEX_DIR QUERY...``: the nearest gallery images of query images."""
from ..errors import DmlError
from .common import INPUT_HELP, _context, _Formatter, _positive_int, _report_problems, _run_options



def add_parser(sub):
    """The ``search`` subcommand's parser."""
    search = sub.add_parser(
        "search", help="find the nearest gallery images of query images",
        description="Embed the queries with the network that built INDEX_DIR and print each "
        "one's K nearest gallery images (rank, distance, label, path).",
        formatter_class=_Formatter)
    search.set_defaults(func=cmd_search)
    search.add_argument("index_dir", metavar="INDEX_DIR", help="a folder written by dml index")
    search.add_argument("queries", metavar="QUERY", nargs="+", help=INPUT_HELP)
    search.add_argument("-k", type=_positive_int, default=10, help="neighbours per query")
    search.add_argument("--out", default=None, metavar="OUT.csv",
                        help="also write the results (query, query_label, rank, path, label, "
                        "distance)")
    search.add_argument("--grid", default=None, metavar="OUT.png",
                        help="also draw each query and its neighbours, framed green (same label) "
                        "or red (another label) when labels are known")
    search.add_argument("--run", default=None, metavar="RUN_DIR",
                        help="the run that built the index, if it moved (default: the one "
                        "index.json names); it must be the same network")
    search.add_argument("--checkpoint", default=None, metavar="last|best|PATH",
                        help="with --run: its checkpoint (default: the index's)")
    search.add_argument("--nprobe", type=_positive_int, default=None,
                        help="ivf: cells visited per query (more: better recall, slower)")
    search.add_argument("--ef", type=_positive_int, default=None,
                        help="hnsw: candidates kept per query (default max(64, k))")
    _run_options(search, checkpoint=False)


def cmd_search(args):
    import csv
    import io

    from ..serve import (check_writable, collect, open_index, result_rows, run_for_index,
                        save_text, search)
    from ..runs import write_atomic

    for option, path, ext in (("--out", args.out, ".csv"), ("--grid", args.grid, ".png")):
        if path is not None:
            if not path.lower().endswith(ext):
                raise DmlError("%s %s: name a %s file" % (option, path, ext))
            check_writable(path)
    if args.checkpoint is not None and args.run is None:
        raise DmlError("--checkpoint applies with --run (the index names its own checkpoint)")
    gallery = open_index(args.index_dir)
    gallery.index.check_k(args.k)  # before the run loads
    run = run_for_index(gallery, args.run, args.checkpoint, _context(args))
    queries = collect(args.queries)
    kept, distances, indices, problems = search(run, gallery, queries, args.k, args.nprobe,
                                                args.ef, args.strict)
    _report_problems(problems, len(queries))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["query", "query_label", "rank", "path", "label", "distance"])
    for query, dist, idx in zip(kept, distances, indices):
        print("%s%s" % (query.source, " (label %s)" % query.label if query.label else ""))
        for rank, (d, i) in enumerate(zip(dist, idx), 1):
            if i < 0:
                continue
            item = gallery.items[i]
            print("  %3d  %-10.5g  %-12s  %s" % (rank, d, item.label or "-", item.source))
            writer.writerow([query.source, query.label, rank, item.source, item.label,
                             "%.6g" % d])
    if args.out:
        write_atomic(lambda tmp: save_text(tmp, text.getvalue()), args.out)
        print("results:     %s" % args.out)
    if args.grid:
        from ..plots import neighbour_grid

        rows = result_rows(run, gallery, kept, distances, indices)
        neighbour_grid(rows, args.grid, title="%d nearest of %d gallery images (%s distance)"
                       % (args.k, gallery.index.count, gallery.meta["distance"]))
        print("grid:        %s" % args.grid)
    return 0
