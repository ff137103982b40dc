"""``dml embed RUN_DIR INPUT... -o OUT.npy``: embed images with a trained run."""
from ..errors import DmlError
from .common import _collection_arguments, _context, _Formatter, _inputs, _report_problems, _run_options



def add_parser(sub):
    """The ``embed`` subcommand's parser."""
    embed = sub.add_parser(
        "embed", help="embed images with a trained run",
        description="Embed images with a run's network and exactly its evaluation preprocessing. "
        "Writes OUT.npy (float32 N x D) and beside it OUT.csv (index, path, label).",
        formatter_class=_Formatter)
    embed.set_defaults(func=cmd_embed)
    _collection_arguments(embed, "inputs", "INPUT", "embed", "OUT.npy",
                          "the .npy file to write (and OUT.csv beside it)")
    _run_options(embed)


def cmd_embed(args):
    from ..serve import check_writable, embed_items, load_run, write_embeddings

    if not args.out.lower().endswith(".npy"):
        raise DmlError("-o %s: name a .npy file" % args.out)
    check_writable(args.out)
    run = load_run(args.run_dir, args.checkpoint, _context(args))
    items = _inputs(args, run, args.inputs)
    embeddings, kept, problems = embed_items(run, items, args.batch_size, args.strict)
    csv_path = write_embeddings(args.out, embeddings, kept)
    _report_problems(problems, len(items))
    print("embedded %d images (%d dimensions) with %s" % (len(kept), embeddings.shape[1],
                                                          run.checkpoint))
    print("embeddings:  %s" % args.out)
    print("paths:       %s" % csv_path)
    return 0
