"""What every dataset is: :class:`DatasetSplits` (the splits a run trains, selects and evaluates
on) and the two Gluon datasets behind them, images in memory (:class:`ImageArrayDataset`) and image
files read lazily (:class:`ImageFileDataset`). The loaders (:mod:`dml.data.datasets`,
:mod:`dml.data.benchmarks`, :mod:`dml.data.glyphs`) build on this module."""
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
from mxnet import base, gluon

from ..registry import DATASET_DEFAULTS
from .images import read_image
from .transforms import Augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DatasetSplits:
    """A dataset as training and evaluation see it. ``train`` and ``test`` are datasets of
    ``(uint8 H x W x 3 image, int label)`` in the evaluation geometry (``resize``, see
    :mod:`dml.data.transforms`); ``augment`` is the dataset's default training augmentation
    (named ``augment_name``; :meth:`augmentation` gives another by name).

    ``gallery``: when set, ``test`` holds the queries and retrieval is measured for each query
    against the gallery (In-Shop); otherwise each test image queries the other test images.
    ``val``: the training-split images of ``val_classes``, training classes held out for model
    selection (:func:`hold_out_classes`); ``reference``: the images ``knn_accuracy`` votes with
    (None: the training split)."""

    name: str
    train: "gluon.data.Dataset"
    test: "gluon.data.Dataset"
    class_names: List[str]
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    augment: Augment = field(default_factory=Augment)
    reference: Optional["gluon.data.Dataset"] = None
    split: str = "test"
    train_classes: Optional[List[int]] = None  # None: every class
    eval_classes: Optional[List[int]] = None
    augment_name: str = "none"
    crop_pad: int = 0
    resize: str = "square"
    gallery: Optional["gluon.data.Dataset"] = None
    val: Optional["gluon.data.Dataset"] = None
    val_classes: Optional[List[int]] = None

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def references(self):
        return self.train if self.reference is None else self.reference

    @property
    def input_size(self):
        """``[H, W]`` of the images the dataset's network takes."""
        image, _ = self.train[0]
        return list(np.asarray(image).shape[:2])

    @property
    def input_side(self):
        """The side of the network's square input."""
        image, _ = self.train[0]
        return int(np.asarray(image).shape[0])

    def augmentation(self, name=None):
        """The :class:`Augment` named ``name`` (one of ``none``, ``crop``, ``crop-flip``,
        ``resized-crop-flip``; None: the dataset's default) with this dataset's crop padding."""
        return Augment.named(name or self.augment_name, self.crop_pad, self.input_side)


def _splits(name, train, test, class_names, mean, std, crop_pad=0, resize="square", **kwargs):
    """A :class:`DatasetSplits` whose default augmentation is ``name``'s in
    :data:`dml.registry.DATASET_DEFAULTS`."""
    augment = DATASET_DEFAULTS[name]["augment"]
    side = int(np.asarray(train[0][0]).shape[0]) if len(train) else 0
    return DatasetSplits(name=name, train=train, test=test, class_names=class_names, mean=mean,
                         std=std, augment=Augment.named(augment, crop_pad, side),
                         augment_name=augment, crop_pad=crop_pad, resize=resize, **kwargs)


class ImageArrayDataset(gluon.data.Dataset):
    """Images held in memory: ``images`` uint8 N x H x W x 3, ``labels`` int N."""

    def __init__(self, images, labels):
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.asarray(labels, dtype=np.int32)
        if images.ndim != 4 or images.shape[3] != 3 or len(images) != len(labels):
            raise ValueError("expected N x H x W x 3 images and N labels, got %s and %s"
                             % (images.shape, labels.shape))
        self.images = images
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, idx):
        return self.images[idx], int(self.labels[idx])

    def batch(self, indices):
        indices = np.asarray(indices)
        return self.images[indices], self.labels[indices]

    def subset(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return ImageArrayDataset(self.images[indices], self.labels[indices])


class ImageFileDataset(gluon.data.Dataset):
    """Images read lazily from files with Pillow, converted to RGB and brought to ``size`` x
    ``size`` by ``resize`` (``square`` or ``center_crop``: :mod:`dml.data.transforms`).
    :meth:`raw_batch` gives the whole images instead (decoded at a reduced JPEG scale that keeps
    them at least twice ``size``), for a random resized crop."""

    def __init__(self, paths, labels, size, resize="square"):
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.size = int(size)
        self.resize = resize

    def __len__(self):
        return len(self.paths)

    def _load(self, idx):
        return read_image(self.paths[idx], self.size, self.resize)

    def __getitem__(self, idx):
        return self._load(idx), int(self.labels[idx])

    def batch(self, indices):
        indices = np.asarray(indices)
        return np.stack([self._load(i) for i in indices]), self.labels[indices]

    def raw_batch(self, indices):
        """``(list of whole uint8 images, labels)``: the training input of a resized crop."""
        indices = np.asarray(indices)
        return ([read_image(self.paths[i], draft=2 * self.size) for i in indices],
                self.labels[indices])

    def subset(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return ImageFileDataset([self.paths[i] for i in indices], self.labels[indices], self.size,
                                self.resize)


def default_data_root(name):
    """MXNet's own dataset folder: ``$MXNET_HOME/datasets/<name>`` (``~/.mxnet/datasets/<name>``)."""
    return os.path.join(base.data_dir(), "datasets", name)
