"""Image geometry, shared by training, evaluation and serving (``dml.load_run``, ONNX metadata).

Two ways to bring an image to the network's ``size`` x ``size`` input (``resize``):

- ``square``: resize the whole image to size x size (bilinear). Digits, MNIST, CIFAR and image
  folders: small images whose content fills the frame.
- ``center_crop``: resize the shorter side to ``round(size * 256 / 224)`` and take the central
  size x size crop: the photo benchmarks' test transform (Resize(256) + CenterCrop(224) at 224).

Training augmentations (:class:`Augment`, named by ``--augment``):

- ``none``: the evaluation geometry;
- ``crop``: a random size x size crop of the image zero-padded by ``pad`` pixels (CIFAR's);
- ``crop-flip``: the same and a horizontal flip with probability 1/2;
- ``resized-crop-flip``: torchvision's RandomResizedCrop (an area of 8% to 100% of the image, an
  aspect ratio between 3/4 and 4/3, resized to size x size; the central crop after 10 failed
  draws) and a flip: the photo benchmarks' training transform.
"""
import math
from dataclasses import dataclass

import numpy as np

from ..registry import AUGMENTS

RESIZES = ("square", "center_crop")
CENTER_CROP_RATIO = 256.0 / 224.0
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


@dataclass
class Augment:
    """Training augmentation: a random crop of the image zero-padded by ``pad`` pixels, or with
    ``resized_crop`` a random resized crop to ``size`` x ``size``; and a random horizontal flip
    when ``flip``."""

    pad: int = 0
    flip: bool = False
    resized_crop: bool = False
    size: int = 0  # the output side of a resized crop

    @classmethod
    def named(cls, name, pad=0, size=0):
        """The augmentation ``name`` (one of :data:`AUGMENTS`) with a dataset's crop padding."""
        if name not in AUGMENTS:
            raise ValueError("augment must be one of %s, not %r" % ("|".join(AUGMENTS), name))
        resized = name == "resized-crop-flip"
        return cls(pad=pad if name in ("crop", "crop-flip") else 0, flip=name.endswith("flip"),
                   resized_crop=resized, size=size if resized else 0)


def load_side(size, resize):
    """The shorter side an image is resized to before its central crop (``size`` itself for
    ``square``)."""
    return int(round(size * CENTER_CROP_RATIO)) if resize == "center_crop" else int(size)


def fit_image(image, size, resize="square"):
    """A PIL image brought to ``size`` x ``size`` by ``resize`` (see the module docstring)."""
    from PIL import Image

    if resize not in RESIZES:
        raise ValueError("resize must be one of %s, not %r" % ("|".join(RESIZES), resize))
    if resize == "square":
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return image
    width, height = image.size
    side = load_side(size, resize)
    scale = side / float(min(width, height))
    new_w, new_h = max(size, int(round(width * scale))), max(size, int(round(height * scale)))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def resized_crop_box(width, height, rng, scale=RESIZED_CROP_SCALE, ratio=RESIZED_CROP_RATIO):
    """torchvision's RandomResizedCrop box ``(left, top, w, h)``: up to 10 draws of an area
    fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``; then the central crop
    of the image clamped to ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / float(height)
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(image, size, rng):
    """uint8 H x W x 3 (any size) -> a random resized crop, uint8 ``size`` x ``size`` x 3."""
    from PIL import Image

    height, width = image.shape[:2]
    left, top, w, h = resized_crop_box(width, height, rng)
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w]))
    return np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def pad_crop(images, pad, rng):
    """A random crop of each N x H x W x C image from its copy zero-padded by ``pad`` pixels."""
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    top = rng.integers(0, 2 * pad + 1, size=n)
    left = rng.integers(0, 2 * pad + 1, size=n)
    rows = (top[:, None] + np.arange(h))[:, :, None]
    cols = (left[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


def augment_batch(images, augment, rng):
    """Apply ``augment`` to a batch: a uint8 N x H x W x C array, or with ``augment.resized_crop``
    a list of uint8 H x W x 3 images of any sizes (each is cropped and resized to
    ``augment.size``). Returns the uint8 N x size x size x C batch."""
    if augment.resized_crop:
        images = np.stack([random_resized_crop(np.asarray(image), augment.size, rng)
                           for image in images])
    elif augment.pad > 0:
        images = pad_crop(images, augment.pad, rng)
    if augment.flip:
        flip = rng.random(len(images)) < 0.5
        images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    return images
