"""Use a trained run: ``dml.load_run(run_dir)`` gives its network, config and class names, and
embeds images with exactly the run's evaluation preprocessing."""
import numpy as np

from . import DmlError


class LoadedRun:
    """A run folder's network, ready to embed images.

    ``net`` (a hybridized Gluon block), ``config`` (the run's :class:`dml.config.RunConfig`),
    ``class_names``, ``mean``/``std`` (the per-channel normalization), ``input_size`` (H, W),
    ``checkpoint`` (the params file) and ``ctx``.
    """

    def __init__(self, net, config, class_names, mean, std, input_size, checkpoint, ctx):
        self.net, self.config, self.class_names = net, config, list(class_names)
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size, self.checkpoint, self.ctx = tuple(input_size), checkpoint, ctx

    def _image(self, image):
        """One image as uint8 H x W x 3 at the run's input size, decoded and resized as the
        run's own datasets do (RGB, bilinear)."""
        from PIL import Image

        from .data.datasets import read_image

        height, width = self.input_size
        if isinstance(image, str):
            if height == width:  # as the run's own datasets read a file (JPEG at a reduced scale)
                return read_image(image, height)
            image = read_image(image)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise DmlError("an image array must be uint8 H x W or H x W x 3, not %s %s"
                               % (image.dtype, image.shape))
            image = Image.fromarray(image)
        if not hasattr(image, "convert"):
            raise DmlError("cannot embed a %s: pass file paths, PIL images or uint8 arrays"
                           % type(image).__name__)
        image = image.convert("RGB")
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    def preprocess(self, images):
        """``images`` (file paths, PIL images or uint8 H x W x 3 arrays; or one N x H x W x 3
        uint8 array) -> the float32 N x 3 x H x W batch the network takes: resized to the run's
        input size, ``(pixel / 255 - mean) / std`` per channel (for other runtimes too)."""
        from .data import normalize_batch

        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        batch = np.stack([self._image(image) for image in images])
        return normalize_batch(batch, self.mean, self.std)

    def embed(self, images, batch_size=256):
        """The embeddings (float32 N x D numpy) of ``images`` (as :meth:`preprocess` takes),
        in batches on the run's context."""
        import mxnet as mx

        images = list(images) if not isinstance(images, np.ndarray) or images.ndim != 4 \
            else images
        out = []
        for start in range(0, len(images), batch_size):
            x = mx.nd.array(self.preprocess(images[start:start + batch_size]), ctx=self.ctx)
            out.append(self.net(x).asnumpy())
        if not out:
            return np.zeros((0, self.config.embedding_dim), dtype=np.float32)
        return np.concatenate(out)


def load_run(run_dir, checkpoint="last", ctx=None):
    """Load a run folder written by ``dml train``: ``checkpoint`` is ``last``, ``best`` or a
    params file (``net-*.params`` or an exported ``embedding-*.params``); ``ctx`` an MXNet
    context (default the CPU). Returns a :class:`LoadedRun`."""
    import mxnet as mx

    from .engine import load_net, open_run

    run, stored, cfg = open_run(run_dir)
    kind, path, _ = run.resolve(checkpoint)
    ctx = ctx or mx.cpu()
    net = load_net(cfg, kind, path, [ctx])
    norm = stored.get("normalization")
    if norm is None:  # a run from before config.json recorded it: ask its dataset
        from .data import load_dataset

        splits = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
        norm = dict(mean=splits.mean, std=splits.std, input_size=input_size(splits))
    return LoadedRun(net, cfg, stored.get("class_names", []), norm["mean"], norm["std"],
                     norm["input_size"], path, ctx)


def input_size(splits):
    """The (H, W) of the images a dataset's network takes."""
    image, _ = splits.train[0]
    return list(np.asarray(image).shape[:2])
