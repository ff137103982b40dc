r"""Cross-batch memory (Wang et al., CVPR 2020, "XBM"), as pytorch-metric-learning 2.9's
``CrossBatchMemory``: a pair loss scored against the embeddings of the last batches too.

Each call, the batch's embeddings (without gradient) and labels are written into a ring buffer of
``memory_size`` rows, oldest first out; then every embedding of the batch (an anchor, with
gradient) is paired with every row of the filled memory (the references, the batch just written
included): same label a positive, another label a negative, and each anchor's pair with its own
copy left out. The wrapped loss scores the anchors x references similarities
(:meth:`dml.losses.similarity._SimilarityLoss.score`), so a batch of B sees B x M pairs instead of
B x B, at the cost of one B x M product. With a ``miner`` (``MultiSimilarityMiner``) only the
mined pairs of the batch against the memory count.

The online contrastive loss (the XBM paper's own headline loss) is wrapped the same way: its
Hadsell terms over the anchors x references pairs (``all_positive``: every positive and negative
pair; ``hard_negative``: every positive pair and as many of the closest negative pairs), on the
loss's distance (:func:`contrastive_memory_loss`).

Several devices: the engine gathers the devices' embeddings into one batch before the loss, so the
memory holds the whole batch. Several workers (``dist_sync``): ``gather`` (the engine's
:meth:`dml.engine.Workers.all_gather`) makes every worker write every worker's embeddings, in
worker order, so all memories are equal; each worker's anchors are its own share of the batch.
"""
import mxnet as mx
import numpy as np
from mxnet import gluon

from .contrastive import OnlineContrastiveLoss
from ..distances import NORM_EPS, get_distance, unit_rows
from .mining import NoTupleWarnings, closest_pairs
from .similarity import _SimilarityLoss, NPairsLoss


_unit = unit_rows


def contrastive_memory_loss(x, labels, refs, ref_labels, own, margin=1.0, distance="euclidean",
                            selector="all_positive", pairs=None, need_grad=False,
                            on_no_pairs=None):
    r"""The online contrastive loss of anchors ``x`` (A x D) against fixed references ``refs``
    (M x D, the memory, which holds the anchors too: ``own[i]`` is anchor i's row, never one of
    its pairs): ``(loss, fraction, grad)``, the gradient (with ``need_grad``) reaching the anchors
    only; ``(0, 0, zeros)`` when there is no positive or no negative pair (and ``on_no_pairs()``
    is called).

    .. math:: L = \frac{1}{2(|P| + |N|)} \Big[ \sum_{(i,j) \in P} d(x_i, r_j)^2
              + \sum_{(i,j) \in N} \max(m - d(x_i, r_j), 0)^2 \Big]

    P: every (anchor, reference) of one label (``own`` left out); N: ``all_positive`` every pair
    of two labels, ``hard_negative`` the |P| closest of them (all if fewer). ``pairs``: a miner's
    ``(positive, negative)`` A x M masks instead. The distance has :mod:`dml.losses.distance`'s
    definitions (euclidean with its zero-safe square root, squared, cosine ``relu(1 - cos)``);
    one A x M product, a few passes over A x M, a second product for the gradient. With
    references equal to a batch, the loss and fraction are the in-batch loss's (every unordered
    pair counted twice, as (i, j) and (j, i)); the gradient is half of it, reaching anchors only.
    """
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float32)
    if not np.isfinite(x).all():
        nan = float("nan")
        return nan, nan, (np.full_like(x, nan) if need_grad else None)
    refs = np.ascontiguousarray(refs, dtype=x.dtype)
    labels, ref_labels = np.asarray(labels).reshape(-1), np.asarray(ref_labels).reshape(-1)
    rows = np.arange(len(x))
    if get_distance(distance).normalizes:
        (unit, norms), ref_unit = unit_rows(x, return_norms=True), unit_rows(refs)
        gap = 1 - unit @ ref_unit.T
        d = np.maximum(gap, 0)
    else:
        d = get_distance(distance).matrix(x, refs)
    if pairs is None:
        same = labels[:, None] == ref_labels[None, :]
        positive, negative = same, ~same
        positive[rows, own] = False
        if selector == "hard_negative":
            negative = closest_pairs(negative, d, int(positive.sum()))
        elif selector != "all_positive":
            raise ValueError("selector must be all_positive or hard_negative, not %r"
                             % (selector,))
    else:
        positive, negative = (np.asarray(m) > 0 for m in pairs)
        positive = positive.copy()
        positive[rows, own] = False
    num_pos, num_neg = int(positive.sum()), int(negative.sum())
    if num_pos == 0 or num_neg == 0:
        if on_no_pairs is not None:
            on_no_pairs()
        return 0.0, 0.0, (np.zeros_like(x) if need_grad else None)
    num = num_pos + num_neg
    hinge = np.maximum(margin - d, 0)
    d_pos, hinge_neg = d[positive].astype(np.float64), hinge[negative].astype(np.float64)
    loss = 0.5 * (np.square(d_pos).sum() + np.square(hinge_neg).sum()) / num
    fraction = (np.count_nonzero(d_pos) + np.count_nonzero(hinge_neg)) / num
    grad = None
    if need_grad:
        slope = (positive * d - negative * hinge) / x.dtype.type(num)  # dL / dd
        if distance == "cosine":  # d = 1 - u.r where positive: dd/du = -r
            slope *= gap > 0
            d_unit = -(slope @ ref_unit)
            grad = (d_unit - unit * np.einsum("ij,ij->i", unit, d_unit)[:, None]) / norms[:, None]
        else:  # squared: dd/dx = 2 (x - r); euclidean: (x - r) / d, 0 where d == 0
            if distance == "squared":
                weight = 2 * slope
            else:
                weight = np.divide(slope, d, out=np.zeros_like(slope), where=d > 0)
            grad = x * weight.sum(1)[:, None] - weight @ refs
    return float(loss), float(fraction), grad


class _MemoryScore(mx.autograd.Function):
    """The loss of a batch against fixed references as one recorded function: forward on the
    host (``score(x, need_grad=True)`` -> ``(loss, stat, grad)``:
    :func:`dml.losses.simop.memory_loss` or :func:`contrastive_memory_loss`), backward the
    gradient it computed, times the incoming one."""

    def __init__(self, score):
        super().__init__()
        self._score = score
        self._grad = None

    def forward(self, embeddings):
        value, stat, self._grad = self._score(embeddings.asnumpy(), need_grad=True)
        ctx = embeddings.context
        return (mx.nd.array([value], ctx=ctx, dtype="float64"),
                mx.nd.array([stat], ctx=ctx, dtype="float64"))

    def backward(self, loss_grad, stat_grad):
        scale = loss_grad.asnumpy().reshape(-1)[0]
        return mx.nd.array(self._grad * scale, ctx=loss_grad.context, dtype=self._grad.dtype)


class CrossBatchMemory(gluon.Block):
    """``CrossBatchMemory(loss, memory_size)(embeddings, labels)``: ``loss`` (a similarity loss
    of :mod:`dml.losses.similarity`: multi-similarity, circle, SupCon, NT-Xent, lifted structure;
    or :class:`~dml.losses.OnlineContrastiveLoss`) scored for the batch against the memory of the
    last ``memory_size`` embeddings; returns what ``loss`` returns. ``miner``: pairs mined between
    the batch and the memory (PML's
    ``miner(embeddings, labels, ref_emb, ref_labels)``). ``gather``: a function of the batch's
    ``(embeddings, labels)`` (numpy) returning every worker's, concatenated in worker order, and
    this worker's offset in them (None: one worker).

    The memory is state: :meth:`state` and :meth:`load_state` save and restore it with a
    checkpoint (a resumed run continues with the same memory)."""

    def __init__(self, loss, memory_size, miner=None, gather=None, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(loss, (_SimilarityLoss, OnlineContrastiveLoss))
                and not isinstance(loss, NPairsLoss)):
            raise ValueError("CrossBatchMemory wraps a pair loss (multi-similarity, circle, SupCon,"
                             " NT-Xent, lifted structure, online contrastive), not %s"
                             % type(loss).__name__)
        if not (isinstance(memory_size, (int, np.integer)) and memory_size >= 1):
            raise ValueError("memory_size must be a whole number >= 1, not %r" % (memory_size,))
        self.memory_size = int(memory_size)
        self.miner, self.gather = miner, gather
        self._no_pairs = NoTupleWarnings()  # batches of the contrastive loss without a pair
        with self.name_scope():
            self.loss = loss
        self.reset()

    def reset(self):
        """Empty the memory."""
        self._embeddings = None  # M x D float32, allocated on the first batch
        self._labels = np.zeros(self.memory_size, dtype=np.float64)
        self._next = 0  # the row the next embedding goes to
        self._filled = 0  # rows written so far (at most memory_size)

    @property
    def filled(self):
        return self._filled

    def enqueue(self, embeddings, labels):
        """Write ``embeddings`` (numpy N x D, N <= memory_size) and ``labels`` into the ring
        buffer; returns the rows they went to."""
        n = len(embeddings)
        if n > self.memory_size:
            raise ValueError("a batch of %d embeddings does not fit a memory of %d: memory_size "
                             "must be at least the batch (of every worker)" % (n, self.memory_size))
        if self._embeddings is None or self._embeddings.shape[1] != embeddings.shape[1]:
            self._embeddings = np.zeros((self.memory_size, embeddings.shape[1]), dtype=np.float32)
        rows = (self._next + np.arange(n)) % self.memory_size
        self._embeddings[rows] = embeddings
        self._labels[rows] = labels
        self._next = int((self._next + n) % self.memory_size)
        self._filled = min(self.memory_size, self._filled + n)
        return rows

    def references(self):
        """``(embeddings, labels)`` of the filled rows, in row order."""
        return self._embeddings[:self._filled], self._labels[:self._filled]

    def masks(self, x, labels, refs, ref_labels, own_rows):
        """The anchors x references ``(positive, negative)`` 0/1 masks (numpy float32): same
        label, another label, or the miner's pairs; never an anchor's own row."""
        if self.miner is None:
            positive = labels[:, None] == ref_labels[None, :]
            negative = ~positive
        else:
            a1, p, a2, n = self.miner(x, labels, refs, ref_labels)
            positive = np.zeros((len(x), len(refs)), dtype=bool)
            negative = np.zeros_like(positive)
            positive[a1, p] = True
            negative[a2, n] = True
        positive[np.arange(len(x)), own_rows] = False
        return positive.astype(np.float32), negative.astype(np.float32)

    def forward(self, embeddings, labels):
        """Enqueue the batch, then its loss against the memory: through the fused host operator
        (:func:`dml.losses.simop.memory_loss`: one A x M product and one pass) for every pair
        or the multi-similarity miner's; another miner's pairs through :meth:`score_in_operators`;
        the contrastive loss through :func:`contrastive_memory_loss`."""
        from mxnet import nd

        from ..miners import MultiSimilarityMiner
        from .simop import memory_loss

        x = embeddings.asnumpy()
        y = labels.asnumpy().reshape(-1).astype(np.float64)
        every_x, every_y, offset = (x, y, 0) if self.gather is None else self.gather(x, y)
        rows = self.enqueue(every_x, every_y)
        refs, ref_labels = self.references()
        own = rows[offset:offset + len(x)]
        loss_fn = self.loss
        if isinstance(loss_fn, OnlineContrastiveLoss):
            pairs = None if self.miner is None else self.masks(x, y, refs, ref_labels, own)

            # pylint: disable=protected-access
            margin, distance, selector = loss_fn._margin, loss_fn._distance, loss_fn._selector

            def score(z, need_grad):
                return contrastive_memory_loss(
                    z, y, refs, ref_labels, own, margin, distance, selector, pairs, need_grad,
                    on_no_pairs=lambda: self._no_pairs.warn(y, "positive and negative "
                                                            "pair with the memory"))
            returns_stat = loss_fn._return_active_fraction  # pylint: disable=protected-access
        elif self.miner is not None and not isinstance(self.miner, MultiSimilarityMiner):
            return self.score_in_operators(embeddings, labels, x, y, refs, ref_labels, own)
        else:
            epsilon = self.miner.epsilon if self.miner is not None else None

            def score(z, need_grad):
                return memory_loss(z, y, refs, ref_labels, own, loss_fn.kind,
                                   loss_fn.host_params(), epsilon, need_grad=need_grad)
            returns_stat = loss_fn._return_stat  # pylint: disable=protected-access
        loss, stat = _MemoryScore(score)(embeddings)
        loss = loss.astype(embeddings.dtype)
        stat = nd.BlockGrad(stat.astype(embeddings.dtype))
        return (loss, stat) if returns_stat else loss

    def score_in_operators(self, embeddings, labels, x, y, refs, ref_labels, own):
        """The same loss from MXNet operators on the mask of the pairs (any miner's): the
        reference the fused path is tested against."""
        import mxnet as mx
        from mxnet import nd

        ctx = embeddings.context
        pos, neg = self.masks(x, y, refs, ref_labels, own)
        ref_unit = nd.array(_unit(refs.astype(np.float64)), ctx=ctx, dtype=embeddings.dtype)
        unit = nd.L2Normalization(embeddings, mode="instance", eps=NORM_EPS)
        sim = nd.dot(unit, ref_unit, transpose_b=True)
        return self.loss.score(nd, sim, mx.nd.array(pos, ctx=ctx, dtype=embeddings.dtype),
                               mx.nd.array(neg, ctx=ctx, dtype=embeddings.dtype), embeddings,
                               labels)

    def state(self):
        """The memory as numpy arrays (for a checkpoint)."""
        embeddings = self._embeddings if self._embeddings is not None else np.zeros(
            (self.memory_size, 0), dtype=np.float32)
        return {"embeddings": embeddings, "labels": self._labels,
                "position": np.array([self._next, self._filled], dtype=np.int64)}

    def load_state(self, state):
        """Restore :meth:`state` (a checkpoint's memory); a memory of another size is a
        ``ValueError``."""
        embeddings = np.asarray(state["embeddings"], dtype=np.float32)
        labels = np.asarray(state["labels"], dtype=np.float64)
        position = np.asarray(state["position"], dtype=np.int64).reshape(-1)
        if len(embeddings) != self.memory_size or len(labels) != self.memory_size or \
                len(position) != 2 or not (0 <= position[1] <= self.memory_size):
            raise ValueError("the saved memory holds %d rows, not memory_size=%d"
                             % (len(embeddings), self.memory_size))
        self._embeddings = embeddings if embeddings.shape[1] else None
        self._labels = labels
        self._next, self._filled = int(position[0]) % self.memory_size, int(position[1])
