"""``dml evaluate``, ``dml compare``, the unseen-class protocol, --eval-period and the plots, end
to end on tiny data, and the bad inputs they must refuse with one line and exit code 2."""
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest

from dml.cli import main
from fakedata import CIFAR10_NAMES
from runhelpers import METRIC_KEYS, ROOT, TINY, assert_png, only_run_dir, read_with_tensorboard

SCORES = sorted(METRIC_KEYS - {"split", "num_queries", "embedding_dim", "epochs", "train_seconds"})
pytestmark = pytest.mark.filterwarnings("ignore:Cannot decide type:UserWarning")


def run(argv):
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main(argv)
    return code, printed.getvalue()


def copy_run(run_dir, tmp_path):
    dest = str(tmp_path / "copy" / os.path.relpath(run_dir, os.path.dirname(
        os.path.dirname(os.path.dirname(run_dir)))))
    shutil.copytree(run_dir, dest)
    return dest


def load(run_dir, name="metrics.json"):
    return json.load(open(os.path.join(run_dir, name)))


def test_evaluate_last_reproduces_the_training_metrics(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run[1], tmp_path)
    trained = load(run_dir)
    os.remove(os.path.join(run_dir, "plots", "embedding_test.png"))
    code, out = run(["evaluate", run_dir])
    assert code == 0
    evaluated = load(run_dir)
    for key in SCORES + ["num_queries", "split", "epochs", "train_seconds", "embedding_dim"]:
        assert evaluated[key] == pytest.approx(trained[key]), key
    assert evaluated["checkpoint"] == "last"
    assert "map_at_r" in out and "knn_accuracy" in out
    assert_png(os.path.join(run_dir, "plots", "embedding_test.png"))
    # the projector lists the re-evaluated embedding once, not twice
    projector = open(os.path.join(run_dir, "logs", "projector_config.pbtxt")).read()
    assert projector.count('tensor_name: "test_embedding_000002"') == 1
    assert projector.count('tensor_name: "test_embedding_000001"') == 0  # no --eval-period
    seen = read_with_tensorboard(os.path.join(run_dir, "logs"))
    assert ["test_embedding_000002/tensors.tsv", "test_embedding_000002/metadata.tsv",
            "test_embedding_000002/sprite.png", [32, 32]] in seen["projector"]


def test_evaluate_other_checkpoints(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run[1], tmp_path)
    params = os.path.join(run_dir, "params")
    assert run(["evaluate", run_dir, "--checkpoint", os.path.join(params, "net-0001.params")])[0] == 0
    first = load(run_dir)
    assert first["epochs"] == 1 and first["checkpoint"].endswith("net-0001.params")
    assert run(["evaluate", run_dir, "--checkpoint", os.path.join(params, "net-0002.params")])[0] == 0
    last = load(run_dir)
    assert last["epochs"] == 2
    # the exported graph of the same epoch gives the same embedding, hence the same metrics
    assert run(["evaluate", run_dir, "--checkpoint",
                os.path.join(params, "embedding-0002.params")])[0] == 0
    exported = load(run_dir)
    for key in SCORES:
        assert exported[key] == pytest.approx(last[key], abs=1e-6), key
    assert run(["evaluate", run_dir, "--checkpoint", "best"])[0] == 0
    best = load(run_dir)
    assert best["checkpoint"] == "best" and best["epochs"] == load(run_dir, "params/best/best.json")["epoch"]


def test_eval_period_on_the_test_split_logs_metrics_and_keeps_the_best(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    code, _ = run(["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", "3",
                   "--eval-period", "1", "--select-on-test", "--output-root", out] + TINY)
    assert code == 0
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    history = load(run_dir, "logs/history.json")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    maps = [h["map_at_r"] for h in history]
    best = load(run_dir, "params/best/best.json")
    assert best["epoch"] == 1 + int(np.argmax(maps)) and best["map_at_r"] == max(maps)
    scalars = read_with_tensorboard(os.path.join(run_dir, "logs"))["scalars"]
    assert scalars["eval/map_at_r"] == scalars["eval/recall_at_8"] == [1, 2, 3]
    assert scalars["eval/nmi"] == [3]  # clustering and kNN only at the end
    assert "map_at_r" in open(os.path.join(run_dir, "logs", "train.log")).read().split("epoch 1/3")[1]
    # the best checkpoint, evaluated, gives the map_at_r it was kept for
    assert run(["evaluate", run_dir, "--checkpoint", "best"])[0] == 0
    assert load(run_dir)["map_at_r"] == pytest.approx(max(maps))


def test_unseen_split_trains_on_half_the_classes(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    code, printed = run(["train", "--method", "siamese", "--dataset", "cifar10", "--data-root",
                         tiny_cifar, "--epochs", "1", "--split", "unseen", "--batch-size", "16",
                         "--embedding-dim", "8", "--num-workers", "1", "--output-root", out])
    assert code == 0
    run_dir = only_run_dir(out, "cifar10", "siamese")
    config = load(run_dir, "config.json")
    assert config["split"] == "unseen"
    assert config["train_classes"] == CIFAR10_NAMES[:5] and config["eval_classes"] == CIFAR10_NAMES[5:]
    metrics = load(run_dir)
    # tiny_cifar's 50 test labels are 0..9 in turn: 25 belong to the unseen classes 5..9
    assert metrics["split"] == "unseen" and metrics["num_queries"] == 25
    assert "verification_auc" in metrics and "verification_auc" in printed
    projector = os.path.join(run_dir, "logs", "unseen_embedding_000001", "metadata.tsv")
    assert set(open(projector).read().split()) <= set(CIFAR10_NAMES[5:])
    assert_png(os.path.join(run_dir, "plots", "embedding_unseen.png"))
    # evaluate keeps the run's split; --split test evaluates every class
    assert run(["evaluate", run_dir])[0] == 0
    assert load(run_dir)["num_queries"] == metrics["num_queries"]
    assert run(["evaluate", run_dir, "--split", "test"])[0] == 0
    assert load(run_dir)["split"] == "test" and load(run_dir)["num_queries"] == 50


def test_unseen_split_shrinks_the_default_batch_classes(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    code, _ = run(["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", "1",
                   "--split", "unseen", "--n-samples", "4", "--embedding-dim", "8",
                   "--num-workers", "1", "--output-root", out])
    assert code == 0
    config = load(only_run_dir(out, "cifar10", "triplet_semihard"), "config.json")
    assert config["n_classes"] == 5  # cifar10's default 8 > the 5 training classes


def test_two_dimensional_embedding_is_pictured_as_is(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    code, _ = run(["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", "1",
                   "--output-root", out] + TINY[:4] + ["--embedding-dim", "2", "--num-workers", "1"])
    assert code == 0
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    assert load(run_dir)["embedding_dim"] == 2
    assert_png(os.path.join(run_dir, "plots", "embedding_test.png"))


@pytest.fixture(scope="module")
def two_runs(tiny_run, tiny_cifar, tmp_path_factory):
    """A folder holding the tiny triplet_semihard run and a tiny online_triplet run."""
    root = tmp_path_factory.mktemp("compare")
    shutil.copytree(tiny_run[1], str(root / "cifar10" / "triplet_semihard" / "202601010000"))
    code, _ = run(["train", "--method", "online_triplet", "--selector", "hardest", "--dataset",
                   "cifar10", "--data-root", tiny_cifar, "--epochs", "1", "--output-root",
                   str(root)] + TINY)
    assert code == 0
    return str(root)


def test_compare_markdown_sorted_by_map_at_r(two_runs, tmp_path):
    plot = str(tmp_path / "bars.png")
    code, out = run(["compare", two_runs, "--plot", plot])
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 4
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:5] == ["run", "method", "dataset", "split", "epochs"]
    assert header[-1] == "train_seconds" and set(SCORES) <= set(header)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    maps = [float(r[header.index("map_at_r")]) for r in rows]
    assert maps == sorted(maps, reverse=True)
    methods = {r[header.index("method")] for r in rows}
    assert methods == {"triplet_semihard", "online_triplet (hardest)"}
    assert_png(plot)


def test_compare_csv(two_runs):
    code, out = run(["compare", two_runs, "--format", "csv"])
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 2
    by_method = {r["method"]: r for r in rows}
    semihard = by_method["triplet_semihard"]
    want = load(os.path.join(two_runs, "cifar10", "triplet_semihard", "202601010000"))
    assert semihard["run"] == os.path.join("cifar10", "triplet_semihard", "202601010000")
    assert float(semihard["map_at_r"]) == pytest.approx(want["map_at_r"], abs=1e-4)
    assert semihard["epochs"] == "2" and by_method["online_triplet (hardest)"]["epochs"] == "1"


def test_evaluate_and_compare_help():
    for command, options in (("evaluate", ("--split", "--checkpoint", "last|best|PATH")),
                             ("compare", ("--format", "--plot", "markdown"))):
        proc = subprocess.run([sys.executable, "-m", "dml", command, "--help"], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert proc.returncode == 0
        for option in options:
            assert option in proc.stdout


def other_architecture_params(path):
    """A checkpoint of a different network: embedding dim 4 instead of the run's 16."""
    import mxnet as mx

    from dml.nets import EmbeddingNet

    net = EmbeddingNet(embedding_dim=4)
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    net.save_parameters(path)
    return path


BAD = [
    (["evaluate", "{missing}"], "no run folder at {missing}"),
    (["evaluate", "{empty}"], "{empty} holds no config.json: not a finished dml run folder"),
    (["evaluate", "{no_params}"], "{no_params} holds no checkpoint (params/net-<epoch>.params)"),
    (["evaluate", "{no_params}", "--checkpoint", "best"], "{no_params} holds no best checkpoint"),
    (["evaluate", "{run}", "--checkpoint", "{missing}"], "--checkpoint {missing}: no such file"),
    (["evaluate", "{run}", "--checkpoint", "{other_net}"],
     "checkpoint {other_net} does not fit this run's network (resnet18_v1, embedding dim 16)"),
    (["evaluate", "{run}", "--split", "unseen"], "trained on every class: --split unseen needs"),
    (["evaluate", "{bad_config}"], "cannot read {bad_config}/config.json"),
    (["compare", "{empty}"], "no finished runs under {empty}"),
    (["compare", "{missing}"], "no folder at {missing}"),
    (["compare", "{run}", "--plot", "{empty}/out.jpg"], "--plot {empty}/out.jpg: name a .png file"),
    (["compare", "{run}", "--format", "html"], "invalid choice: 'html'"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2(tiny_run, tmp_path, capsys, argv, message):
    run_dir = copy_run(tiny_run[1], tmp_path)
    no_params = tmp_path / "no_params"
    shutil.copytree(run_dir, str(no_params))
    shutil.rmtree(str(no_params / "params"))
    bad_config = tmp_path / "bad_config"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{not json")
    empty = tmp_path / "empty"
    empty.mkdir()
    names = dict(run=run_dir, missing=str(tmp_path / "missing"), empty=str(empty),
                 no_params=str(no_params), bad_config=str(bad_config),
                 other_net=other_architecture_params(
                     os.path.join(run_dir, "params", "other-architecture.params")))
    before = {f: os.path.getmtime(os.path.join(run_dir, f)) for f in ("metrics.json",)}
    try:
        code = main([a.format(**names) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message.format(**names) in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert before == {f: os.path.getmtime(os.path.join(run_dir, f)) for f in before}
    assert not os.path.exists(os.path.join(str(empty), "out.jpg"))
