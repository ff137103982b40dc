"""The checks of a loss's or miner's parameters that both the losses and the miners make (they
import it and never each other)."""
import math

from ..distances import get_distance


def check_margin(margin):
    """``margin`` as a float; ValueError unless it is a finite number > 0."""
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError("margin must be a finite number > 0, not %r" % (margin,))
    return float(margin)


def check_distance(distance):
    """The name of ``distance`` (a name or a :class:`dml.distances.Distance`); ValueError for
    an unknown one, listing the valid names."""
    return get_distance(distance).name
