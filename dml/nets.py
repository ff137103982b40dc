"""Embedding networks."""
import os

from mxnet import base, gluon

from . import DmlError, error_summary


class EmbeddingNet(gluon.HybridBlock):
    """GluonCV backbone features -> Dense(embedding_dim) -> optional L2 normalization.

    ``backbone`` is a GluonCV model-zoo name whose model has a ``features`` block ending in global
    pooling (``resnet18_v1`` by default; ``cifar_resnet20_v1`` and friends work too).
    ``pretrained=True`` loads GluonCV's ImageNet weights for the backbone from the local model
    store ``root`` (``~/.mxnet/models``, the file GluonCV itself would download) and never
    downloads: a missing or unreadable file is a :class:`dml.DmlError`.
    """

    def __init__(self, embedding_dim=128, backbone="resnet18_v1", l2_normalize=False,
                 pretrained=False, root=None, **kwargs):
        super().__init__(**kwargs)
        self._l2_normalize = l2_normalize
        self.embedding_dim = embedding_dim
        with self.name_scope():
            self.features = backbone_features(backbone, pretrained, root)
            self.embedding = gluon.nn.Dense(embedding_dim, flatten=True)

    def hybrid_forward(self, F, x):
        x = self.embedding(self.features(x))
        if self._l2_normalize:
            x = F.L2Normalization(x, mode="instance")
        return x


class _TupleNet(gluon.HybridBlock):
    """Runs one shared ``EmbeddingNet`` on k inputs at once: the inputs are concatenated along the
    batch axis, embedded in one forward pass (one graph, BatchNorm statistics over the whole
    tuple batch) and split back, so the weights are shared by construction, not copied."""

    num_inputs = 2

    def __init__(self, embedding_net, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding_net = embedding_net

    def hybrid_forward(self, F, *inputs):
        joined = F.concat(*inputs, dim=0)
        return F.split(self.embedding_net(joined), num_outputs=self.num_inputs, axis=0)


class SiameseNet(_TupleNet):
    """``net(x1, x2) -> (e1, e2)`` with one shared :class:`EmbeddingNet` (``.embedding_net``)."""

    num_inputs = 2


class TripletNet(_TupleNet):
    """``net(anchor, positive, negative) -> (e_a, e_p, e_n)`` with one shared
    :class:`EmbeddingNet` (``.embedding_net``)."""

    num_inputs = 3


class ClassifierNet(gluon.HybridBlock):
    """``net(x) -> logits``: an :class:`EmbeddingNet` (``.embedding_net``) followed by a Dense
    classifier over ``num_classes``, for the softmax baseline. The embedding (the classifier's
    input, the penultimate layer) is what gets evaluated and exported."""

    def __init__(self, embedding_net, num_classes, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding_net = embedding_net
            self.classifier = gluon.nn.Dense(num_classes, in_units=embedding_net.embedding_dim)

    def hybrid_forward(self, F, x):
        return self.classifier(self.embedding_net(x))


class MarginClassifierNet(gluon.Block):
    """``net(x, labels) -> logits``: an :class:`EmbeddingNet` (``.embedding_net``) followed by a
    margin head (``.classifier``: ``dml.losses.ArcFace``, ``CosFace`` or ``SphereFace``), which
    needs the labels to put its margin on the target class; or by a proxy loss
    (``dml.losses.ProxyAnchorLoss``, ...), whose proxies then train and checkpoint as the head. A plain Block around two hybridized
    children, so that a head's own per-batch step (SphereFace's annealing) runs every call."""

    def __init__(self, embedding_net, head, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.embedding_net = embedding_net
            self.classifier = head

    def forward(self, x, labels):
        return self.classifier(self.embedding_net(x), labels)

    def set_iteration(self, iteration):
        """Resuming: the head's per-batch schedule (SphereFace's lambda) continues from here."""
        if hasattr(self.classifier, "set_iteration"):
            self.classifier.set_iteration(iteration)


def load_weights(block, path, ctx=None):
    """Load ``path`` into ``block``: a ``save_parameters`` file (structural names such as
    ``features.0.weight``) or a ``net.export`` params file (``arg:``/``aux:`` and each parameter's
    full name). Full names differ between processes only in the top block's prefix
    (``embeddingnet0_`` or ``embeddingnet3_``), which is matched by what follows it. The final
    checkpoint of a run is its export, so its weights are on disk once."""
    import mxnet as mx

    loaded = mx.nd.load(path)
    if not isinstance(loaded, dict) or any("." in key for key in loaded):
        block.load_parameters(path, ctx=ctx)
        return
    params = block.collect_params()

    def tail(name):  # the full name after the top block's prefix
        return name.split(":", 1)[-1].split("_", 1)[-1]

    ours = {tail(name): name for name in params.keys()}
    theirs = {tail(key): value for key, value in loaded.items()}
    if set(ours) != set(theirs):
        missing = sorted(set(ours) - set(theirs))
        extra = sorted(set(theirs) - set(ours))
        raise ValueError("%s holds other parameters than the network (%s)" % (path, "; ".join(
            part for part in ("missing %s" % ", ".join(missing[:3]) if missing else "",
                              "unexpected %s" % ", ".join(extra[:3]) if extra else "") if part)))
    params.load_dict({ours[key]: value for key, value in theirs.items()}, ctx=ctx)


def pretrained_file(name, root=None):
    """Where GluonCV's model store keeps ``name``'s ImageNet weights."""
    short_hash = import_gluoncv_model_zoo().model_store.short_hash
    root = os.path.expanduser(root or os.path.join(base.data_dir(), "models"))
    return os.path.join(root, "%s-%s.params" % (name, short_hash(name)))


def import_gluoncv_model_zoo():
    """``gluoncv.model_zoo``, imported without its side effect on Pillow: importing GluonCV
    (``gluoncv/data/mhp.py``) sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` for the whole
    process, and a PNG cut in half would then decode as a grey image and train."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        from gluoncv import model_zoo
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before
    return model_zoo


def backbone_features(name, pretrained=False, root=None):
    get_model = import_gluoncv_model_zoo().get_model

    try:
        net = get_model(name, pretrained=False)
    except ValueError as err:
        raise DmlError("unknown backbone %r (%s)" % (name, str(err).splitlines()[0])) from None
    if not hasattr(net, "features"):
        raise DmlError("backbone %r has no `features` block to embed from" % name)
    if pretrained:
        path = pretrained_file(name, root)
        if not os.path.isfile(path):
            raise DmlError("`pretrained` needs GluonCV's ImageNet weights for %s at %s (nothing is "
                           "downloaded): copy that file there, or drop `pretrained`" % (name, path))
        try:
            # GluonCV's file holds the classifier too: only the features are kept
            net.load_parameters(path, ignore_extra=True)
        except Exception as err:  # MXNet reports a wrong or corrupt file in several ways
            raise DmlError("cannot load %s as %s weights (%s): replace it with GluonCV's file"
                           % (path, name, error_summary(err))) from None
    return net.features
