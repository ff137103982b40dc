import os

import mxnet as mx
import numpy as np
import pytest

from dml import DmlError
from dml.nets import EmbeddingNet, backbone_features, pretrained_file


def test_embedding_net_shapes_and_l2():
    net = EmbeddingNet(embedding_dim=12, l2_normalize=True)
    net.initialize()
    net.hybridize(static_alloc=True)
    out = net(mx.nd.random.uniform(shape=(4, 3, 32, 32)))
    assert out.shape == (4, 12)
    np.testing.assert_allclose(np.linalg.norm(out.asnumpy(), axis=1), 1, rtol=1e-5)


def test_pretrained_loads_the_local_model_store_file(tmp_path):
    from gluoncv.model_zoo import get_model

    source = get_model("resnet18_v1", pretrained=False)
    source.initialize(mx.init.Uniform())
    source(mx.nd.zeros((1, 3, 32, 32)))  # finish deferred initialization
    path = pretrained_file("resnet18_v1", str(tmp_path))
    source.save_parameters(path)
    features = backbone_features("resnet18_v1", pretrained=True, root=str(tmp_path))
    want = source.features[0].weight.data().asnumpy()
    np.testing.assert_array_equal(features[0].weight.data().asnumpy(), want)


def test_pretrained_missing_names_the_file(tmp_path):
    with pytest.raises(DmlError) as err:
        backbone_features("resnet18_v1", pretrained=True, root=str(tmp_path))
    assert pretrained_file("resnet18_v1", str(tmp_path)) in str(err.value)
    assert os.path.basename(pretrained_file("resnet18_v1")).startswith("resnet18_v1-")


def test_pretrained_wrong_file_is_reported(tmp_path):
    with open(pretrained_file("resnet18_v1", str(tmp_path)), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DmlError, match="cannot load"):
        backbone_features("resnet18_v1", pretrained=True, root=str(tmp_path))


def test_unknown_backbone():
    with pytest.raises(DmlError, match="unknown backbone 'resnet1000'"):
        backbone_features("resnet1000")
