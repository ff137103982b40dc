"""Hybridizable Gluon losses.

The batch losses are called as ``loss(embeddings, labels)``; :class:`ContrastiveLoss` as
``loss(x1, x2, same_class)`` and :class:`TripletMarginLoss` as ``loss(anchor, positive, negative)``.
Every loss takes ``margin=`` and ``distance='euclidean'|'squared'|'cosine'`` and returns the batch
loss as a 1-element NDArray (with ``return_stat=True``: ``(loss, fraction)``).
The margin-softmax heads (:class:`ArcFace`, :class:`CosFace`, :class:`SphereFace`) are called as
``head(embeddings, labels)`` and return logits for softmax cross-entropy.
The similarity losses (:mod:`.similarity`: multi-similarity, circle, SupCon, NT-Xent, lifted
structure, N-pairs) and the proxy losses (:mod:`.proxies`) carry pytorch-metric-learning 2.9's
names, parameters and reductions; the pair ones also take ``indices=`` from :mod:`dml.miners`.
"""
from .contrastive import PAIR_SELECTORS, ContrastiveLoss, OnlineContrastiveLoss
from ..ops.distance import DISTANCES, pair_distance, pairwise_distance
from .heads import MARGIN_HEADS, ArcFace, CosFace, SphereFace, SubCenterArcFace
from .margin import MarginLoss
from .proxies import NormalizedSoftmaxLoss, ProxyAnchorLoss, ProxyNCALoss, SoftTripleLoss
from .similarity import (CircleLoss, GeneralizedLiftedStructureLoss, MultiSimilarityLoss,
                         NPairsLoss, NTXentLoss, SupConLoss)
from .triplet import (ONLINE_TRIPLET_SELECTORS, OnlineTripletLoss, TripletBatchAllLoss,
                      TripletBatchHardLoss, TripletMarginLoss, TripletSemiHardLoss)

__all__ = [
    "DISTANCES", "pair_distance", "pairwise_distance", "PAIR_SELECTORS", "ONLINE_TRIPLET_SELECTORS",
    "ContrastiveLoss", "OnlineContrastiveLoss", "TripletMarginLoss", "TripletSemiHardLoss",
    "TripletBatchHardLoss", "TripletBatchAllLoss", "OnlineTripletLoss",
    "MARGIN_HEADS", "ArcFace", "CosFace", "SphereFace", "SubCenterArcFace",
    "MultiSimilarityLoss", "CircleLoss", "SupConLoss", "NTXentLoss",
    "GeneralizedLiftedStructureLoss", "NPairsLoss", "MarginLoss",
    "ProxyAnchorLoss", "ProxyNCALoss", "NormalizedSoftmaxLoss", "SoftTripleLoss",
]
