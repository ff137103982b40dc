"""Scoring two folders, each query against a gallery (``dml evaluate --query --gallery``).
"""
import os

import numpy as np

from ..errors import DmlError
from .items import collect, embed_items


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
    from ..evaluation import all_metrics

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
