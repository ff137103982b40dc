"""Margin-based softmax heads: ArcFace (and sub-center ArcFace), CosFace and SphereFace.

Each head holds a learnable class-weight matrix W (num_classes x D) and is called as
``head(embeddings, labels) -> logits``. It L2-normalizes the rows of W and the embeddings, so
cos(theta_j) = <x / |x|, W_j / |W_j|>, and puts a margin on the target class's angle only. Train
it with softmax cross-entropy on the logits::

    head = ArcFace(num_classes=10, s=30, m=0.5)
    loss = gluon.loss.SoftmaxCrossEntropyLoss()(head(embeddings, labels), labels)

Cosines are clipped to [-1 + 1e-6, 1 - 1e-6] before any square root or arccos, so identical
vectors and the margin boundaries give finite values and gradients.
"""
import math
import threading

import mxnet as mx
from mxnet import autograd, gluon

from .base import propagate_non_finite

COS_EPS = 1e-6


def _check_scale(s):
    if not (isinstance(s, (int, float)) and s > 0 and math.isfinite(s)):
        raise ValueError("scale s must be a finite number > 0, not %r" % (s,))
    return float(s)


class _MarginHead(gluon.HybridBlock):
    """cos(theta) of every (embedding, class) pair, and the target-class mask."""

    sub_centers = 1  # rows of W per class (sub-center ArcFace: the nearest one counts)

    def __init__(self, num_classes, s, in_units=0, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ValueError("num_classes must be an integer >= 2, not %r" % (num_classes,))
        self.num_classes = num_classes
        self._s = _check_scale(s)
        with self.name_scope():
            self.weight = self.params.get("weight", shape=(num_classes * self.sub_centers,
                                                           in_units),
                                          init="xavier", allow_deferred_init=True)

    def infer_shape(self, embeddings, *args):
        """W's second dimension is the embedding's (MXNet cannot infer it through the row
        normalization)."""
        self.weight.shape = (self.num_classes * self.sub_centers, embeddings.shape[1])

    def _cosine(self, F, embeddings, weight):
        x = F.L2Normalization(embeddings, mode="instance")
        w = F.L2Normalization(weight, mode="instance")
        cos = F.FullyConnected(x, w, no_bias=True, num_hidden=self.num_classes * self.sub_centers)
        if self.sub_centers > 1:  # B x C x K: a class's cosine is its nearest sub-center's
            cos = F.max(cos.reshape((0, self.num_classes, self.sub_centers)), axis=2)
        return F.clip(cos, -1.0 + COS_EPS, 1.0 - COS_EPS)

    def hybrid_forward(self, F, embeddings, labels, weight):
        cos = self._cosine(F, embeddings, weight)
        target = F.one_hot(labels.reshape((-1,)), self.num_classes)
        logits = self._s * F.where(target > 0.5, self._target_logit(F, cos), cos)
        return propagate_non_finite(F, logits, embeddings, weight)  # clip() hides a NaN


class ArcFace(_MarginHead):
    r"""ArcFace (Deng et al. 2019): an additive angular margin on the target class,

    .. math:: \text{logit}_j = s \cdot \begin{cases} \cos(\theta_y + m) & j = y \\
              \cos\theta_j & j \ne y \end{cases}

    with cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m). Where theta + m > pi the cosine
    would stop decreasing, so the standard fallback of InsightFace takes over: the target logit is
    cos(theta) - m sin(m) when theta > pi - m (``easy_margin=True``: the plain cos(theta) whenever
    cos(theta) <= 0). ``0 <= m < pi/2``.
    """

    def __init__(self, num_classes, s=64.0, m=0.5, easy_margin=False, **kwargs):
        if not (isinstance(m, (int, float)) and 0 <= m < math.pi / 2):
            raise ValueError("ArcFace margin m must be in [0, pi/2), not %r" % (m,))
        super().__init__(num_classes, s, **kwargs)
        self._m = float(m)
        self._easy_margin = bool(easy_margin)

    def _target_logit(self, F, cos):
        sin = F.sqrt(1.0 - F.square(cos))  # > 0: cos is clipped away from +-1
        phi = cos * math.cos(self._m) - sin * math.sin(self._m)
        if self._easy_margin:
            return F.where(cos > 0, phi, cos)
        # theta + m > pi  <=>  cos(theta) < cos(pi - m)
        return F.where(cos > math.cos(math.pi - self._m), phi, cos - self._m * math.sin(self._m))


class SubCenterArcFace(ArcFace):
    r"""Sub-center ArcFace (Deng et al., ECCV 2020), as PML 2.9's ``SubCenterArcFaceLoss``: K
    weight vectors per class (``sub_centers`` = 3), cos(theta_j) the largest cosine of class j's
    sub-centers, then ArcFace's margin (m = 0.5 rad, PML's 28.6 degrees; s = 64). Noisy or
    multi-modal classes spread over their sub-centers instead of pulling one center apart."""

    def __init__(self, num_classes, s=64.0, m=0.5, sub_centers=3, **kwargs):
        if not (isinstance(sub_centers, int) and sub_centers >= 1):
            raise ValueError("sub_centers must be an integer >= 1, not %r" % (sub_centers,))
        self.sub_centers = sub_centers
        super().__init__(num_classes, s=s, m=m, **kwargs)


class CosFace(_MarginHead):
    r"""CosFace / large-margin cosine loss (Wang et al. 2018): an additive cosine margin,

    .. math:: \text{logit}_j = s \cdot (\cos\theta_j - m [j = y]), \qquad 0 \le m < 1.
    """

    def __init__(self, num_classes, s=64.0, m=0.35, **kwargs):
        if not (isinstance(m, (int, float)) and 0 <= m < 1):
            raise ValueError("CosFace margin m must be in [0, 1), not %r" % (m,))
        super().__init__(num_classes, s, **kwargs)
        self._m = float(m)

    def _target_logit(self, F, cos):
        return cos - self._m


class SphereFace(_MarginHead):
    r"""SphereFace / A-Softmax (Liu et al. 2017): a multiplicative angular margin m (an integer),

    .. math:: \psi(\theta) = (-1)^k \cos(m\theta) - 2k, \quad
              \theta \in [k\pi/m, (k+1)\pi/m], \; k \in \{0, \dots, m-1\},

    which decreases monotonically over [0, pi]. As in the paper's code, the target logit is
    annealed from the plain cosine to psi: (lambda cos(theta) + psi(theta)) / (1 + lambda) with
    lambda = max(lambda_min, base (1 + gamma t)^(-power)) at training iteration t, so that the
    net trains at all. Logits are scaled by ``s`` because embeddings and weights are normalized
    (the original multiplies by |x| instead). The parameter ``anneal_lambda`` holds the current
lambda (not trained); ``iteration`` counts training batches.
    """

    def __init__(self, num_classes, s=30.0, m=4, base=1000.0, gamma=0.12, power=1.0,
                 lambda_min=5.0, **kwargs):
        if not (isinstance(m, (int, float)) and float(m).is_integer() and m >= 1):
            raise ValueError("SphereFace margin m must be a positive integer, not %r" % (m,))
        super().__init__(num_classes, s, **kwargs)
        self._m = int(m)
        self._anneal = (float(base), float(gamma), float(power), float(lambda_min))
        self._calls = 0
        self._lock = threading.Lock()
        with self.name_scope():
            self.anneal_lambda = self.params.get("anneal_lambda", shape=(1,), init="ones",
                                                 grad_req="null", differentiable=False)
        self.iteration = 0

    def lambda_at(self, iteration):
        base, gamma, power, lambda_min = self._anneal
        return max(lambda_min, base * (1.0 + gamma * iteration) ** (-power))

    def set_iteration(self, iteration):
        """Continue the annealing from training batch ``iteration`` (a resumed run)."""
        self._calls = int(iteration) * len(self.anneal_lambda.list_ctx())

    def forward(self, embeddings, labels):
        if autograd.is_training():
            # the engine calls once per device per batch (in a thread each when the devices share
            # BatchNorm statistics: the lock keeps the count and lambda of one batch together)
            with self._lock:
                devices = len(self.anneal_lambda.list_ctx())
                self.iteration = self._calls // devices
                if self._calls % devices == 0:
                    self.anneal_lambda.set_data(mx.nd.full((1,), self.lambda_at(self.iteration)))
                self._calls += 1
                return super().forward(embeddings, labels)
        return super().forward(embeddings, labels)

    def hybrid_forward(self, F, embeddings, labels, weight, anneal_lambda):
        cos = self._cosine(F, embeddings, weight)
        target = F.one_hot(labels.reshape((-1,)), self.num_classes)
        theta = F.arccos(cos)
        k = F.floor(self._m * theta / math.pi)
        sign = 1.0 - 2.0 * (k - 2.0 * F.floor(k / 2.0))  # (-1)^k
        psi = sign * F.cos(self._m * theta) - 2.0 * k
        lam = F.reshape(anneal_lambda, (1, 1))
        annealed = F.broadcast_div(F.broadcast_mul(cos, lam) + psi, lam + 1.0)
        return propagate_non_finite(F, self._s * F.where(target > 0.5, annealed, cos),
                                    embeddings, weight)


MARGIN_HEADS = {"arcface": ArcFace, "cosface": CosFace, "sphereface": SphereFace,
                "subcenter_arcface": SubCenterArcFace}
