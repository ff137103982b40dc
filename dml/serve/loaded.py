"""A trained run in memory: :func:`load_run` gives its network, config and class names, and
embeds images with exactly the run's evaluation preprocessing (:class:`LoadedRun`).
"""
import os

import numpy as np

from ..errors import DmlError


class LoadedRun:
    """A run folder's network, ready to embed images.

    ``net`` (a hybridized Gluon block), ``config`` (the run's :class:`dml.config.RunConfig`),
    ``class_names``, ``mean``/``std`` (the per-channel normalization), ``input_size`` (H, W),
    ``resize`` (``square`` or ``center_crop``: :mod:`dml.data.transforms`), ``checkpoint`` (the
    params file), ``run_dir`` and ``ctx``.
    """

    def __init__(self, net, config, class_names, mean, std, input_size, checkpoint, ctx,
                 run_dir=None, resize="square"):
        self.run_dir = run_dir
        self.net, self.config, self.class_names = net, config, list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size, self.checkpoint, self.ctx = tuple(input_size), checkpoint, ctx
        self.resize = resize

    def _image(self, image):
        """One image as uint8 H x W x 3 at the run's input size, decoded and brought there as
        the run's own datasets do (RGB, bilinear; resized whole, or resized and centre-cropped:
        ``resize``)."""
        from PIL import Image

        from ..data.images import read_image
        from ..data.transforms import fit_image

        height, width = self.input_size
        if isinstance(image, str):
            if height == width:  # as the run's own datasets read a file (JPEG at a reduced scale)
                return read_image(image, height, self.resize)
            image = read_image(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (
                    image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise DmlError("an image array must be uint8 H x W or H x W x 3, not %s %s"
                               % (image.dtype, image.shape))
            if image.shape[0] == 0 or image.shape[1] == 0:
                raise DmlError("an image array of %d x %d pixels holds no image"
                               % image.shape[:2])
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1
                                    else image)
        if not hasattr(image, "convert"):
            raise DmlError("cannot embed a %s: pass file paths, PIL images or uint8 arrays"
                           % type(image).__name__)
        image = image.convert("RGB")
        if height == width:
            image = fit_image(image, height, self.resize)
        elif image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    def preprocess(self, images):
        """``images`` (file paths, PIL images or uint8 H x W x 3 arrays; or one N x H x W x 3
        uint8 array; or one image) -> the float32 N x 3 x H x W batch the network takes: resized
        to the run's input size, ``(pixel / 255 - mean) / std`` per channel (for other runtimes
        too)."""
        from ..data import normalize_batch

        images = _image_list(images)
        if not images:
            raise DmlError("no images to preprocess")
        batch = np.stack([self._image(image) for image in images])
        return normalize_batch(batch, self.mean, self.std)

    def embed(self, images, batch_size=256):
        """The embeddings (float32 N x D numpy) of ``images`` (as :meth:`preprocess` takes; one
        image gives 1 x D), in batches on the run's context."""
        import mxnet as mx

        images = _image_list(images)
        out = []
        for start in range(0, len(images), batch_size):
            x = mx.nd.array(self.preprocess(images[start:start + batch_size]), ctx=self.ctx)
            out.append(self.net(x).asnumpy())
        if not out:
            return np.zeros((0, self.config.embedding_dim), dtype=np.float32)
        return np.concatenate(out)


def _image_list(images):
    """``images`` as a list of single images: one path, PIL image or H x W (x C) array is a list
    of one (a path is not a sequence of characters), an N x H x W x 3 array a list of N."""
    if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
        return [os.fspath(images) if isinstance(images, os.PathLike) else images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def load_run(run_dir, checkpoint=None, ctx=None):
    """Load a run folder written by ``dml train``: ``checkpoint`` is ``last``, ``best`` or a
    params file (``net-*.params`` or an exported ``embedding-*.params``); None: the one the
    run's metrics report (``best`` when its validation classes selected it, else ``last``).
    ``ctx`` an MXNet context (default the CPU). Returns a :class:`LoadedRun`."""
    import mxnet as mx

    from ..train.job import load_net, open_run, reported_checkpoint

    run, stored, cfg = open_run(run_dir)
    kind, path, _ = run.resolve(checkpoint or reported_checkpoint(run))
    if checkpoint not in (None, "last", "best"):
        run.check_own(path)  # another run's network with this run's preprocessing: refused
    ctx = ctx or mx.cpu()
    net = load_net(cfg, kind, path, [ctx])
    norm = stored.get("normalization")
    if norm is None:  # a run from before config.json recorded it: ask its dataset
        from ..data import load_dataset

        splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
        norm = dict(mean=splits.mean, std=splits.std, input_size=input_size(splits),
                    resize=splits.resize)
    return LoadedRun(net, cfg, stored.get("class_names", []), norm["mean"], norm["std"],
                     norm["input_size"], path, ctx, run_dir=str(run.path),
                     resize=norm.get("resize", "square"))


def input_size(splits):
    """The (H, W) of the images a dataset's network takes (:attr:`DatasetSplits.input_size`)."""
    return splits.input_size
