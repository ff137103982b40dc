"""Distributed jobs on MXNet's parameter-server kvstore, started by scripts/launch.py: a real local
2-worker dist_sync job on tiny CIFAR files, the ssh launcher through a stand-in ssh, and bad input."""
import glob
import json
import os
import stat
import subprocess
import sys

import pytest

from dml.cli import main
from runhelpers import ROOT, only_run_dir

LAUNCH = os.path.join(ROOT, "scripts", "launch.py")
TINY_DIGITS = ["--dataset", "digits", "--epochs", "1", "--n-classes", "4", "--n-samples", "4",
               "--embedding-dim", "16", "--num-workers", "1"]

# Two workers push gradients of different batches: with dist_sync both end with the same weights,
# the update of the summed gradients; each writes its rank and weights.
KVSTORE_SCRIPT = """
import json, sys
import mxnet as mx
from mxnet import autograd, gluon, nd
kv = mx.kv.create("dist_sync")
net = gluon.nn.Dense(2, in_units=3)
net.initialize(mx.init.One())
trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1}, kvstore=kv,
                        update_on_kvstore=False)
with autograd.record():
    loss = net(nd.full((1, 3), kv.rank + 1.0)).sum()
loss.backward()
# what dml's Workers.pull_weights_before_pushing does: the initial weights pulled before the
# first gradient push (without it, one worker sometimes starts from the summed gradients)
trainer._init_kvstore(); trainer._init_params(); nd.waitall()
trainer.step(1)
nd.waitall()
with open("%s/rank%d.json" % (sys.argv[1], kv.rank), "w") as f:
    json.dump({"workers": kv.num_workers, "weight": net.weight.data().asnumpy().tolist()}, f)
"""


# Two workers' cross-batch memories through the kvstore's all-gather: each feeds its own shard of
# each step's batch; each writes its memory and losses.
XBM_SCRIPT = """
import json, sys
import numpy as np
import mxnet as mx
from mxnet import autograd
from dml.engine import Workers
from dml.losses import MultiSimilarityLoss
from dml.losses.memory import CrossBatchMemory
from dml.miners import MultiSimilarityMiner
kv = mx.kv.create("dist_sync")
workers = Workers(kv)
xbm = CrossBatchMemory(MultiSimilarityLoss(), 40, miner=MultiSimilarityMiner(),
                       gather=workers.all_gather)
losses = []
for step in range(5):
    rng = np.random.default_rng([step, workers.rank])
    x = mx.nd.array(rng.normal(size=(6, 5)))
    labels = mx.nd.array(rng.integers(0, 4, size=6))
    with autograd.record():
        loss = xbm(x, labels)
    losses.append(float(loss.asscalar()))
refs, ref_labels = xbm.references()
with open("%s/rank%d.json" % (sys.argv[1], workers.rank), "w") as f:
    json.dump({"losses": losses, "memory": refs.tolist(), "labels": ref_labels.tolist()}, f)
"""


def launch(args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, LAUNCH] + args, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def no_dist_env():
    return {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}


@pytest.mark.parametrize("kvstore,method,extra", [
    ("dist_sync", "triplet_semihard", []),
    ("dist_async", "triplet_semihard", ["--lr-steps", ""]),  # (CIFAR's recipe steps the rate)
    ("dist_sync", "multi_similarity", ["--memory-size", "64"])])
def test_local_two_worker_job(tiny_cifar, tmp_path, kvstore, method, extra):
    out = str(tmp_path / "out")
    proc = launch(["--launcher", "local", "-n", "2", "-s", "1", "--",
                   sys.executable, "-m", "dml", "train", "--method", method,
                   "--kvstore", kvstore, "--output-root", out, "--dataset", "cifar10",
                   "--data-root", tiny_cifar] + TINY_DIGITS[2:] + extra,
                  env=dict(no_dist_env(), PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(out, "cifar10", method)  # one folder, agreed by both
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["epochs"] == 1 and 0 < metrics["map_at_r"] <= 1
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["kvstore"] == kvstore
    log = open(os.path.join(run_dir, "logs", "train.log")).read()
    # rank 0 alone writes; each worker trains on its half: 150 // (2 x 16) batches
    assert "(worker 0 of 2)" in log and "(worker 1 of 2)" not in log
    assert "4 batches of 4 x 4 images" in log
    assert "worker 1 of 2 done" in proc.stderr
    assert glob.glob(os.path.join(run_dir, "params", "state-*.json"))
    # dist_async updates on the servers: its checkpoints hold no optimizer state
    states = glob.glob(os.path.join(run_dir, "params", "trainer-*.states"))
    assert bool(states) == (kvstore == "dist_sync")


def test_two_workers_memories_hold_every_workers_batch_in_order(tmp_path):
    """A real dist_sync job: after the kvstore's all-gather both workers' memories are the one
    of a single worker fed both shards, and the workers' mean loss is its loss."""
    import mxnet as mx

    from dml.losses import MultiSimilarityLoss
    from dml.losses.memory import CrossBatchMemory
    from dml.miners import MultiSimilarityMiner

    script = tmp_path / "xbm.py"
    script.write_text(XBM_SCRIPT)
    proc = launch(["--launcher", "local", "-n", "2", "-s", "1", "--", sys.executable,
                   str(script), str(tmp_path)], env=dict(no_dist_env(), PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.load(open(str(tmp_path / ("rank%d.json" % r)))) for r in (0, 1)]
    single = CrossBatchMemory(MultiSimilarityLoss(), 40, miner=MultiSimilarityMiner())
    import numpy as np

    for step in range(5):
        shards = [np.random.default_rng([step, r]) for r in (0, 1)]
        shards = [(g.normal(size=(6, 5)), g.integers(0, 4, size=6)) for g in shards]
        loss = single(mx.nd.array(np.concatenate([s[0] for s in shards])),
                      mx.nd.array(np.concatenate([s[1] for s in shards]))).asscalar()
        assert np.mean([r["losses"][step] for r in ranks]) == pytest.approx(loss, rel=1e-5)
    refs, labels = single.references()
    for r in ranks:
        assert np.array_equal(np.array(r["memory"], dtype=np.float32), refs)
        assert r["labels"] == labels.tolist()


def test_ssh_launcher_runs_a_job_through_ssh(tmp_path):
    """--launcher ssh with a hostfile, through a stand-in ``ssh`` that runs the remote command
    here: the path dmlc_tracker takes on a real cluster (environment exported, cd, command)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text('#!/bin/bash\n# ssh [-o ...] HOST -p PORT COMMAND: run COMMAND here\n'
                   'exec bash -c "${@: -1}"\n')
    ssh.chmod(ssh.stat().st_mode | stat.S_IEXEC)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\n127.0.0.1:22\n")  # addresses: ps-lite binds to them
    script = tmp_path / "job.py"
    script.write_text(KVSTORE_SCRIPT)
    env = dict(no_dist_env(), PATH=str(bin_dir) + os.pathsep + os.environ["PATH"])
    proc = launch(["--launcher", "ssh", "-n", "2", "-s", "1", "-H", str(hosts), "--host-ip",
                   "127.0.0.1", "--", sys.executable, str(script), str(tmp_path)],
                  env=env, cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.load(open(tmp_path / ("rank%d.json" % r))) for r in (0, 1)]
    assert ranks[0]["workers"] == ranks[1]["workers"] == 2
    # weights 1 - 0.1 * (1 + 2): the gradients of both workers were summed
    assert ranks[0]["weight"] == ranks[1]["weight"]
    assert ranks[0]["weight"][0][0] == pytest.approx(1 - 0.1 * 3)


def test_a_failing_worker_fails_the_job(tmp_path):
    proc = launch(["-n", "2", "-s", "1", "--", sys.executable, "-c", "import sys; sys.exit(3)"],
                  env=no_dist_env(), timeout=120)
    assert proc.returncode == 3
    assert "a worker exited with code 3" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["-n", "2"], "no command"),
    (["-n", "2", "--"], "no command"),
    (["--launcher", "ssh", "-n", "2", "--", "true"], "needs -H HOSTFILE"),
    (["--launcher", "ssh", "-n", "2", "-H", "/no/such/hosts", "--", "true"], "no such file"),
    (["--launcher", "mpi", "-n", "2", "--", "true"], "needs mpirun on the PATH"),
    (["--launcher", "slurm", "-n", "2", "--", "true"], "needs srun on the PATH"),
    (["--launcher", "sge", "-n", "2", "--", "true"], "needs qsub on the PATH"),
    (["-n", "0", "--", "true"], "must be >= 1"),
    (["--launcher", "yarn", "-n", "1", "--", "true"], "invalid choice"),
])
def test_launch_bad_input(tmp_path, args, message):
    env = dict(no_dist_env(), PATH=str(tmp_path))  # no mpirun, srun or qsub here
    proc = subprocess.run([sys.executable, LAUNCH] + args, capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_empty_hostfile(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("\n\n")
    proc = launch(["--launcher", "ssh", "-n", "1", "-H", str(hosts), "--", "true"], timeout=60)
    assert proc.returncode == 2 and "lists no host" in proc.stderr


def test_dist_kvstore_without_the_launcher(tmp_path, monkeypatch, capsys):
    for name in list(os.environ):
        if name.startswith("DMLC_"):
            monkeypatch.delenv(name)
    out = str(tmp_path / "out")
    assert main(["train", "--kvstore", "dist_sync", "--output-root", out] + TINY_DIGITS) == 2
    err = capsys.readouterr().err
    assert "--kvstore dist_sync needs the environment of MXNet's launcher" in err
    assert "scripts/launch.py" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(out)


def test_launch_help():
    proc = launch(["--help"], timeout=60)
    assert proc.returncode == 0 and "dmlc_tracker" in proc.stdout and "--launcher" in proc.stdout


def test_dist_async_refuses_learning_rate_steps(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["train", "--kvstore", "dist_async", "--lr-steps", "5", "--output-root", out]
                + TINY_DIGITS) == 2
    err = capsys.readouterr().err
    assert "--lr-steps 5 cannot apply" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(out)
