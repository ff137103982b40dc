"""Datasets, samplers and the batch loader."""
from .datasets import (Augment, DatasetSplits, ImageArrayDataset, ImageFileDataset, default_data_root,
                       load_cifar, load_dataset, load_digits, load_folder, load_mnist)
from .loader import BatchLoader, SequentialBatches, augment_batch, normalize_batch
from .samplers import BalancedBatchSampler, ShuffledBatchSampler
from .tuples import PairDataset, TripletDataset

__all__ = [
    "Augment", "DatasetSplits", "ImageArrayDataset", "ImageFileDataset", "default_data_root",
    "load_cifar", "load_dataset", "load_digits", "load_folder", "load_mnist",
    "BatchLoader", "SequentialBatches", "augment_batch", "normalize_batch",
    "BalancedBatchSampler", "ShuffledBatchSampler", "PairDataset", "TripletDataset",
]
