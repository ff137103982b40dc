"""Datasets, samplers and the batch loader.

``images`` and ``checks`` (reading and checking image files) <- ``base`` (what a dataset is)
<- ``benchmarks`` (CUB, Cars196, SOP, In-Shop), ``glyphs`` <- ``datasets`` (digits, CIFAR, MNIST,
folders, and ``load_dataset`` by name); ``splits`` (the evaluation protocols), ``transforms``,
``samplers``, ``loader`` and ``tuples`` (what feeds training)."""
from ..registry import SPLITS
from .base import DatasetSplits, ImageArrayDataset, ImageFileDataset, default_data_root
from .benchmarks import BENCHMARKS, load_benchmark
from .datasets import load_cifar, load_dataset, load_digits, load_folder, load_mnist
from .loader import BatchLoader, SequentialBatches, normalize_batch
from .samplers import BalancedBatchSampler, ShuffledBatchSampler
from .splits import (apply_split, check_same_classes, class_subset, hold_out_classes,
                     unseen_class_splits)
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
