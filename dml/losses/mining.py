"""Mining: masks and index selections over a distance matrix, shared by every online loss.

Mining chooses tuples and needs no gradient, so it runs on the host in numpy (whose sorts are an
order of magnitude faster than MXNet's CPU kernels in this build) and hands back *indices*. The
losses then gather the differentiable distances they need with ``F.take``. Each selection is
exposed twice: as a plain numpy function (``semihard_negatives``), and as an MXNet custom operator
(``F.Custom(..., op_type='dml_semihard_negatives')``) so a loss stays hybridizable and runs on any
context: the operator copies the distance matrix to the host and its outputs back to the
distance matrix's context.
"""
import mxnet as mx
import numpy as np


def anchor_positive_mask(labels):
    """[a, p] is True when a != p and labels[a] == labels[p]."""
    labels = np.asarray(labels).reshape(-1)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return same


def anchor_negative_mask(labels):
    """[a, n] is True when labels[a] != labels[n]."""
    labels = np.asarray(labels).reshape(-1)
    return labels[:, None] != labels[None, :]


def semihard_negatives(dist, labels):
    """FaceNet / TensorFlow semi-hard negative for every ordered positive pair.

    For each anchor a and positive p, the chosen negative n is the closest negative with
    d(a, n) > d(a, p); when no negative is farther than the positive, the farthest negative of a.

    Returns ``(negative, valid)``, both B x B: ``negative[a, p]`` the column of the chosen negative,
    ``valid[a, p]`` True for positive pairs whose anchor has at least one negative.

    One stable sort of a B x 2B array: each anchor's negative distances (non-negatives pushed to
    +inf) placed before all of its distances. In the sorted row, the number of negatives standing
    before the query d(a, p) is #{n : d(a, n) <= d(a, p)} (ties count, because the stable sort
    keeps negatives first), which indexes the semi-hard negative in the sorted negatives.
    """
    dist = np.asarray(dist)
    batch = dist.shape[0]
    negative = anchor_negative_mask(labels)
    num_negatives = negative.sum(axis=1)
    joint = np.concatenate([np.where(negative, dist, np.inf), dist], axis=1)
    perm = np.argsort(joint, axis=1, kind="stable")
    is_query = perm >= batch
    # Each row holds exactly B negative-half entries: their columns in sorted order.
    negatives_by_distance = perm[~is_query].reshape(batch, batch)
    queries_before = np.cumsum(is_query, axis=1) - is_query
    negatives_before = np.arange(2 * batch)[None, :] - queries_before
    rows, positions = np.nonzero(is_query)
    count_not_farther = np.empty((batch, batch), dtype=np.int64)
    count_not_farther[rows, perm[rows, positions] - batch] = negatives_before[rows, positions]
    farthest = np.maximum(num_negatives - 1, 0)[:, None]
    rank = np.where(count_not_farther < num_negatives[:, None], count_not_farther, farthest)
    chosen = np.take_along_axis(negatives_by_distance, rank, axis=1)
    valid = anchor_positive_mask(labels) & (num_negatives > 0)[:, None]
    return chosen, valid


class _SemiHardNegatives(mx.operator.CustomOp):
    def forward(self, is_train, req, in_data, out_data, aux):
        dist = in_data[0].asnumpy()
        labels = in_data[1].asnumpy()
        chosen, valid = semihard_negatives(dist, labels)
        batch = dist.shape[0]
        flat = chosen + np.arange(batch)[:, None] * batch
        ctx = in_data[0].context
        self.assign(out_data[0], req[0], mx.nd.array(flat, ctx=ctx, dtype="int32"))
        self.assign(out_data[1], req[1], mx.nd.array(valid, ctx=ctx, dtype=in_data[0].dtype))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        for i, grad in enumerate(in_grad):
            self.assign(grad, req[i], mx.nd.zeros_like(grad))


@mx.operator.register("dml_semihard_negatives")
class _SemiHardNegativesProp(mx.operator.CustomOpProp):
    """Inputs: distances (B x B), labels (B,). Outputs: the flat index a * B + n of the chosen
    negative for every (a, p) as int32 (B x B), and the validity mask (B x B, distances' dtype)."""

    def __init__(self):
        super().__init__(need_top_grad=False)

    def list_arguments(self):
        return ["distances", "labels"]

    def list_outputs(self):
        return ["negative_index", "valid"]

    def infer_shape(self, in_shape):
        dist_shape = in_shape[0]
        return in_shape, [dist_shape, dist_shape], []

    def infer_type(self, in_type):
        return in_type, [np.int32, in_type[0]], []

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return []

    def create_operator(self, ctx, shapes, dtypes):
        return _SemiHardNegatives()
