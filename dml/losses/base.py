"""What every dml loss shares: a margin > 0, a distance, and the optional second output."""
import itertools
import math

from mxnet import gluon

from .distance import check_distance


def check_margin(margin):
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError("margin must be a finite number > 0, not %r" % (margin,))
    return float(margin)


def propagate_non_finite(F, value, *inputs):
    r"""``value`` unchanged, unless an input holds a NaN or an infinity: then NaN, and so is its
    gradient.

    .. math:: value \cdot (1 + \mathrm{stop\_grad}(\textstyle\sum_k \sum x_k \cdot 0))

    ``x * 0`` is 0 for every finite x and NaN for NaN and +-inf, so the factor is exactly 1 on
    finite inputs (the value and gradient are bit-identical) and NaN otherwise. Why: ``relu``,
    ``max`` and the host kernels' ``not d > 0`` turn a NaN distance into 0, and a diverged
    network would then report a finite loss (0.2 for NaN embeddings) and train on. One pass over
    the B x D inputs, none over B x B.
    """
    poison = None
    for x in inputs:
        term = F.sum(x * 0)
        poison = term if poison is None else poison + term
    return F.broadcast_mul(value, 1 + F.BlockGrad(poison))


_instances = itertools.count()

_BATCH_IO = """
    Inputs:
        - **embeddings**: (B, D) embeddings of the batch.
        - **labels**: (B,) their class labels.

    Outputs:
        - **loss**: (1,), the batch mean (train with ``trainer.step(1)``, not the batch size);
          NaN, with a NaN gradient, when an embedding holds a NaN or an infinity.
        - **fraction** (with ``return_active_fraction=True``): (1,), no gradient.
"""


def batch_loss_io(cls):
    """Class decorator: the losses called as ``loss(embeddings, labels)`` end their docstring
    with the same Inputs/Outputs section (MXNet's form), written once here."""
    if "**embeddings**" not in (cls.__doc__ or ""):
        cls.__doc__ = (cls.__doc__ or "").rstrip() + "\n" + _BATCH_IO
    return cls


class BaseLoss(gluon.loss.Loss):
    """Base of the dml losses: ``margin`` (> 0, else ``ValueError``), ``distance``
    ('euclidean'|'squared'|'cosine') and ``return_active_fraction``: when True a loss returns
    ``(loss, fraction)``, else the loss alone."""

    def __init__(self, margin=1.0, distance="euclidean", return_active_fraction=False, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self._margin = check_margin(margin)
        self._distance = check_distance(distance)
        self._return_active_fraction = return_active_fraction
        self._warn_key = "%s-%d" % (type(self).__name__, next(_instances))

    def _host(self, F, embeddings, labels, kind):
        """``(loss, fraction)`` of ``kind`` through the fused host operator
        (:func:`dml.losses.batch.host_loss`), counting this instance's no-tuple warnings."""
        from .batch import host_loss

        return host_loss(F, embeddings, labels, kind, self._margin, self._distance,
                         self._warn_key)

    def _result(self, loss, fraction, F=None, inputs=()):
        """``loss`` (and ``fraction``), both NaN when ``inputs`` hold a NaN or an infinity (see
        :func:`propagate_non_finite`; the host operator does the same by itself)."""
        if inputs:
            loss = propagate_non_finite(F, loss, *inputs)
            fraction = propagate_non_finite(F, fraction, *inputs)
        return (loss, fraction) if self._return_active_fraction else loss
