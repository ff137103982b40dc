"""Datasets, samplers and the batch loader."""
from .datasets import (SPLITS, Augment, DatasetSplits, ImageArrayDataset, ImageFileDataset,
                       apply_split, check_same_classes, class_subset, default_data_root, load_cifar, load_dataset,
                       load_digits, load_folder, load_mnist, unseen_class_splits)
from .loader import BatchLoader, SequentialBatches, augment_batch, normalize_batch
from .samplers import BalancedBatchSampler, ShuffledBatchSampler
from .tuples import PairDataset, TripletDataset

__all__ = [
    "SPLITS", "apply_split", "check_same_classes", "class_subset", "unseen_class_splits", "Augment", "DatasetSplits", "ImageArrayDataset", "ImageFileDataset", "default_data_root",
    "load_cifar", "load_dataset", "load_digits", "load_folder", "load_mnist",
    "BatchLoader", "SequentialBatches", "augment_batch", "normalize_batch",
    "BalancedBatchSampler", "ShuffledBatchSampler", "PairDataset", "TripletDataset",
]
