r"""Cross-batch memory (Wang et al., CVPR 2020, "XBM"), as pytorch-metric-learning 2.9's
``CrossBatchMemory``: a pair loss scored against the embeddings of the last batches too.

Each call, the batch's embeddings (without gradient) and labels are written into a ring buffer of
``memory_size`` rows, oldest first out; then every embedding of the batch (an anchor, with
gradient) is paired with every row of the filled memory (the references, the batch just written
included): same label a positive, another label a negative, and each anchor's pair with its own
copy left out. The wrapped loss scores the anchors against the references through its public
``score_references`` (PML's ``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)``;
the memory reads nothing else of it), so a batch of B sees B x M pairs instead of B x B, at the
cost of one B x M product. With a ``miner`` (``MultiSimilarityMiner``) only the
mined pairs of the batch against the memory count.

The online contrastive loss (the XBM paper's own headline loss) is wrapped the same way: its
Hadsell terms over the anchors x references pairs (``all_positive``: every positive and negative
pair; ``hard_negative``: every positive pair and as many of the closest negative pairs), on the
loss's distance (:func:`dml.ops.references.contrastive_reference_loss`).

Several devices: the engine gathers the devices' embeddings into one batch before the loss, so the
memory holds the whole batch. Several workers (``dist_sync``): ``gather`` (the engine's
:meth:`dml.train.Workers.all_gather`) makes every worker write every worker's embeddings, in
worker order, so all memories are equal; each worker's anchors are its own share of the batch.
"""
import numpy as np
from mxnet import gluon

from ..ops.references import contrastive_reference_loss, reference_masks

contrastive_memory_loss = contrastive_reference_loss  # its name before dml.ops.references


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
        if not getattr(loss, "scores_references", False):
            raise ValueError("CrossBatchMemory wraps a pair loss (multi-similarity, circle, SupCon,"
                             " NT-Xent, lifted structure, online contrastive), not %s"
                             % type(loss).__name__)
        if not (isinstance(memory_size, (int, np.integer)) and memory_size >= 1):
            raise ValueError("memory_size must be a whole number >= 1, not %r" % (memory_size,))
        self.memory_size = int(memory_size)
        self.miner, self.gather = miner, gather
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
        indices = None if self.miner is None else self.miner(x, labels, refs, ref_labels)
        positive, negative = reference_masks(labels, ref_labels, own_rows, indices)
        return positive.astype(np.float32), negative.astype(np.float32)

    def forward(self, embeddings, labels):
        """Enqueue the batch, then the wrapped loss of the batch against the memory: the loss's
        ``score_references`` (PML's ``loss(embeddings, labels, indices_tuple, ref_emb,
        ref_labels)``), each anchor's own row left out, the miner run against the memory."""
        x = embeddings.asnumpy()
        y = labels.asnumpy().reshape(-1).astype(np.float64)
        every_x, every_y, offset = (x, y, 0) if self.gather is None else self.gather(x, y)
        rows = self.enqueue(every_x, every_y)
        refs, ref_labels = self.references()
        return self.loss.score_references(embeddings, labels, refs, ref_labels,
                                          own=rows[offset:offset + len(x)], miner=self.miner)

    def score_in_operators(self, embeddings, labels, x, y, refs, ref_labels, own):
        """The same loss in MXNet operators on explicit pairs (every pair, or the miner's): the
        reference the fused path is tested against."""
        positive, negative = self.masks(x, y, refs, ref_labels, own)
        a1, p = np.nonzero(positive)
        a2, n = np.nonzero(negative)
        return self.loss.score_references(embeddings, labels, refs, ref_labels,
                                          indices=(a1, p, a2, n), own=own)

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
