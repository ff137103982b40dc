"""The library without the CLI: examples/train_loop.py (the loop the README shows) runs as a user
would run it and learns, and the pieces it uses behave as it relies on."""
import os
import subprocess
import sys

import mxnet as mx
import numpy as np

from runhelpers import ROOT


def test_the_example_training_loop_runs_and_learns():
    """An untrained net scores map_at_r 0.32 on the digits test split; 2 epochs of the example's
    loop reach about 0.67 (3 epochs: 0.91). The health monitor the loop drives measures the same
    images: its last epoch's map_at_r is the final evaluation's, its untrained one is lower."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_loop.py"), "2"],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == ["epoch 1", "epoch 2"], proc.stdout
    words = lines[-1].split()
    assert words[0] == "map_at_r" and words[2] == "precision_at_1", proc.stdout
    assert float(words[1]) > 0.5 and float(words[3]) > 0.8, proc.stdout
    monitored = lines[-2].replace("(", " ").replace(")", " ").replace(",", " ").split()
    assert monitored[3] == "map_at_r" and monitored[5] == "untrained", proc.stdout
    assert abs(float(monitored[4]) - float(words[1])) < 1e-3, proc.stdout  # the same embedding
    assert float(monitored[6]) < 0.45 < float(monitored[4]), proc.stdout


def test_batch_loader_yields_ndarrays_on_a_context():
    from dml.data import BatchLoader, SequentialBatches, load_digits

    data = load_digits()
    plain = BatchLoader(data.test, SequentialBatches(20, 8), data.mean, data.std, num_workers=0)
    on_ctx = BatchLoader(data.test, SequentialBatches(20, 8), data.mean, data.std, num_workers=0,
                         ctx=mx.cpu(0))
    plain, on_ctx = list(plain), list(on_ctx)
    assert len(plain) == len(on_ctx) == 3  # 20 images in batches of 8
    for (x, y), (xn, yn) in zip(plain, on_ctx):
        assert isinstance(xn, mx.nd.NDArray) and xn.context == mx.cpu(0)
        assert np.array_equal(x, xn.asnumpy()) and np.array_equal(y, yn.asnumpy())
        assert x.dtype == np.float32 and x.shape[1:] == (3, 32, 32)


def test_evaluate_matches_the_metric_functions():
    from dml.data import BatchLoader, SequentialBatches, load_digits
    from dml.evaluation import all_metrics, embed, evaluate
    from dml.nets import EmbeddingNet

    data = load_digits()
    net = EmbeddingNet(8, backbone="cifar_resnet20_v1")
    net.initialize()
    metrics = evaluate(net, data.test, data.mean, data.std, references=data.train)
    loader = BatchLoader(data.test, SequentialBatches(len(data.test), 100), data.mean, data.std)
    refs = BatchLoader(data.train, SequentialBatches(len(data.train), 100), data.mean, data.std)
    e, l = embed(net, loader, mx.cpu())
    re, rl = embed(net, refs, mx.cpu())
    assert metrics == all_metrics(e, l, re, rl)


def test_gather_embeddings_concatenates_devices_in_batch_order():
    from mxnet import autograd

    from dml.methods import gather_embeddings

    net = mx.gluon.nn.Dense(3, in_units=4)
    net.initialize(ctx=[mx.cpu(0), mx.cpu(1)])
    x = mx.nd.random.normal(shape=(6, 4))
    labels = mx.nd.arange(6)
    parts = [(x[:4].as_in_context(mx.cpu(0)), labels[:4].as_in_context(mx.cpu(0))),
             (x[4:].as_in_context(mx.cpu(1)), labels[4:].as_in_context(mx.cpu(1)))]
    with autograd.record():
        embeddings, gathered = gather_embeddings(net, parts, [mx.cpu(0), mx.cpu(1)])
        loss = embeddings.sum()
    loss.backward()
    assert embeddings.context == mx.cpu(0) and embeddings.shape == (6, 3)
    assert np.array_equal(gathered.asnumpy(), labels.asnumpy())
    assert np.allclose(embeddings.asnumpy(), net(x).asnumpy(), atol=1e-6)
    # each device got the gradient of its own slice: 4 rows on cpu(0), 2 on cpu(1)
    grads = [net.weight.grad(c).asnumpy() for c in (mx.cpu(0), mx.cpu(1))]
    assert np.allclose(grads[0] + grads[1], np.tile(x.asnumpy().sum(0), (3, 1)), atol=1e-5)
    assert np.allclose(grads[1], np.tile(x[4:].asnumpy().sum(0), (3, 1)), atol=1e-5)


def _small_digits_run(tmp_path, epochs=2):
    """A 2-epoch run of a small network on part of digits: the hooks, not the learning, are
    under test."""
    import dataclasses

    from dml.config import RunConfig, defaults_for
    from dml.data import load_digits
    from dml.runs import RunDir

    cfg = RunConfig.from_dict(dict(defaults_for("triplet_semihard", "digits"), epochs=epochs,
                                   n_classes=4, n_samples=4, embedding_dim=8,
                                   backbone="cifar_resnet20_v1", num_workers=0))
    digits = load_digits()
    digits = dataclasses.replace(digits, train=digits.train.subset(range(240)),
                                 test=digits.test.subset(range(100)))
    return cfg, digits, RunDir.create(str(tmp_path), "digits", cfg.method)


def test_fit_calls_a_hook_at_the_events_it_declares_in_the_order_of_priorities(tmp_path):
    """A hook of mixins gets exactly its declared events, in the loop's order: epoch_begin before
    an epoch's batches; at priority 0 its epoch_end comes after the health monitor's and the
    recorder's (state.health and state.record are the epoch's) and before the logger's; fit_end
    comes after train_end and before metrics.json is written (the completer is last)."""
    from dml.engine import fit
    from dml.hooks import BatchEnd, EpochBegin, EpochEnd, FitEnd, TrainEnd

    class Declared(EpochBegin, EpochEnd, TrainEnd, FitEnd):
        def __init__(self, run):
            self.run, self.events = run, []

        def batch_end(self, state):  # not declared (no BatchEnd): never called
            self.events.append(("batch",))

        def epoch_begin(self, state):
            self.events.append(("begin", state.epoch, state.seen, state.batches))

        def epoch_end(self, state):
            self.events.append(("epoch", state.epoch, state.record["epoch"],
                                "health_map_at_r" in state.health))

        def train_end(self, state):
            self.events.append(("end", state.metrics is not None))

        def fit_end(self, state):
            self.events.append(("fit_end", self.run.has(self.run.METRICS)))

    class Late(BatchEnd):
        priority = 5000  # after the logger

        def __init__(self):
            self.steps = []

        def batch_end(self, state):
            self.steps.append(state.step)

    cfg, digits, run = _small_digits_run(tmp_path)
    declared, late = Declared(run), Late()
    metrics = fit(cfg, digits, run, hooks=[late, declared])
    batches = len(late.steps) // 2
    assert late.steps == list(range(1, 2 * batches + 1))
    assert declared.events == [("begin", 1, 0, batches), ("epoch", 1, 1, True),
                               ("begin", 2, 0, batches), ("epoch", 2, 2, True), ("end", True),
                               ("fit_end", False)]
    assert run.read(run.METRICS)["map_at_r"] == metrics["map_at_r"]


def test_fit_takes_a_users_hook_without_the_cli(tmp_path):
    """The engine's loop with one more hook (without mixins: called by its methods' names), from
    Python: the hook sees every batch and epoch in order and the final metrics, and the run
    folder is the CLI's."""
    from dml.engine import fit

    class Counter:
        def __init__(self):
            self.events = []

        def batch_end(self, state):
            self.events.append(("batch", state.epoch, state.step))

        def epoch_end(self, state):
            self.events.append(("epoch", state.epoch, state.record["train_loss"]))

        def train_end(self, state):
            self.events.append(("end", state.evaluation[0]["map_at_r"]))

    cfg, digits, run = _small_digits_run(tmp_path)
    hook = Counter()
    metrics = fit(cfg, digits, run, hooks=[hook])
    batches = [e for e in hook.events if e[0] == "batch"]
    epochs = [e for e in hook.events if e[0] == "epoch"]
    assert [e[2] for e in batches] == list(range(1, len(batches) + 1))
    assert [e[1] for e in epochs] == [1, 2] and hook.events[-1] == ("end", metrics["map_at_r"])
    assert run.read(run.METRICS)["map_at_r"] == metrics["map_at_r"]
    assert [s["id"] for s in run.complete_checkpoints()] == ["0002"]
