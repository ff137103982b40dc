"""The benchmark papers' networks: ResNet-50 and GoogLeNet backbones with 512-D embeddings,
BatchNorm frozen (``--freeze-bn``), and ``--pretrained`` downloading GluonCV's ImageNet weights
once (from a local HTTP server standing in for GluonCV's store), checked against GluonCV's SHA-1,
and failing at once, naming the file, when offline."""
import hashlib
import http.server
import os
import threading
import zipfile

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from dml import DmlError
from dml.cli import main
from dml.nets import EmbeddingNet, fetch_pretrained, freeze_batchnorm, pretrained_file


@pytest.mark.parametrize("backbone", ["resnet50_v1", "googlenet"])
def test_benchmark_backbones_embed_any_input_size(backbone):
    net = EmbeddingNet(512, backbone, l2_normalize=True)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    for side in (32, 64):
        out = net(mx.nd.random.uniform(shape=(2, 3, side, side)))
        assert out.shape == (2, 512)
        assert np.allclose(np.linalg.norm(out.asnumpy(), axis=1), 1, atol=1e-4)


def test_freeze_bn_keeps_statistics_scale_and_shift():
    net = EmbeddingNet(16, "resnet18_v1", freeze_bn=True)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    x = mx.nd.random.uniform(shape=(4, 3, 32, 32))
    net(x)  # the deferred shapes
    params = net.collect_params()
    frozen = {n: p.data().copy() for n, p in params.items() if "batchnorm" in n}
    trained = {n: p.data().copy() for n, p in params.items() if "conv" in n or "dense" in n}
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": 0.1})
    for _ in range(2):
        with autograd.record():
            loss = (net(x) ** 2).sum()
        loss.backward()
        trainer.step(1)
    mx.nd.waitall()
    assert all(np.array_equal(params[n].data().asnumpy(), v.asnumpy()) for n, v in frozen.items())
    assert any(not np.array_equal(params[n].data().asnumpy(), v.asnumpy())
               for n, v in trained.items())
    # inference equals training mode: the running statistics normalize both
    with autograd.train_mode():
        train_out = net(x).asnumpy()
    assert np.allclose(train_out, net(x).asnumpy(), atol=1e-5)
    assert freeze_batchnorm(EmbeddingNet(8, "googlenet").features) > 50


class _Store(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def model_store(tmp_path, monkeypatch):
    """A local HTTP server laid out as GluonCV's store (``gluon/models/<name>-<hash>.zip``)
    serving ResNet-18 weights of our own, and an empty model root."""
    from dml.nets import import_gluoncv_model_zoo

    store = import_gluoncv_model_zoo().model_store
    served = tmp_path / "served" / "gluon" / "models"
    served.mkdir(parents=True)
    root = tmp_path / "models"
    name = "resnet18_v1"
    weights = tmp_path / "weights.params"
    net = import_gluoncv_model_zoo().get_model(name, pretrained=False)
    net.initialize(mx.init.Constant(0.01))
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(str(weights))
    sha1 = hashlib.sha1(weights.read_bytes()).hexdigest()
    # GluonCV names the file by the first 8 digits of its SHA-1: served under GluonCV's real
    # name, and under the name these weights' own SHA-1 gives
    for short in (store.short_hash(name), sha1[:8]):
        params_name = "%s-%s.params" % (name, short)
        with zipfile.ZipFile(str(served / (params_name[:-len(".params")] + ".zip")), "w") as zf:
            zf.write(str(weights), params_name)

    handler = lambda *a, **k: _Store(*a, directory=str(tmp_path / "served"), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:%d/" % server.server_address[1])
    monkeypatch.delenv("DML_OFFLINE", raising=False)
    yield store, name, str(root), sha1
    server.shutdown()


def test_pretrained_downloads_once_and_checks_gluoncv_sha1(model_store, monkeypatch):
    store, name, root, sha1 = model_store
    monkeypatch.setitem(store._model_sha1, name, sha1)  # pylint: disable=protected-access
    path = fetch_pretrained(name, root)
    assert path == pretrained_file(name, root) and os.path.isfile(path)
    assert hashlib.sha1(open(path, "rb").read()).hexdigest() == sha1
    assert os.listdir(root) == [os.path.basename(path)]  # no temporary file left
    net = EmbeddingNet(8, name, pretrained=True, root=root)
    first_conv = [p for n, p in net.features.collect_params().items() if "conv" in n][0]
    assert np.allclose(first_conv.data().asnumpy(), 0.01)
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:1/")  # present: no download
    assert fetch_pretrained(name, root) == path


def test_a_download_with_another_sha1_is_refused(model_store):
    _, name, root, _ = model_store
    with pytest.raises(DmlError, match="do not have GluonCV's SHA-1"):
        fetch_pretrained(name, root)
    assert os.listdir(root) == []


def test_offline_fails_at_once_naming_the_file(tmp_path, monkeypatch):
    import urllib.request

    root = str(tmp_path / "models")
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:1/")  # nothing listens there
    monkeypatch.delenv("DML_OFFLINE", raising=False)
    attempts, urlopen = [], urllib.request.urlopen

    def counted(url, *args, **kwargs):
        attempts.append((url, kwargs.get("timeout")))
        return urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counted)
    with pytest.raises(DmlError) as err:
        fetch_pretrained("resnet50_v1", root)
    assert len(attempts) == 1 and attempts[0][1] == 30  # one attempt, with a timeout, no retry
    assert pretrained_file("resnet50_v1", root) in str(err.value)
    assert "the download from http://127.0.0.1:1/gluon/models/resnet50_v1-" in str(err.value)
    monkeypatch.setenv("DML_OFFLINE", "1")
    with pytest.raises(DmlError, match="downloads are off"):
        fetch_pretrained("resnet50_v1", root)


def test_cli_pretrained_offline_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet-home"))
    out = str(tmp_path / "out")
    code = main(["train", "--dataset", "digits", "--pretrained", "--epochs", "1",
                 "--output-root", out])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert os.path.join(str(tmp_path / "mxnet-home"), "models", "resnet18_v1-") in err
    assert "--pretrained needs GluonCV's ImageNet weights" in err and "(--no-pretrained)" in err
    assert not os.path.exists(out)
