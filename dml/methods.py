"""The methods registry: for each ``--method``, the network wrapper, the training data (sampler or
tuple dataset), the loss and one training forward pass.

Every method trains the same :class:`~dml.nets.EmbeddingNet`; the wrapper (``SiameseNet``,
``TripletNet``, ``ClassifierNet`` or none) only shapes the forward pass, and the embedding net is
what gets evaluated and exported, so the metrics of all methods mean the same thing.
"""
import mxnet as mx
from mxnet import autograd, gluon

from . import registry
from .data import BalancedBatchSampler, PairDataset, ShuffledBatchSampler, TripletDataset
from .losses import (ContrastiveLoss, OnlineContrastiveLoss, OnlineTripletLoss, TripletBatchAllLoss,
                     TripletBatchHardLoss, TripletMarginLoss, TripletSemiHardLoss)
from .losses.heads import MARGIN_HEADS
from .losses.proxies import NormalizedSoftmaxLoss, ProxyAnchorLoss, ProxyNCALoss, SoftTripleLoss
from .losses.similarity import (CircleLoss, GeneralizedLiftedStructureLoss, MultiSimilarityLoss,
                                NPairsLoss, SupConLoss, _SimilarityLoss)
from .losses.margin import MarginLoss
from .losses.memory import CrossBatchMemory
from .miners import DistanceWeightedMiner, MultiSimilarityMiner
from .nets import ClassifierNet, MarginClassifierNet, SiameseNet, TripletNet
from .parallel import (ParallelStep, _backward_device, _recorded,  # noqa: F401 (public names)
                       gather_embeddings, in_threads)


class Method:
    """A P x K method: batches of ``n_classes`` classes x ``n_samples`` images, the embedding net
    as is, ``loss(embeddings, labels)``."""

    name = ""
    summary = ""  # one line, logged when training starts
    batch_unit = "images"  # what --batch-size counts, for the methods that take it
    stat = "active_fraction"  # the second value the loss reports, logged as train/<stat>
    selectors = ()  # the values --selector takes, the first one the default
    pk_batches = True
    verification = False  # reports verification_auc on its fixed validation pairs
    scaled = False  # takes --scale (the margin-softmax heads)

    def __init__(self, name, summary, loss_cls, stat="active_fraction", selectors=(),
                 selector_arg=None, memory=False):
        self.name, self.summary, self._loss_cls = name, summary, loss_cls
        self.stat, self.selectors, self._selector_arg = stat, selectors, selector_arg
        self.takes_memory = memory  # --memory-size wraps the loss in a CrossBatchMemory

    def build_model(self, net, num_classes, ctx, margin=None, scale=None, **_):
        """What the batches run through: the embedding net itself, or a wrapper around it."""
        return net

    def check_options(self, margin, scale):
        """Raise ValueError for a margin or scale the method cannot take (before anything is
        written)."""

    def build_loss(self, margin=1.0, distance="euclidean", selector=None, miner=None,
                   memory_size=0):
        kwargs = dict(margin=margin, distance=distance, return_stat=True)
        if self._selector_arg:
            kwargs[self._selector_arg] = selector or self.selectors[0]
        loss = self._loss_cls(**kwargs)
        return CrossBatchMemory(loss, memory_size) if memory_size else loss

    def train_dataset(self, dataset, seed=0):
        return dataset

    def val_dataset(self, dataset, seed=0):
        """A fixed set to report a validation loss on each epoch, or None."""
        return None

    def batch_sampler(self, dataset, n_classes=0, n_samples=0, batch_size=0, seed=0, num_parts=1,
                      part_index=0):
        """P x K batches of ``n_classes`` x ``n_samples`` (``batch_size`` is for the plain-batch
        methods); ``num_parts`` > 1: worker ``part_index``'s disjoint shard."""
        return BalancedBatchSampler(dataset.labels, n_classes, n_samples, seed=seed,
                                    num_parts=num_parts, part_index=part_index)

    def forward(self, model, loss_fn, images, labels):
        """One device's share of a batch -> (loss, stat), both 1-element arrays."""
        return loss_fn(model(images), labels)

    def forward_batch(self, model, loss_fn, parts, ctx):
        """A whole batch split over the devices ``ctx`` (``parts[i]``: the arrays on ``ctx[i]``)
        -> ``(heads, loss, stat)``: the outputs to back-propagate, and the batch loss and stat on
        ``ctx[0]``.

        Online mining must see the whole batch, not each device's slice: every device embeds its
        slice, the embeddings are copied to ``ctx[0]`` (a recorded copy, so the gradient flows
        back to each device) and concatenated in batch order, and one loss call mines and scores
        the full B x B batch. Its gradient with respect to each device's parameters is that
        device's share of the full-batch gradient: the kvstore sums them.
        """
        embeddings, labels = gather_embeddings(model, parts, ctx)
        loss, stat = loss_fn(embeddings, labels)
        return [loss], loss, stat

    def warm_up(self, model, loss_fn, parts):
        """One pass of each device's part in inference mode, one after another: builds the
        hybridized graphs and finishes deferred initialization, which are not safe to do in
        several threads at once (inference mode changes no state)."""
        for images, _ in parts:
            model(images)

    def _gathered(self, model):
        """The block each device runs before the embeddings are gathered."""
        return model

    def _gathered_loss(self, model, loss_fn, embeddings, labels):
        return loss_fn(embeddings, labels)

    def _device_term(self, model, ctx):
        """A term each device other than ``ctx[0]`` back-propagates, or None."""
        return None

    def parallel_step(self, model, loss_fn, parts, ctx):
        """:meth:`forward_batch` on devices that share BatchNorm statistics: each device embeds
        its part in a thread; the loss of the whole batch runs on ``ctx[0]`` on a detached copy of
        the gathered embeddings; its gradient is then sent back through each device's part, in a
        thread each (the chain rule split at the embeddings)."""
        outputs = in_threads(lambda images: _recorded(self._gathered(model), images),
                             [(images,) for images, _ in parts])
        joined = mx.nd.concat(*[o.detach().as_in_context(ctx[0]) for o in outputs], dim=0)
        labels = mx.nd.concat(*[lab.as_in_context(ctx[0]) for _, lab in parts], dim=0)
        joined.attach_grad()
        with autograd.record():
            loss, stat = self._gathered_loss(model, loss_fn, joined, labels)

        def backward():
            loss.backward()
            starts = [0]
            for out in outputs:
                starts.append(starts[-1] + out.shape[0])
            grads = [joined.grad[a:b].as_in_context(out.context)
                     for out, a, b in zip(outputs, starts, starts[1:])]
            terms = [None] + [self._device_term(model, c) for c in ctx[1:]]
            in_threads(_backward_device, list(zip(outputs, grads, terms)))

        return ParallelStep(loss, stat, backward)


class _PlainBatches(Method):
    """Shuffled batches of ``batch_size`` samples (images, or tuples for the subclasses)."""

    pk_batches = False

    def batch_sampler(self, dataset, n_classes=0, n_samples=0, batch_size=0, seed=0, num_parts=1,
                      part_index=0):
        return ShuffledBatchSampler(len(dataset), batch_size, seed=seed,
                                    num_parts=num_parts, part_index=part_index)

    def forward_batch(self, model, loss_fn, parts, ctx):
        """Per-sample losses: each device scores its slice, weighted by its share of the batch
        (slices may differ by one sample), so the summed gradient is the full-batch mean's."""
        total = sum(arrays[0].shape[0] for arrays in parts)
        heads, loss, stat = [], 0, 0
        for arrays in parts:
            share = arrays[0].shape[0] / total
            part_loss, part_stat = self.forward(model, loss_fn, *arrays)
            heads.append(part_loss * share)
            loss = loss + heads[-1].as_in_context(ctx[0])
            stat = stat + (part_stat * share).as_in_context(ctx[0])
        return heads, loss, stat

    def warm_up(self, model, loss_fn, parts):
        for arrays in parts:
            self.forward(model, loss_fn, *arrays)

    def parallel_step(self, model, loss_fn, parts, ctx):
        """:meth:`forward_batch` with each device's forward and backward pass in a thread."""
        total = sum(arrays[0].shape[0] for arrays in parts)

        def device(*arrays):
            share = arrays[0].shape[0] / total
            with autograd.record():
                part_loss, part_stat = self.forward(model, loss_fn, *arrays)
                head = part_loss * share
            return head, part_stat * share

        results = in_threads(device, [tuple(arrays) for arrays in parts])
        loss = sum(head.as_in_context(ctx[0]) for head, _ in results)
        stat = sum(part_stat.as_in_context(ctx[0]) for _, part_stat in results)
        return ParallelStep(loss, stat, lambda: in_threads(lambda head: head.backward(),
                                                           [(head,) for head, _ in results]))


class _TupleMethod(_PlainBatches):
    """Random tuples over the dataset (fresh each epoch, fixed for validation), embedded by a
    wrapper around the shared net, scored by a loss on the tuple's embeddings."""

    wrapper = tuple_dataset = tuple_loss = None

    def build_model(self, net, num_classes, ctx, margin=None, scale=None, **_):
        return self.wrapper(net)

    def build_loss(self, margin=1.0, distance="euclidean", selector=None, miner=None,
                   memory_size=0):
        return self.tuple_loss(margin=margin, distance=distance, return_stat=True)

    def train_dataset(self, dataset, seed=0):
        return self.tuple_dataset(dataset, train=True, seed=seed)

    def val_dataset(self, dataset, seed=0):
        return self.tuple_dataset(dataset, train=False, seed=seed)


class SiameseMethod(_TupleMethod):
    batch_unit = "pairs"
    verification = True
    wrapper, tuple_dataset, tuple_loss = SiameseNet, PairDataset, ContrastiveLoss

    def forward(self, model, loss_fn, x1, x2, same):
        e1, e2 = model(x1, x2)
        return loss_fn(e1, e2, same)


class TripletMethod(_TupleMethod):
    batch_unit = "triplets"
    wrapper, tuple_dataset, tuple_loss = TripletNet, TripletDataset, TripletMarginLoss

    def forward(self, model, loss_fn, anchor, positive, negative, labels):
        return loss_fn(*model(anchor, positive, negative))


class SoftmaxMethod(_PlainBatches):
    """Cross-entropy classification; the classifier's input (the embedding) is evaluated."""

    def build_model(self, net, num_classes, ctx, margin=None, scale=None, **_):
        model = ClassifierNet(net, num_classes)
        model.classifier.initialize(mx.init.Xavier(), ctx=ctx)
        return model

    def build_loss(self, margin=1.0, distance="euclidean", selector=None, miner=None,
                   memory_size=0):
        return gluon.loss.SoftmaxCrossEntropyLoss()

    def forward(self, model, loss_fn, images, labels):
        logits = model(images)
        loss = loss_fn(logits, labels).mean()
        accuracy = (logits.argmax(axis=1) == labels).mean()
        return loss, accuracy


class MarginSoftmaxMethod(SoftmaxMethod):
    """Softmax cross-entropy over a margin head (ArcFace, CosFace, SphereFace): ``--margin`` is
    its m and ``--scale`` its s. The head is saved as ``classifier-<epoch>.params``; the embedding
    before it is what is evaluated and exported."""

    scaled = True

    def __init__(self, name, summary, head_cls):
        super().__init__(name, summary, None, stat="accuracy")
        self.head_cls = head_cls

    def build_head(self, num_classes, margin, scale):
        return self.head_cls(num_classes, s=scale, m=margin)

    def check_options(self, margin, scale):
        self.build_head(2, margin, scale)

    def build_model(self, net, num_classes, ctx, margin=None, scale=None, **_):
        model = MarginClassifierNet(net, self.build_head(max(num_classes, 2), margin, scale))
        model.classifier.initialize(ctx=ctx)
        return model

    def forward(self, model, loss_fn, images, labels):
        logits = model(images, labels)
        loss = loss_fn(logits, labels).mean()
        accuracy = (logits.argmax(axis=1) == labels).mean()  # on the margin logits: a lower bound
        return loss, accuracy


class MinedLoss(gluon.Block):
    """``loss(embeddings, labels, indices=miner(embeddings, labels))``: a pair loss on the pairs
    its miner chooses (the miner works on the host, without gradient)."""

    def __init__(self, loss, miner, **kwargs):
        super().__init__(**kwargs)
        self.miner = miner
        with self.name_scope():
            self.loss = loss

    def forward(self, embeddings, labels):
        if isinstance(self.miner, MultiSimilarityMiner) and hasattr(
                self.loss, "mined_by_multi_similarity"):  # the paper's pairing, mined in one pass
            return self.loss.mined_by_multi_similarity(embeddings, labels, self.miner.epsilon)
        return self.loss(embeddings, labels, indices=self.miner(embeddings, labels))


MINER_CLASSES = {"none": None, "multi_similarity": MultiSimilarityMiner,
                 "distance_weighted": DistanceWeightedMiner}
MINERS = MINER_CLASSES  # its older name (dml.registry.MINERS is the tuple of the names)


def _margin_kwargs(margin_arg, margin):
    """``--margin`` as the loss's own parameter (circle's ``m``, lifted's ``neg_margin``, ...);
    nothing for a loss without one."""
    return {margin_arg: margin} if margin_arg and margin is not None else {}


class PairLossMethod(Method):
    """A P x K method whose loss scores pairs by cosine similarity (dml.losses.similarity):
    ``--margin`` is the loss's ``margin_arg`` (none for some), ``--miner`` restricts the pairs."""

    def __init__(self, name, summary, loss_cls, margin_arg=None, miners=False,
                 stat="similarity_gap"):
        super().__init__(name, summary, loss_cls, stat=stat)
        self.margin_arg, self.takes_miner = margin_arg, miners
        # a cross-batch memory scores the batch against past batches through the loss's
        # similarity core (every similarity loss but N-pairs, which picks its own pairs)
        self.takes_memory = issubclass(loss_cls, _SimilarityLoss) and loss_cls is not NPairsLoss

    def build_loss(self, margin=None, distance="cosine", selector=None, miner=None,
                   memory_size=0):
        """The loss; with ``memory_size`` wrapped in a :class:`CrossBatchMemory` (the miner then
        mines the batch against the memory)."""
        loss = self._loss_cls(return_stat=True, **_margin_kwargs(self.margin_arg, margin))
        mine = get_miner(miner)
        if memory_size:
            return CrossBatchMemory(loss, memory_size, miner=mine)
        return loss if mine is None else MinedLoss(loss, mine)

    def check_options(self, margin, scale):
        self.build_loss(margin)


class ModelLoss(gluon.HybridBlock):
    """The loss slot of a method whose loss lives in its model (the proxy losses: their proxies
    are the model's ``classifier``, trained, checkpointed and resumed with it)."""

    def hybrid_forward(self, F, x):
        return x


class ProxyMethod(_PlainBatches):
    """Shuffled batches; the loss holds learnable proxies (``model.classifier``), trained with
    ``--loss-lr-mult`` times the learning rate and saved as ``classifier-<id>.params``."""

    def __init__(self, name, summary, loss_cls, margin_arg=None):
        super().__init__(name, summary, loss_cls, stat="accuracy")
        self.margin_arg = margin_arg

    def build_proxies(self, num_classes, embedding_dim, margin=None, loss_lr_mult=1.0):
        return self._loss_cls(num_classes, embedding_dim, lr_mult=loss_lr_mult, return_stat=True,
                              **_margin_kwargs(self.margin_arg, margin))

    def check_options(self, margin, scale):
        self.build_proxies(2, 2, margin)

    def build_model(self, net, num_classes, ctx, margin=None, scale=None, loss_lr_mult=1.0, **_):
        model = MarginClassifierNet(net, self.build_proxies(max(num_classes, 2), net.embedding_dim,
                                                            margin, loss_lr_mult))
        model.classifier.initialize(ctx=ctx)
        return model

    def build_loss(self, margin=None, distance="cosine", selector=None, miner=None,
                   memory_size=0):
        return ModelLoss()

    def forward(self, model, loss_fn, images, labels):
        return model(images, labels)

    def forward_batch(self, model, loss_fn, parts, ctx):
        """The loss of the whole batch, on ``ctx[0]`` (Proxy-Anchor's sums over the batch are not
        a mean of per-device losses): the embeddings are gathered as for the P x K methods, and
        every other device's proxies get a zero gradient term, so that each copy is updated with
        the one full-batch gradient the kvstore sums."""
        embeddings, labels = gather_embeddings(model.embedding_net, parts, ctx)
        loss, stat = model.classifier(embeddings, labels)
        zeros = [(model.classifier.proxies.data(c) * 0).sum() for c in ctx[1:]]
        return [loss] + zeros, loss, stat

    def warm_up(self, model, loss_fn, parts):
        for images, _ in parts:  # (the proxies run on ctx[0] only, in the calling thread)
            model.embedding_net(images)

    parallel_step = Method.parallel_step  # gathered, as the P x K methods

    def _gathered(self, model):
        return model.embedding_net

    def _gathered_loss(self, model, loss_fn, embeddings, labels):
        return model.classifier(embeddings, labels)

    def _device_term(self, model, ctx):
        return lambda: (model.classifier.proxies.data(ctx) * 0).sum()


METHODS = {m.name: m for m in [
    SiameseMethod("siamese", "siamese net, contrastive loss on random pairs", None),
    TripletMethod("triplet", "triplet net, triplet loss on random triplets", None),
    Method("triplet_semihard", "triplet loss, online semi-hard negatives (FaceNet)",
           TripletSemiHardLoss),
    Method("triplet_batch_hard", "triplet loss, hardest positive and negative per anchor",
           TripletBatchHardLoss),
    Method("triplet_batch_all", "triplet loss over every triplet with positive loss",
           TripletBatchAllLoss, stat="positive_triplet_fraction"),
    Method("online_contrastive", "contrastive loss on pairs mined in the batch",
           OnlineContrastiveLoss, selectors=registry.METHOD_SELECTORS["online_contrastive"],
           selector_arg="pair_selector", memory=True),
    Method("online_triplet", "triplet loss on triplets mined in the batch",
           OnlineTripletLoss, selectors=registry.METHOD_SELECTORS["online_triplet"],
           selector_arg="selector"),
    SoftmaxMethod("softmax", "softmax cross-entropy classifier, penultimate layer as embedding",
                  None, stat="accuracy"),
    MarginSoftmaxMethod("arcface", "softmax over an additive angular margin head (ArcFace)",
                        MARGIN_HEADS["arcface"]),
    MarginSoftmaxMethod("cosface", "softmax over an additive cosine margin head (CosFace)",
                        MARGIN_HEADS["cosface"]),
    MarginSoftmaxMethod("sphereface", "softmax over a multiplicative angular margin head "
                        "(SphereFace, annealed)", MARGIN_HEADS["sphereface"]),
    PairLossMethod("multi_similarity", "multi-similarity loss on the multi-similarity miner's "
                   "pairs", MultiSimilarityLoss, miners=True),
    PairLossMethod("circle", "circle loss over every pair", CircleLoss, margin_arg="m",
                   miners=True),
    PairLossMethod("supcon", "supervised contrastive loss over every pair", SupConLoss,
                   miners=True),
    PairLossMethod("lifted", "generalized lifted-structure loss over every pair",
                   GeneralizedLiftedStructureLoss, margin_arg="neg_margin", miners=True),
    PairLossMethod("npairs", "N-pair loss, one pair per class", NPairsLoss),
    PairLossMethod("margin", "margin loss on distance-weighted triplets (Wu et al.)", MarginLoss,
                   margin_arg="margin", miners=True, stat="active_fraction"),
    ProxyMethod("proxy_anchor", "Proxy-Anchor loss, one learnable proxy per class",
                ProxyAnchorLoss, margin_arg="margin"),
    ProxyMethod("proxy_nca", "ProxyNCA loss, one learnable proxy per class", ProxyNCALoss),
    ProxyMethod("normalized_softmax", "normalized softmax over learnable class weights",
                NormalizedSoftmaxLoss),
    ProxyMethod("soft_triple", "SoftTriple loss, 10 learnable centres per class",
                SoftTripleLoss, margin_arg="margin"),
    MarginSoftmaxMethod("subcenter_arcface", "softmax over an ArcFace head with 3 sub-centers "
                        "per class", MARGIN_HEADS["subcenter_arcface"]),
]}


# dml.registry lists the same names for the CLI without importing MXNet:
# tests/test_layers.py::test_the_registry_and_the_methods_table_name_the_same_things keeps them
# in step.


def _unknown(kind, name, names):
    return ValueError("unknown %s %r: choose one of %s" % (kind, name, ", ".join(names)))


def get_method(name):
    """The :class:`Method` named ``name`` (GluonCV's ``get_model`` style: an unknown name is a
    ValueError listing the valid ones)."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise _unknown("method", name, METHODS) from None


def get_miner(name):
    """A new miner named ``name`` (``none`` or None: no miner); an unknown name is a ValueError
    listing the valid ones."""
    if name is None or name == "none":
        return None
    try:
        return MINER_CLASSES[name]()
    except (KeyError, TypeError):
        raise _unknown("miner", name, MINER_CLASSES) from None
