"""Hybridizable Gluon losses, each called as ``loss(embeddings, labels)``.

Every loss takes ``margin=`` and ``distance='euclidean'|'squared'|'cosine'`` and returns the batch
loss as a 1-element NDArray.
"""
from .distance import DISTANCES, pairwise_distance
from .triplet import TripletSemiHardLoss

__all__ = ["DISTANCES", "pairwise_distance", "TripletSemiHardLoss"]
