"""What every dml loss shares: a margin > 0, a distance, and the optional second output."""
from mxnet import gluon

from .distance import check_distance


def check_margin(margin):
    if not margin > 0:
        raise ValueError("margin must be > 0, not %r" % (margin,))
    return float(margin)


class MarginLoss(gluon.loss.Loss):
    """Base of the dml losses: ``margin`` (> 0, else ``ValueError``), ``distance``
    ('euclidean'|'squared'|'cosine') and ``return_active_fraction``: when True a loss returns
    ``(loss, fraction)``, else the loss alone."""

    def __init__(self, margin=1.0, distance="euclidean", return_active_fraction=False, **kwargs):
        super().__init__(weight=None, batch_axis=0, **kwargs)
        self._margin = check_margin(margin)
        self._distance = check_distance(distance)
        self._return_active_fraction = return_active_fraction

    def _result(self, loss, fraction):
        return (loss, fraction) if self._return_active_fraction else loss
