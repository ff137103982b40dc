"""Scoring a network while and after it trains: the validation loss, the embeddings' checks,
the retrieval metrics of a split (:func:`embed_and_score`) and of a run (:func:`score_for_run`).
"""
import logging

import numpy as np
from tqdm import tqdm

from ..data import BatchLoader, SequentialBatches
from ..evaluation import all_metrics, embed, retrieval_metrics
from ..methods import get_method
from ..runs import wait_for_mxnet
from .state import NonFiniteLoss
from .devices import split_batch

log = logging.getLogger("dml")


def validation_loss(method, model, loss_fn, loader, ctx):
    """Mean loss over a fixed tuple set (inference mode: BatchNorm uses running statistics)."""
    wait_for_mxnet()
    total = count = 0.0
    for batch in loader:
        for arrays in split_batch(batch, ctx):
            loss, _ = method.forward(model, loss_fn, *arrays)
            total += loss.asscalar() * arrays[0].shape[0]
            count += arrays[0].shape[0]
    return total / max(count, 1)


def check_embeddings(embeddings, what):
    """Refuse non-finite embeddings (no metric of them means anything) and warn, in one line,
    about a collapsed one (every image embedded to the same point: its metrics only measure how
    ties are broken, its clustering is one cluster)."""
    from ..evaluation import is_collapsed

    if not np.isfinite(embeddings).all():
        raise NonFiniteLoss("the %s embeddings hold NaN or inf: the network's weights are not "
                            "finite" % what, None)
    if is_collapsed(embeddings):
        log.warning("the embedding collapsed: all %d %s images map to the same point (the "
                    "metrics below are those of ties); try a lower learning rate or another "
                    "backbone", len(embeddings), what)


def embed_and_score(net, splits, ctx, distance="euclidean", full=True, pairs=None, seed=0,
                 batch_size=256, num_workers=2):
    """Embed ``splits.test`` and score it -> ``(metrics, embeddings, labels)``. ``full`` adds the
    clustering metrics, ``knn_accuracy`` (which embeds ``splits.references`` too) and, with
    ``pairs`` (fixed ``(i, j, same)`` test pairs), ``verification_auc``; otherwise only the
    retrieval metrics (cheap enough for every evaluation period). With ``splits.gallery`` the
    test images are queries retrieved against the gallery (which is embedded too)."""
    wait_for_mxnet()

    def embedded(dataset, desc):
        loader = BatchLoader(dataset, SequentialBatches(len(dataset), batch_size), splits.mean,
                             splits.std, augment=None, num_workers=num_workers)
        with tqdm(total=len(loader), desc=desc, unit="batch", disable=None, leave=False) as bar:
            return embed(net, loader, ctx, progress=bar)

    what = "query" if splits.gallery is not None else splits.split
    embeddings, labels = embedded(splits.test, "embedding %s split" % what)
    check_embeddings(embeddings, what)
    gallery = gallery_labels = None
    if splits.gallery is not None:
        gallery, gallery_labels = embedded(splits.gallery, "embedding the gallery")
        check_embeddings(gallery, "gallery")
    if full:
        if gallery is None:
            references, reference_labels = embedded(splits.references, "embedding kNN references")
        else:
            references, reference_labels = gallery, gallery_labels
        metrics = all_metrics(embeddings, labels, references, reference_labels, distance,
                              pairs=pairs, seed=seed, gallery=gallery,
                              gallery_labels=gallery_labels)
    else:
        metrics = retrieval_metrics(embeddings, labels, distance, gallery=gallery,
                                    gallery_labels=gallery_labels)
    metrics["split"] = splits.split
    if gallery is not None:
        metrics["num_gallery"] = int(len(gallery))
    return metrics, embeddings, labels


def validation_splits(splits):
    """``splits`` with its validation classes (``splits.val``) as the evaluated split: what model
    selection scores (retrieval among the held-out classes' images)."""
    import dataclasses

    return dataclasses.replace(splits, test=splits.val, split="val", gallery=None,
                               reference=None)


def score_for_run(cfg, splits, net, ctx, full=True, on="test"):
    """:func:`embed_and_score` with a run's settings (its distance, seed, batch size, loaders, and
    the siamese method's fixed verification pairs); ``on="val"``: the retrieval metrics of the
    validation classes (model selection) instead of the test split."""
    if on == "val":
        return embed_and_score(net, validation_splits(splits), ctx, cfg.distance, full=False,
                            seed=cfg.seed, batch_size=cfg.eval_batch_size,
                            num_workers=cfg.num_workers)
    method = get_method(cfg.method)
    pairs = method.val_dataset(splits.test, cfg.seed).tuples if full and method.verification \
        else None
    return embed_and_score(net, splits, ctx, cfg.distance, full=full, pairs=pairs, seed=cfg.seed,
                        batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers)
