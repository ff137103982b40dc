"""Datasets, samplers and the batch loader."""
from .benchmarks import BENCHMARKS, load_benchmark
from .datasets import (SPLITS, DatasetSplits, ImageArrayDataset, ImageFileDataset, apply_split,
                       check_same_classes, class_subset, default_data_root, hold_out_classes,
                       load_cifar, load_dataset, load_digits, load_folder, load_mnist,
                       unseen_class_splits)
from .loader import BatchLoader, SequentialBatches, normalize_batch
from .samplers import BalancedBatchSampler, ShuffledBatchSampler
from .transforms import AUGMENTS, RESIZES, Augment, augment_batch, fit_image
from .tuples import PairDataset, TripletDataset

__all__ = [
    "SPLITS", "BENCHMARKS", "AUGMENTS", "RESIZES", "apply_split", "check_same_classes",
    "class_subset", "hold_out_classes", "unseen_class_splits", "Augment", "DatasetSplits",
    "ImageArrayDataset", "ImageFileDataset", "default_data_root", "fit_image", "load_benchmark",
    "load_cifar", "load_dataset", "load_digits", "load_folder", "load_mnist",
    "BatchLoader", "SequentialBatches", "augment_batch", "normalize_batch",
    "BalancedBatchSampler", "ShuffledBatchSampler", "PairDataset", "TripletDataset",
]
