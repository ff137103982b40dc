"""Embedding networks."""
import os

from mxnet import base, gluon

from .environ import offline
from .errors import DmlError, error_summary


class EmbeddingNet(gluon.HybridBlock):
    """GluonCV backbone features -> Dense(embedding_dim) -> optional L2 normalization.

    ``backbone`` is a GluonCV model-zoo name whose model has a ``features`` block ending in global
    pooling (``resnet18_v1`` by default, ``resnet50_v1``; ``cifar_resnet20_v1`` and friends work
    too), or ``googlenet`` (its convolutions and inception blocks, then global average pooling).
    ``pretrained=True`` loads GluonCV's ImageNet weights for the backbone from the local model
    store ``root`` (``~/.mxnet/models``), downloading them once through GluonCV's model store
    when they are missing (:func:`fetch_pretrained`); a failed download or an unreadable file is
    a :class:`dml.DmlError` naming the file. ``freeze_bn``: every BatchNorm of the backbone runs in
    inference mode (its running statistics, never updated) and its scale and shift do not train,
    as the zero-shot benchmark papers train a pretrained backbone.
    """

    def __init__(self, embedding_dim=128, backbone="resnet18_v1", l2_normalize=False,
                 pretrained=False, root=None, freeze_bn=False, sync_devices=0, stem="imagenet",
                 **kwargs):
        super().__init__(**kwargs)
        self._l2_normalize = l2_normalize
        self.embedding_dim = embedding_dim
        self._backbone, self._stem = backbone, stem
        # training on several devices: each BatchNorm normalizes over the whole batch
        self.sync_devices = int(sync_devices) if sync_devices > 1 and not freeze_bn else 0
        with self.name_scope():
            self.features = backbone_features(backbone, pretrained, root, self.sync_devices,
                                              stem)
            if stem == "small":
                small_stem(self.features, self.prefix)
            self.embedding = gluon.nn.Dense(embedding_dim, flatten=True)
        if freeze_bn:
            freeze_batchnorm(self.features)

    def deployable(self):
        """This network as one device runs it: itself, or with ``sync_devices`` a twin with
        plain BatchNorm layers, the same parameter names and a copy of every value (on the first
        context), hybridized, for ``net.export`` and ONNX (which know no SyncBatchNorm). In
        inference both compute the same: BatchNorm then uses its running statistics."""
        if not self.sync_devices:
            return self
        # pylint: disable=protected-access
        source = self._collect_params_with_prefix()
        ctx = next(iter(source.values())).list_ctx()[:1]
        twin = EmbeddingNet(self.embedding_dim, self._backbone, self._l2_normalize,
                            stem=self._stem, prefix=self.prefix)
        for name, param in twin._collect_params_with_prefix().items():
            param._load_init(source[name].data(ctx[0]), ctx)
        twin.hybridize()
        return twin

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


# GoogLeNet's layers up to its last inception block: its own head pools 7 x 7 (224 x 224 input
# only) and classifies; the embedding pools globally instead
_GOOGLENET_FEATURES = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a",
                       "inception3b", "maxpool3", "inception4a", "inception4b", "inception4c",
                       "inception4d", "inception4e", "maxpool4", "inception5a", "inception5b")


def _synced_batchnorm():
    """SyncBatchNorm named as BatchNorm (``batchnorm<N>_gamma``, ...): a network trained on
    several devices has the parameter names of the one-device network, so checkpoints, exports
    and evaluation are the same whatever the devices."""
    from mxnet.gluon.contrib.nn import SyncBatchNorm

    class SyncedBatchNorm(SyncBatchNorm):
        """BatchNorm over the whole batch split across ``num_devices`` devices (the devices
        exchange their sums): the statistics one device would compute on the whole batch."""

        def _alias(self):
            return "batchnorm"

    return SyncedBatchNorm


from .registry import STEMS  # noqa: E402


def small_stem(features, scope_prefix=""):
    """ResNet's first convolution (7 x 7, stride 2) replaced by a 3 x 3 one of stride 1 (the
    same name, no bias), its max pool kept: the input is downsampled 2x before the first stage
    instead of 4x, so a 32 x 32 image reaches the last stage as 2 x 2 cells, not 1 x 1. Between
    ImageNet's stem and CIFAR ResNets' (no pooling, 16x the compute at 32 px): about 2.3x the
    compute of ImageNet's stem (doc/unseen.md)."""
    old = features._children["0"]  # pylint: disable=protected-access
    if not isinstance(old, gluon.nn.Conv2D) or old._kwargs["kernel"] != (7, 7):
        raise DmlError("stem=small replaces a ResNet's 7 x 7 first convolution; this backbone's "
                       "first layer is %s" % type(old).__name__)
    # the old layer's name (created in the scope of ``scope_prefix``, the block building it)
    conv = gluon.nn.Conv2D(old._channels, 3, 1, 1, use_bias=False, in_channels=3,
                           prefix=old.prefix[len(scope_prefix):])
    features._children["0"] = conv  # pylint: disable=protected-access
    return features


def backbone_features(name, pretrained=False, root=None, sync_devices=0, stem="imagenet"):
    get_model = import_gluoncv_model_zoo().get_model
    if stem not in STEMS:
        raise DmlError("unknown stem %r: choose one of %s" % (stem, ", ".join(STEMS)))
    if stem == "small" and pretrained:
        raise DmlError("stem=small replaces the first convolution, which `pretrained` weights "
                       "need: train the small stem from random weights, or keep stem=imagenet")

    norm = {}
    if sync_devices > 1:
        norm = dict(norm_layer=_synced_batchnorm(), norm_kwargs={"num_devices": sync_devices})
    try:
        net = get_model(name, pretrained=False, **norm)
    except ValueError as err:
        raise DmlError("unknown backbone %r (%s)" % (name, str(err).splitlines()[0])) from None
    if not hasattr(net, "features") and not all(hasattr(net, n) for n in _GOOGLENET_FEATURES):
        raise DmlError("backbone %r has no `features` block to embed from" % name)
    if pretrained:
        path = fetch_pretrained(name, root)
        try:
            # GluonCV's file holds the classifier too: only the features are kept
            net.load_parameters(path, ignore_extra=True)
        except Exception as err:  # MXNet reports a wrong or corrupt file in several ways
            raise DmlError("cannot load %s as %s weights (%s): replace it with GluonCV's file"
                           % (path, name, error_summary(err))) from None
    if hasattr(net, "features"):
        return net.features  # (EmbeddingNet puts a small stem on it: small_stem)
    if stem == "small":
        raise DmlError("stem=small applies to the ResNets, not %s" % name)
    features = gluon.nn.HybridSequential(prefix="")
    for child in _GOOGLENET_FEATURES:
        features.add(getattr(net, child))
    features.add(gluon.nn.GlobalAvgPool2D())
    return features


def freeze_batchnorm(block):
    """Every BatchNorm below ``block`` in inference mode for good (``use_global_stats``: the
    running mean and variance normalize, also in training, and are never updated) with its gamma
    and beta frozen (``grad_req='null'``). Call before hybridizing. Returns the count."""
    count = 0
    for child in _descendants(block):
        if isinstance(child, gluon.nn.BatchNorm):
            child._kwargs["use_global_stats"] = True  # pylint: disable=protected-access
            for param in (child.gamma, child.beta):
                param.grad_req = "null"
            count += 1
    return count


def _descendants(block):
    for child in block._children.values():  # pylint: disable=protected-access
        yield child
        yield from _descendants(child)


PRETRAINED_TIMEOUT = 30  # seconds without a byte before the one download attempt gives up
MAX_PRETRAINED_BYTES = 1 << 30


def fetch_pretrained(name, root=None):
    """The path of GluonCV's ImageNet weights for ``name`` in the model store ``root``
    (``~/.mxnet/models``), downloaded when missing: one attempt at GluonCV's own address
    (``$MXNET_GLUON_REPO``, default Apache's S3 mirror) with a 30 s timeout, the zip checked
    against GluonCV's SHA-1 and unpacked under a temporary name, then renamed. Offline
    (``DML_OFFLINE=1``, or no network) it fails at once with a :class:`dml.DmlError` that names
    the exact file to copy there."""
    path = pretrained_file(name, root)
    if os.path.isfile(path):
        return path
    advice = "copy GluonCV's file there (on a machine with a network: python -c \"from " \
             "gluoncv.model_zoo import get_model_file; print(get_model_file('%s'))\"), or start " \
             "from random weights (`no_pretrained`)" % name
    if offline():
        raise DmlError("`pretrained` needs GluonCV's ImageNet weights for %s at %s and downloads "
                       "are off (DML_OFFLINE=1): %s" % (name, path, advice))
    try:
        url = download_pretrained(name, path)
    except DmlError:
        raise
    except Exception as err:  # URLError, timeouts, HTTP errors, a full disk, ...
        raise DmlError("`pretrained` needs GluonCV's ImageNet weights for %s at %s; the download "
                       "from %s failed (%s): %s" % (name, path, pretrained_url(name),
                                                   _reason(err), advice)) from None
    import logging

    logging.getLogger("dml").info("downloaded %s's ImageNet weights from %s to %s", name, url,
                                  path)
    return path


def _reason(err):
    reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
    return str(reason).strip().splitlines()[0][:160] if str(reason).strip() else \
        type(err).__name__


def pretrained_url(name):
    """GluonCV's download address of ``name``'s weights (honours ``$MXNET_GLUON_REPO``)."""
    store = import_gluoncv_model_zoo().model_store
    repo = os.environ.get("MXNET_GLUON_REPO", store.apache_repo_url)
    if not repo.endswith("/"):
        repo += "/"
    return store._url_format.format(  # pylint: disable=protected-access
        repo_url=repo, file_name="%s-%s" % (name, store.short_hash(name)))


def download_pretrained(name, path):
    """One download of ``name``'s zip to ``path`` (see :func:`fetch_pretrained`); returns the
    address. A file whose SHA-1 is not GluonCV's is refused and nothing is left behind."""
    import shutil
    import tempfile
    import urllib.request
    import zipfile

    store = import_gluoncv_model_zoo().model_store
    url = pretrained_url(name)
    expected = store._model_sha1[name]  # pylint: disable=protected-access
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-download-") as tmp:
        archive = os.path.join(tmp, "weights.zip")
        with urllib.request.urlopen(url, timeout=PRETRAINED_TIMEOUT) as response, \
                open(archive, "wb") as out:
            copied = 0
            for block in iter(lambda: response.read(1 << 20), b""):
                copied += len(block)
                if copied > MAX_PRETRAINED_BYTES:
                    raise DmlError("%s sent more than %d MB, more than any GluonCV model: "
                                   "refused" % (url, MAX_PRETRAINED_BYTES >> 20))
                out.write(block)
        member = os.path.basename(path)
        try:
            with zipfile.ZipFile(archive) as zf:
                if member not in zf.namelist():
                    raise DmlError("%s holds no %s: refused" % (url, member))
                with zf.open(member) as src, open(os.path.join(tmp, member), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile:
            raise DmlError("%s is not a zip file: refused" % url) from None
        if not store.check_sha1(os.path.join(tmp, member), expected):
            raise DmlError("the weights downloaded from %s do not have GluonCV's SHA-1 %s: "
                           "refused (nothing was kept at %s)" % (url, expected, path))
        os.replace(os.path.join(tmp, member), path)
    return url
