"""What a trained embedding is measured against: the raw pixels of the same images, and the same
network before training. A metric-learning run that does not beat both on classes it never saw
has taught its network nothing that carries over.

- raw pixels: each image resized to 32 x 32 (bilinear), its 3,072 values scaled to [0, 1], the
  mean image of the evaluated set subtracted, compared by cosine distance;
- the untrained network: the run's network as initialized (random or pretrained weights),
  embedded and scored before the first training step.

Both are scored with the retrieval metrics of :mod:`dml.evaluation` on the run's evaluated split
(queries against the gallery where there is one).
"""
import numpy as np

PIXEL_SIDE = 32
BASELINE_KEYS = ("precision_at_1", "r_precision", "map_at_r")
MAX_IMAGES = 20000  # larger test splits skip the pixel baseline (3,072 values an image)


def pixel_vectors(dataset, side=PIXEL_SIDE, batch=512):
    """``(N x 3 side^2 float32 vectors, labels)`` of a dml dataset's images, resized to
    ``side`` x ``side``, in [0, 1]."""
    from PIL import Image

    vectors, labels = [], []
    for start in range(0, len(dataset), batch):
        images, lab = dataset.batch(np.arange(start, min(start + batch, len(dataset))))
        for image in images:
            img = Image.fromarray(np.asarray(image, dtype=np.uint8))
            if img.size != (side, side):
                img = img.resize((side, side), Image.BILINEAR)
            vectors.append(np.asarray(img, dtype=np.float32).reshape(-1) / 255.0)
        labels.append(np.asarray(lab))
    return np.stack(vectors), np.concatenate(labels)


def pixel_metrics(test, gallery=None):
    """The retrieval metrics of raw pixels (module docstring) on ``test`` (against ``gallery``
    when given), or None for splits above :data:`MAX_IMAGES` images."""
    from .evaluation import retrieval_metrics

    if len(test) + (len(gallery) if gallery is not None else 0) > MAX_IMAGES:
        return None
    x, labels = pixel_vectors(test)
    if gallery is None:
        x = x - x.mean(axis=0, keepdims=True)
        return retrieval_metrics(x, labels, "cosine")
    g, g_labels = pixel_vectors(gallery)
    mean = np.concatenate([x, g]).mean(axis=0, keepdims=True)
    return retrieval_metrics(x - mean, labels, "cosine", gallery=g - mean,
                             gallery_labels=g_labels)


def baseline_entries(prefix, metrics):
    """``{prefix + key: value}`` of the :data:`BASELINE_KEYS` of ``metrics``."""
    return {prefix + key: metrics[key] for key in BASELINE_KEYS if key in metrics}
