"""Several devices in one process (CPU contexts stand in for GPUs: the same split_and_load, copy and
kvstore code) and the data shards of a distributed job."""
import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from dml.config import RunConfig
from dml.data import BalancedBatchSampler, ShuffledBatchSampler
from dml.engine import build_loss, train_step
from dml.methods import get_method

CTX1 = [mx.cpu(0)]
CTX2 = [mx.cpu(0), mx.cpu(1)]


def _net(ctx, seed=3):
    """An embedding net without BatchNorm, so that the devices' slices see the same function as
    the whole batch (BatchNorm's batch statistics are per device, as in any data-parallel run)."""
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(12, activation="tanh", in_units=10), gluon.nn.Dense(6, in_units=12))
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize()
    net.embedding_dim = 6  # what ClassifierNet reads from an EmbeddingNet
    return net


def _pk_batch(classes=4, per_class=6, seed=0):
    rng = np.random.RandomState(seed)
    labels = np.repeat(np.arange(classes), per_class).astype(np.float32)
    return rng.normal(size=(len(labels), 10)).astype(np.float32), labels


def _one_step(method_name, ctx, batch, selector=None, **cfg_args):
    cfg = RunConfig(method=method_name, selector=selector, margin=0.2, **cfg_args)
    method = get_method(method_name)
    net = _net(ctx)
    model = method.build_model(net, 4, ctx, cfg.margin, cfg.scale)
    loss_fn = build_loss(cfg)
    loss_fn.hybridize()
    trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.5}, kvstore="device")
    np.random.seed(7)  # the random selectors draw from numpy's generator
    loss, stat = train_step(method, model, loss_fn, trainer, batch, ctx)
    weights = {name.split("_", 1)[1]: p.data(ctx[-1]).asnumpy()
               for name, p in net.collect_params().items()}
    return loss.asscalar(), stat.asscalar(), weights


@pytest.mark.parametrize("method,selector", [
    ("triplet_semihard", None), ("triplet_batch_hard", None), ("triplet_batch_all", None),
    ("online_triplet", "all"), ("online_triplet", "hardest"), ("online_triplet", "random_hard"),
    ("online_triplet", "semihard"), ("online_contrastive", "hard_negative"),
    ("online_contrastive", "all_positive"), ("multi_similarity", None), ("circle", None),
    ("supcon", None), ("lifted", None), ("npairs", None), ("margin", None)])
def test_two_devices_mine_the_whole_batch(method, selector):
    """2 contexts give the loss of 1 on the same batch, and the same updated weights (on every
    device): the embeddings of both slices are gathered before mining."""
    batch = _pk_batch()
    loss1, stat1, weights1 = _one_step(method, CTX1, batch, selector)
    loss2, stat2, weights2 = _one_step(method, CTX2, batch, selector)
    assert loss1 > 0
    assert loss2 == pytest.approx(loss1, rel=1e-5) and stat2 == pytest.approx(stat1, rel=1e-5)
    for name in weights1:
        np.testing.assert_allclose(weights2[name], weights1[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method,miner", [("multi_similarity", "multi_similarity"),
                                          ("supcon", "none"), ("circle", "none"),
                                          ("online_contrastive", None)])
def test_cross_batch_memory_on_two_devices_equals_one(method, miner):
    """Over three steps, 2 contexts give 1's losses, updates and memory: the memory receives the
    gathered batch, in batch order."""
    results = []
    for ctx in (CTX1, CTX2):
        cfg = RunConfig(method=method, margin=1.0 if miner is None else None, miner=miner,
                        memory_size=60)
        meth = get_method(method)
        net = _net(ctx)
        model = meth.build_model(net, 4, ctx)
        loss_fn = build_loss(cfg)
        # (a step of 0.5 on circle's gamma-80 logits magnifies float32 rounding: 0.05)
        trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.05},
                                kvstore="device")
        losses = [train_step(meth, model, loss_fn, trainer, _pk_batch(seed=step), ctx)[0]
                  .asscalar() for step in range(3)]
        results.append((losses, net[0].weight.data(ctx[-1]).asnumpy(), loss_fn.references()))
    (losses1, weight1, memory1), (losses2, weight2, memory2) = results
    assert losses1[2] > 0 and memory1[0].shape == (60, 6)  # 72 embeddings through 60 rows
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    # float32: the devices sum their gradients in another order, three steps running
    np.testing.assert_allclose(weight2, weight1, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(memory2[0], memory1[0], rtol=1e-4, atol=1e-5)
    assert np.array_equal(memory2[1], memory1[1])


@pytest.mark.parametrize("method", ["proxy_anchor", "proxy_nca", "normalized_softmax",
                                    "soft_triple"])
def test_proxy_losses_on_two_devices_equal_one(method):
    """The proxy loss of the whole batch (Proxy-Anchor's sums over the batch are no mean of
    per-device losses): 2 contexts give 1's loss, network update and proxies on every device."""
    rng = np.random.RandomState(2)
    batch = (rng.normal(size=(9, 10)).astype(np.float32),
             rng.randint(0, 4, size=9).astype(np.float32))
    results = []
    for ctx in (CTX1, CTX2):
        cfg = RunConfig(method=method, margin=0.1, batch_size=9, loss_lr_mult=10.0)
        meth = get_method(method)
        net = _net(ctx)
        model = meth.build_model(net, 4, ctx, cfg.margin, cfg.scale, loss_lr_mult=10.0)
        loss_fn = build_loss(cfg)
        trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": 0.5},
                                kvstore="device")
        loss, stat = train_step(meth, model, loss_fn, trainer, batch, ctx)
        proxies = [model.classifier.proxies.data(c).asnumpy() for c in ctx]
        weights = [p.data(ctx[-1]).asnumpy() for p in net.collect_params().values()]
        results.append((loss.asscalar(), stat.asscalar(), proxies, weights))
    (loss1, stat1, proxies1, weights1), (loss2, stat2, proxies2, weights2) = results
    assert loss2 == pytest.approx(loss1, rel=1e-5) and stat2 == pytest.approx(stat1)
    for p in proxies2:
        np.testing.assert_allclose(p, proxies1[0], rtol=1e-4, atol=1e-6)
    assert np.abs(proxies1[0]).sum() > 0
    for w1, w2 in zip(weights1, weights2):
        np.testing.assert_allclose(w2, w1, rtol=1e-4, atol=1e-6)


def test_mining_each_slice_alone_would_differ():
    """What the gathering avoids: the batch is grouped by class, so each device's half holds
    half the classes and its own mining finds other negatives."""
    x, labels = _pk_batch()
    cfg = RunConfig(method="triplet_semihard", margin=0.2)
    loss_fn = build_loss(cfg)
    whole = loss_fn(mx.nd.array(x), mx.nd.array(labels))[0].asscalar()
    halves = [loss_fn(mx.nd.array(x[s]), mx.nd.array(labels[s]))[0].asscalar()
              for s in (slice(0, 12), slice(12, 24))]
    assert abs(np.mean(halves) - whole) > 1e-3


@pytest.mark.parametrize("size", [7, 8])
def test_per_sample_losses_weight_uneven_slices(size):
    """softmax on 7 images over 2 devices (4 + 3): the loss and the update of the full batch."""
    rng = np.random.RandomState(1)
    batch = (rng.normal(size=(size, 10)).astype(np.float32),
             rng.randint(0, 4, size=size).astype(np.float32))
    loss1, acc1, weights1 = _one_step("softmax", CTX1, batch, batch_size=size)
    loss2, acc2, weights2 = _one_step("softmax", CTX2, batch, batch_size=size)
    assert loss2 == pytest.approx(loss1, rel=1e-5) and acc2 == pytest.approx(acc1)
    for name in weights1:
        np.testing.assert_allclose(weights2[name], weights1[name], rtol=1e-4, atol=1e-6)


def test_balanced_sampler_shards_are_disjoint_and_equal():
    labels = np.repeat(np.arange(6), [20, 21, 22, 19, 25, 18])
    samplers = [BalancedBatchSampler(labels, 3, 4, seed=0, num_parts=3, part_index=r)
                for r in range(3)]
    assert len({len(s) for s in samplers}) == 1 and len(samplers[0]) == len(labels) // (3 * 12)
    seen = [set() for _ in samplers]
    for epoch in range(4):
        for s, indices in zip(samplers, seen):
            s.set_epoch(epoch)
            for batch in s:
                assert len(batch) == 12
                assert len(set(labels[batch])) == 3
                indices.update(batch)
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    # one part is the ordinary sampler, unchanged
    one = BalancedBatchSampler(labels, 3, 4, seed=0, num_parts=1, part_index=0)
    assert [list(b) for b in one] == [list(b) for b in BalancedBatchSampler(labels, 3, 4, seed=0)]


def test_shuffled_sampler_shards_partition_each_epoch():
    samplers = [ShuffledBatchSampler(50, 4, seed=2, num_parts=2, part_index=r) for r in range(2)]
    assert len(samplers[0]) == len(samplers[1]) == 25 // 4
    for epoch in range(3):
        got = []
        for s in samplers:
            s.set_epoch(epoch)
            got.append([i for b in s for i in b])
        assert not set(got[0]) & set(got[1])


def test_shard_errors():
    labels = np.repeat(np.arange(3), 2)
    with pytest.raises(ValueError, match="shard 2 of 4"):
        BalancedBatchSampler(labels, 3, 1, num_parts=4, part_index=2)
    with pytest.raises(ValueError, match="part_index"):
        ShuffledBatchSampler(10, 2, num_parts=2, part_index=2)


SYNCED_STEP = """
import json, sys
import mxnet as mx, numpy as np
from mxnet import autograd
from dml.losses import SupConLoss
from dml.methods import get_method
from dml.nets import EmbeddingNet
from dml.engine import split_batch, train_step
# a training step of ResNet-18 + SupCon on 1 context, then on 2 sharing BatchNorm statistics
# (SyncBatchNorm, each device in a thread): the embeddings and the gradient of every parameter
rng = np.random.default_rng(0)
x = rng.normal(size=(16, 3, 32, 32)).astype(np.float32)
y = (np.arange(16) % 4).astype(np.float32)
out = {}
for devices in (1, 2):
    ctx = [mx.cpu(i) for i in range(devices)]
    mx.random.seed(0)
    net = EmbeddingNet(8, l2_normalize=True, sync_devices=devices, prefix="e_")
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    method, loss_fn = get_method("supcon"), SupConLoss(return_stat=True)
    parts = split_batch((x, y), ctx)
    if devices > 1:
        method.warm_up(net, loss_fn, parts)
        step = method.parallel_step(net, loss_fn, parts, ctx)
        step.backward()
        loss = step.loss
    else:
        with autograd.record():
            heads, loss, _ = method.forward_batch(net, loss_fn, parts, ctx)
        autograd.backward(heads)
    out[devices] = float(loss.asscalar())
    np.savez(sys.argv[1] + "-%d.npz" % devices, **{
        k: sum(g.asnumpy() for g in p.list_grad())
        for k, p in net.collect_params().items() if p.grad_req != "null"})
print(json.dumps(out))
"""


def test_two_cpu_contexts_share_batchnorm_statistics_in_one_step(tmp_path):
    """The SyncBatchNorm path in a fresh process (MXNet's engine on 4 threads per device, as the
    CLI sets it): the same loss and gradients as one context, to float32 rounding. (The
    gradients come back as .npz files: as JSON text, ResNet-18's 11 million values twice took
    most of a minute.)"""
    import json
    import os
    import subprocess
    import sys

    from runhelpers import ROOT

    env = dict(os.environ, MXNET_CPU_WORKER_NTHREADS="4", PYTHONPATH=ROOT)
    prefix = str(tmp_path / "grads")
    proc = subprocess.run([sys.executable, "-c", SYNCED_STEP, prefix], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["2"] == pytest.approx(out["1"], rel=1e-5)
    one, two = np.load(prefix + "-1.npz"), np.load(prefix + "-2.npz")
    assert sorted(one.files) == sorted(two.files) and len(one.files) > 60
    for name in one.files:
        a, b = one[name], two[name]
        assert np.abs(a - b).max() <= 1e-3 * max(np.abs(a).max(), 1e-8), name


def test_synced_batchnorm_keeps_the_one_device_names_and_exports_plain_batchnorm(tmp_path):
    """Trained on several devices, the network has the one-device parameter names (checkpoints
    and evaluation are the same whatever the devices), and its export is a plain-BatchNorm graph
    that a new process loads and that ONNX can take."""
    import json
    import subprocess
    import sys

    from dml.nets import EmbeddingNet
    from dml.runs import RunDir, create_run_dir

    mx.random.seed(0)
    plain = EmbeddingNet(8, l2_normalize=True, prefix="embeddingnet0_")
    plain.initialize(mx.init.Xavier(), ctx=CTX1)
    synced = EmbeddingNet(8, l2_normalize=True, sync_devices=2, prefix="embeddingnet0_")
    assert synced.sync_devices == 2 and plain.sync_devices == 0
    assert sorted(synced.collect_params().keys()) == sorted(plain.collect_params().keys())
    assert EmbeddingNet(8, sync_devices=2, freeze_bn=True).sync_devices == 0  # nothing to share
    synced.initialize(ctx=CTX2)
    x = mx.nd.array(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    plain(x), synced(x.as_in_context(CTX2[0]))  # (inference: the deferred shapes)
    for name, param in plain.collect_params().items():
        synced.collect_params()[name].set_data(param.data())
    synced.hybridize()
    run = RunDir(create_run_dir(str(tmp_path), "digits", "triplet_semihard"))
    exported = run.export(synced, 1, input_shape=(3, 32, 32))
    ops = {node["op"] for node in json.load(open(RunDir.export_symbol(exported)))["nodes"]}
    assert "BatchNorm" in ops and not [op for op in ops if "Sync" in op]
    code = ("import sys, json, mxnet as mx, numpy as np; from dml.runs import RunDir; "
            "net = mx.gluon.SymbolBlock.imports(RunDir.export_symbol(sys.argv[1]), ['data'], "
            "sys.argv[1]); print(json.dumps(net(mx.nd.array(np.load(sys.argv[2]))).asnumpy()"
            ".tolist()))")
    np.save(str(tmp_path / "x.npy"), x.asnumpy())
    proc = subprocess.run([sys.executable, "-c", code, exported, str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(proc.stdout)), plain(x).asnumpy(), atol=1e-5)


def _cli_run(tiny_cifar, out, *extra, engine_threads=None):
    import os
    import subprocess
    import sys

    from runhelpers import ROOT, TINY, load_json, only_run_dir

    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("MXNET_CPU_WORKER_NTHREADS", None)  # as a user's shell: the CLI sets it
    if engine_threads is not None:
        env["MXNET_CPU_WORKER_NTHREADS"] = str(engine_threads)
    proc = subprocess.run([sys.executable, "-m", "dml", "train", "--dataset", "cifar10",
                           "--data-root", tiny_cifar, "--epochs", "1", "--output-root", out]
                          + TINY + list(extra), capture_output=True, text=True, env=env,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = only_run_dir(out, "cifar10", "triplet_semihard")
    return load_json(run, "logs/history.json"), load_json(run), proc.stderr


def test_the_clis_resnet_on_two_cpu_contexts_trains_what_one_trains(tiny_cifar, tmp_path):
    """The CLI's ResNet-18 (BatchNorm shared over the contexts) and with --freeze-bn (BatchNorm on
    its running statistics): the first epoch's loss of 2 contexts is 1 context's, up to the
    float32 rounding that compounds over its 9 steps (measured 0.0497 against 0.0485; the summed
    gradients' rounding alone moves frozen BatchNorm's by 0.7%), where each context's own
    statistics give 0.0936."""
    one, _, _ = _cli_run(tiny_cifar, str(tmp_path / "one"))
    two, _, err = _cli_run(tiny_cifar, str(tmp_path / "two"), "--cpus", "2")
    assert "normalizes over its own share" not in err
    assert two[0]["train_loss"] == pytest.approx(one[0]["train_loss"], rel=0.05)
    apart, _, err = _cli_run(tiny_cifar, str(tmp_path / "apart"), "--cpus", "2",
                             engine_threads=1)
    assert "each BatchNorm layer normalizes over its own share of the batch" in err
    assert abs(apart[0]["train_loss"] - one[0]["train_loss"]) > 0.3 * one[0]["train_loss"]
    frozen = [_cli_run(tiny_cifar, str(tmp_path / ("frozen%d" % c)), "--cpus", str(c),
                       "--freeze-bn") for c in (1, 2)]
    assert frozen[1][0][0]["train_loss"] == pytest.approx(frozen[0][0][0]["train_loss"], rel=0.05)


def test_without_engine_threads_the_contexts_keep_their_own_statistics_and_say_so(caplog):
    """In a process whose MXNet loaded with one engine thread per CPU device (this one), the
    statistics stay per device, with a warning that says what differs and how to share them."""
    import logging
    import os

    from dml.engine import build_net

    if int(os.environ.get("MXNET_CPU_WORKER_NTHREADS", "1")) >= 2:
        pytest.skip("this process's MXNet runs several engine threads per device")
    caplog.set_level(logging.WARNING, logger="dml")
    net = build_net(CTX2, embedding_dim=8, train=True)
    assert net.sync_devices == 0
    assert any("each BatchNorm layer normalizes over its own share" in r.getMessage()
               for r in caplog.records)
    assert build_net(CTX2, embedding_dim=8, train=True, freeze_bn=True).sync_devices == 0
    assert build_net(CTX1, embedding_dim=8, train=True).sync_devices == 0
