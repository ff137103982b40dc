r"""Proxy losses: each class has learnable proxies (vectors in the embedding space), and the loss
compares each embedding with the proxies instead of with other embeddings, so a batch needs no
P x K structure. As pytorch-metric-learning 2.9 defines them (names, defaults, initialization,
reductions), written with ``F`` ops (they hybridize); the proxies are this block's parameters,
``proxies`` (C x D, or C*K x D for SoftTriple), trained with the network (usually with a larger
learning rate: ``lr_mult``) and saved with the run.

Called as ``loss(embeddings, labels)``; labels are class indices 0..C-1. x̂ is x L2-normalized.
"""
import math

import mxnet as mx
from mxnet import gluon

from .base import batch_loss_io, propagate_non_finite
from ..distances import NORM_EPS
from .similarity import check_positive, masked_logsumexp


class _ProxyLoss(gluon.HybridBlock):
    """Base: ``num_classes`` x ``per_class`` proxies of ``embedding_dim`` dimensions, and an
    optional second output (``return_stat``: the fraction of the batch whose most similar proxy
    is of its own class, logged as ``train/accuracy``)."""

    def __init__(self, num_classes, embedding_dim, init, per_class=1, lr_mult=1.0,
                 return_stat=False, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1 or int(embedding_dim) < 1:
            raise ValueError("num_classes and embedding_dim must be >= 1")
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self._per_class, self.return_stat = int(per_class), return_stat
        with self.name_scope():
            self.proxies = self.params.get("proxies", shape=(self.num_classes * self._per_class,
                                                              self.embedding_dim),
                                           init=init, lr_mult=lr_mult)

    def hybrid_forward(self, F, embeddings, labels, proxies):
        unit = F.L2Normalization(embeddings, mode="instance", eps=NORM_EPS)
        unit_proxies = F.L2Normalization(proxies, mode="instance", eps=NORM_EPS)
        cos = F.dot(unit, unit_proxies, transpose_b=True)  # B x (C * per_class)
        labels = labels.reshape((-1,))
        loss, class_scores = self._loss(F, cos, labels)
        loss = propagate_non_finite(F, loss.reshape((1,)), embeddings, proxies)
        if not self.return_stat:
            return loss
        correct = F.argmax(F.BlockGrad(class_scores), axis=1) == labels
        return loss, propagate_non_finite(F, F.mean(correct).reshape((1,)), embeddings)

    def _loss(self, F, cos, labels):
        """-> (1-element loss, B x C class scores for the statistic)."""
        raise NotImplementedError


def class_mask(F, labels, scores):
    """B x C: 1 where the column is the row's class (``scores``: any B x C array, whose dtype the
    mask takes; ``F.one_hot`` would always be float32)."""
    columns = F.contrib.arange_like(scores, axis=1)
    return F.broadcast_equal(labels.reshape((-1, 1)), columns.reshape((1, -1)))


def _cross_entropy(F, logits, labels):
    return -F.mean(F.pick(F.log_softmax(logits, axis=1), labels, axis=1))


@batch_loss_io
class ProxyAnchorLoss(_ProxyLoss):
    r"""Proxy-Anchor loss (Kim et al., CVPR 2020), as PML 2.9's ``ProxyAnchorLoss``: with
    :math:`s_{ic} = \hat x_i \cdot \hat p_c`, :math:`X_c^+` the batch's images of class c and
    :math:`C^+` the classes present in the batch,

    .. math:: L = \frac{1}{|C^+|} \sum_{c \in C^+} \log\big(1 + \sum_{i \in X_c^+}
              e^{-\alpha (s_{ic} - \delta)}\big) + \frac{1}{C} \sum_{c} \log\big(1 +
              \sum_{i \notin X_c^+} e^{\alpha (s_{ic} + \delta)}\big)

    (``margin`` = δ = 0.1, α = 32). Proxies start as Kaiming-normal (fan-out: std sqrt(2 / C)),
    as PML's; the paper trains them with a 100x learning rate.
    """

    def __init__(self, num_classes, embedding_dim, margin=0.1, alpha=32.0, **kwargs):
        super().__init__(num_classes, embedding_dim,
                         mx.init.Normal(math.sqrt(2.0 / max(int(num_classes), 1))), **kwargs)
        self._margin = float(margin)
        if not math.isfinite(self._margin):
            raise ValueError("margin must be finite, not %r" % (margin,))
        self._alpha = check_positive("alpha", alpha)

    def _loss(self, F, cos, labels):
        pos = class_mask(F, labels, cos)
        neg = 1 - pos
        # over the batch for each proxy: the masked log-sum-exp of the transposed matrices
        pos_term = masked_logsumexp(F, F.transpose(self._alpha * (self._margin - cos)),
                                    F.transpose(pos), add_one=True)
        neg_term = masked_logsumexp(F, F.transpose(self._alpha * (cos + self._margin)),
                                    F.transpose(neg), add_one=True)
        with_positives = F.sum(F.max(pos, axis=0))
        loss = F.sum(pos_term) / F.maximum(with_positives, 1) + F.sum(neg_term) / self.num_classes
        return loss, cos


@batch_loss_io
class ProxyNCALoss(_ProxyLoss):
    r"""ProxyNCA (Movshovitz-Attias et al., ICCV 2017), as PML 2.9's ``ProxyNCALoss`` (NCA on
    squared Euclidean distances between unit vectors):

    .. math:: L = \frac{1}{B} \sum_i -\log \frac{e^{-s \|\hat x_i - \hat p_{y_i}\|^2}}
              {\sum_c e^{-s \|\hat x_i - \hat p_c\|^2}}

    with ``softmax_scale`` = s = 1. Proxies start as N(0, 1), as PML's.
    """

    def __init__(self, num_classes, embedding_dim, softmax_scale=1.0, **kwargs):
        super().__init__(num_classes, embedding_dim, mx.init.Normal(1.0), **kwargs)
        self._scale = check_positive("softmax_scale", softmax_scale)

    def _loss(self, F, cos, labels):
        logits = -self._scale * F.relu(2 - 2 * cos)  # ||a - b||^2 = 2 - 2 a.b for unit vectors
        return _cross_entropy(F, logits, labels), logits


@batch_loss_io
class NormalizedSoftmaxLoss(_ProxyLoss):
    r"""Normalized softmax (Zhai and Wu, BMVC 2019), as PML 2.9's ``NormalizedSoftmaxLoss``:
    softmax cross-entropy over cosine similarities to unit class weights,

    .. math:: L = \frac{1}{B} \sum_i -\log \frac{e^{\hat x_i \cdot \hat w_{y_i} / T}}
              {\sum_c e^{\hat x_i \cdot \hat w_c / T}}

    with ``temperature`` = T = 0.05. Weights start as N(0, 1), as PML's.
    """

    def __init__(self, num_classes, embedding_dim, temperature=0.05, **kwargs):
        super().__init__(num_classes, embedding_dim, mx.init.Normal(1.0), **kwargs)
        self._temperature = check_positive("temperature", temperature)

    def _loss(self, F, cos, labels):
        logits = cos / self._temperature
        return _cross_entropy(F, logits, labels), logits


@batch_loss_io
class SoftTripleLoss(_ProxyLoss):
    r"""SoftTriple loss (Qian et al., ICCV 2019), as PML 2.9's ``SoftTripleLoss``: K centres per
    class; the similarity to a class is the softmax-weighted mean of its centres' similarities,

    .. math:: S_{ic} = \sum_k \frac{e^{s_{ick}/\gamma}}{\sum_{k'} e^{s_{ick'}/\gamma}} s_{ick},
              \qquad L = \frac{1}{B} \sum_i -\log \frac{e^{\lambda (S_{iy_i} - \delta)}}
              {e^{\lambda (S_{iy_i} - \delta)} + \sum_{c \ne y_i} e^{\lambda S_{ic}}}

    (``centers_per_class`` K = 10, ``la`` λ = 20, ``gamma`` γ = 0.1, ``margin`` δ = 0.01; no
    centre regularizer, as PML). Centres start as Kaiming-uniform (a = sqrt 5: U(±1/sqrt(C K))),
    as PML's.
    """

    def __init__(self, num_classes, embedding_dim, centers_per_class=10, la=20.0, gamma=0.1,
                 margin=0.01, **kwargs):
        centers = int(centers_per_class)
        if centers < 1:
            raise ValueError("centers_per_class must be >= 1, not %r" % (centers_per_class,))
        super().__init__(num_classes, embedding_dim,
                         mx.init.Uniform(1.0 / math.sqrt(max(int(num_classes) * centers, 1))),
                         per_class=centers, **kwargs)
        self._la, self._gamma = check_positive("la", la), check_positive("gamma", gamma)
        self._margin = float(margin)

    def _loss(self, F, cos, labels):
        per_centre = cos.reshape((0, self.num_classes, self._per_class))  # B x C x K
        weights = F.softmax(per_centre / self._gamma, axis=2)
        per_class = F.sum(weights * per_centre, axis=2)  # B x C
        logits = self._la * (per_class - self._margin * class_mask(F, labels, per_class))
        return _cross_entropy(F, logits, labels), per_class
