import os

import mxnet as mx
import numpy as np
import pytest

from dml import DmlError
from dml.nets import (ClassifierNet, EmbeddingNet, SiameseNet, TripletNet, backbone_features,
                      pretrained_file)


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


@pytest.mark.filterwarnings("ignore:Cannot decide type:UserWarning")  # SymbolBlock.imports' own notice
@pytest.mark.parametrize("wrapper,k", [(SiameseNet, 2), (TripletNet, 3)])
def test_tuple_nets_share_one_embedding_net(wrapper, k, tmp_path):
    inner = EmbeddingNet(embedding_dim=6)
    net = wrapper(inner)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    xs = [mx.nd.random.uniform(shape=(3, 3, 32, 32)) for _ in range(k)]
    outs = net(*xs)
    assert len(outs) == k and all(o.shape == (3, 6) for o in outs)
    # one set of weights: the wrapper's parameters are the embedding net's, not copies
    assert set(net.collect_params().values()) == set(inner.collect_params().values())
    for x, out in zip(xs, outs):  # inference mode: BatchNorm uses running statistics
        np.testing.assert_allclose(out.asnumpy(), inner(x).asnumpy(), rtol=1e-5, atol=1e-6)
    net.export(str(tmp_path / "wrapper"), epoch=1)  # the wrapper hybridizes and exports too
    assert (tmp_path / "wrapper-symbol.json").is_file()
    inner.export(str(tmp_path / "emb"), epoch=1)
    loaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "emb-symbol.json"), ["data"],
                                          str(tmp_path / "emb-0001.params"))
    np.testing.assert_allclose(loaded(xs[0]).asnumpy(), outs[0].asnumpy(), rtol=1e-5, atol=1e-6)


def test_classifier_net_logits_on_the_embedding(tmp_path):
    inner = EmbeddingNet(embedding_dim=6)
    net = ClassifierNet(inner, num_classes=4)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True)
    x = mx.nd.random.uniform(shape=(5, 3, 32, 32))
    logits = net(x)
    assert logits.shape == (5, 4)
    want = mx.nd.dot(inner(x), net.classifier.weight.data(), transpose_b=True) + net.classifier.bias.data()
    np.testing.assert_allclose(logits.asnumpy(), want.asnumpy(), rtol=1e-5, atol=1e-6)
    net.export(str(tmp_path / "classifier"), epoch=1)
    assert (tmp_path / "classifier-0001.params").is_file()
