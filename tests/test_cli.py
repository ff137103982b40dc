"""The command line, end to end on tiny data, and every bad input it must refuse cleanly."""
import glob
import json
import os
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from dml.cli import main
from dml.runs import create_run_dir
from fakedata import write_cifar, write_image_folder
from runhelpers import (METRIC_KEYS, ROOT, TINY, TensorBoard, assert_png, only_run_dir,
                        read_with_tensorboard)


@pytest.mark.filterwarnings("ignore:Cannot decide type:UserWarning")  # SymbolBlock.imports' own notice
def test_train_end_to_end_run_folder(tiny_cifar, tiny_run):
    out, run, stdout = tiny_run
    assert "map_at_r" in stdout and "tensorboard --logdir %s" % os.path.join(run, "logs") in stdout
    assert sorted(os.listdir(run)) == ["config.json", "logs", "metrics.json", "params", "plots"]

    config = json.load(open(os.path.join(run, "config.json")))
    for key, value in {"method": "triplet_semihard", "dataset": "cifar10", "data_root": tiny_cifar,
                       "epochs": 2, "n_classes": 4, "n_samples": 4, "embedding_dim": 16,
                       "margin": 0.2, "l2_normalize": True, "distance": "euclidean", "optimizer": "adam", "lr": 1e-3,
                       "gpus": [], "num_workers": 1, "seed": 0, "save_period": 1,
                       "output_root": out}.items():
        assert config[key] == value, key

    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert METRIC_KEYS <= set(metrics) and "verification_auc" not in metrics
    for key in METRIC_KEYS - {"split", "num_queries", "embedding_dim", "epochs", "train_seconds"}:
        assert 0 <= metrics[key] <= 1, key
    assert metrics["checkpoint"] == "last"
    assert config["train_classes"] == config["eval_classes"] == config["class_names"]
    assert metrics["num_queries"] == 50 and metrics["epochs"] == 2 and metrics["split"] == "test"

    logs = os.path.join(run, "logs")
    assert glob.glob(os.path.join(logs, "events.out.tfevents.*"))
    assert os.path.getsize(os.path.join(logs, "train.log")) > 0
    projector = open(os.path.join(logs, "projector_config.pbtxt")).read()
    assert "test_embedding_000001" not in projector  # the projector follows --eval-period
    for step in ("000002",):
        emb_dir = os.path.join(logs, "test_embedding_" + step)
        assert 'tensor_path: "test_embedding_%s/tensors.tsv"' % step in projector
        tensors = np.loadtxt(os.path.join(emb_dir, "tensors.tsv"))
        assert tensors.shape == (50, 16)
        names = open(os.path.join(emb_dir, "metadata.tsv")).read().split()
        assert len(names) == 50 and set(names) <= {"airplane", "automobile", "bird", "cat", "deer",
                                                   "dog", "frog", "horse", "ship", "truck"}
        assert open(os.path.join(emb_dir, "sprite.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert "single_image_dim: 32" in projector

    seen = read_with_tensorboard(logs)
    tags = seen["scalars"]
    assert {"train/batch_loss", "train/epoch_loss", "train/learning_rate",
            "train/active_fraction"} <= set(tags)
    assert tags["train/epoch_loss"] == [1, 2]
    assert tags["train/batch_loss"] == [10]  # 9 steps an epoch, logged every 10 steps
    assert tags["eval/map_at_r"] == tags["eval/knn_accuracy"] == [2]  # no --eval-period: the end
    # training health: the untrained network at step 0, then every epoch (dml.health)
    for key in ("map_at_r", "precision_at_1", "spread", "effective_rank", "spectral_decay"):
        assert tags["health/" + key] == [0, 1, 2], key
    assert tags["health/untrained_map_at_r"] == tags["health/zero_loss_batches"] == [1, 2]
    assert seen["images"] == {"plots/loss": [2], "plots/embedding_test": [2],
                              "plots/retrieval_test": [2]}
    for name in ("loss.png", "embedding_test.png", "retrieval_test.png"):
        assert_png(os.path.join(run, "plots", name))
    history = json.load(open(os.path.join(logs, "history.json")))
    assert [h["epoch"] for h in history] == [1, 2] and "map_at_r" in history[1]
    assert 0 <= history[0]["health_map_at_r"] <= 1 and history[1]["health_effective_rank"] > 1
    assert history[0]["health_untrained_map_at_r"] == history[1]["health_untrained_map_at_r"]
    log_text = open(os.path.join(logs, "train.log")).read()
    assert "before training, on a sample of 10 training classes: map_at_r" in log_text
    assert "training-sample map_at_r" in log_text and "(untrained " in log_text
    assert history[1]["map_at_r"] == metrics["map_at_r"]
    assert seen["projector"][-1] == ["test_embedding_000002/tensors.tsv",
                                     "test_embedding_000002/metadata.tsv",
                                     "test_embedding_000002/sprite.png", [32, 32]]

    params = os.path.join(run, "params")
    for epoch in (1, 2):
        for name in ("net-%04d.params", "trainer-%04d.states", "state-%04d.json"):
            assert os.path.getsize(os.path.join(params, name % epoch)) > 0
    assert sorted(f for f in os.listdir(params) if f.startswith("embedding-")) == [
        "embedding-0002.params", "embedding-symbol.json"]
    assert not [f for f in os.listdir(params) if "tmp" in f]
    best = json.load(open(os.path.join(params, "best", "best.json")))
    assert best["epoch"] == 2 and best["map_at_r"] == metrics["map_at_r"]
    assert sorted(os.listdir(os.path.join(params, "best"))) == [
        "best.json", "embedding-0000.params", "embedding-symbol.json", "net.params"]
    # the exported symbol + params is a standalone embedding network
    net = mx.gluon.SymbolBlock.imports(os.path.join(params, "embedding-symbol.json"), ["data"],
                                       os.path.join(params, "embedding-0002.params"))
    x = mx.nd.random.uniform(shape=(3, 3, 32, 32))
    assert net(x).shape == (3, 16)


def test_tensorboard_serves_scalars_and_projector(tiny_run):
    with TensorBoard(os.path.join(tiny_run[1], "logs")) as tb:
        tags = tb.until("/data/plugin/scalars/tags")
        assert "train/epoch_loss" in tags["."]
        info = tb.request("/data/plugin/projector/info?run=.")
        shapes = {e["tensorName"]: e["tensorShape"] for e in info["embeddings"]}
        assert shapes["test_embedding_000002"] == [50, 16]


def test_train_digits_one_epoch(tmp_path):
    out = str(tmp_path)
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--output-root", out]) == 0
    metrics = json.load(open(os.path.join(only_run_dir(out, "digits", "triplet_semihard"),
                                          "metrics.json")))
    assert metrics["num_queries"] == 450 and metrics["embedding_dim"] == 128


def test_train_folder_dataset_on_two_cpu_contexts(tmp_path):
    data = write_image_folder(str(tmp_path / "data"), per_class=(8, 4))
    out = str(tmp_path / "out")
    code = main(["train", "--dataset", "folder", "--data-root", data, "--epochs", "1", "--cpus", "2",
                 "--output-root", out, "--n-classes", "4", "--n-samples", "2", "--embedding-dim", "8"])
    assert code == 0
    run = only_run_dir(out, "folder", "triplet_semihard")
    assert json.load(open(os.path.join(run, "metrics.json")))["num_queries"] == 16
    assert json.load(open(os.path.join(run, "config.json")))["class_names"] == ["cat", "dog", "fox", "owl"]


def test_same_minute_runs_get_suffixes(tmp_path):
    first = create_run_dir(str(tmp_path), "digits", "triplet_semihard", now=0)
    second = create_run_dir(str(tmp_path), "digits", "triplet_semihard", now=1)
    third = create_run_dir(str(tmp_path), "digits", "triplet_semihard", now=2)
    assert second == first + "-2" and third == first + "-3"
    assert sorted(os.listdir(second)) == ["logs", "params"]


def test_launcher_on_tiny_cifar(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    env = dict(os.environ, DML_OFFLINE="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, "train_cifar_triplet_semihard.sh"),
                           "--data-root", tiny_cifar, "--epochs", "1", "--output-root", out,
                           "--num-workers", "1"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = only_run_dir(out, "cifar10", "triplet_semihard")
    config = json.load(open(os.path.join(run, "config.json")))
    assert (config["n_classes"], config["n_samples"], config["epochs"]) == (8, 16, 1)
    assert config["lr_steps"] == [40, 50]
    assert os.path.isfile(os.path.join(run, "metrics.json"))


# every method and selector a user can pick, one epoch on tiny CIFAR: (argv, logged statistic)
METHOD_RUNS = [
    (["--method", "siamese", "--batch-size", "16"], "active fraction"),
    (["--method", "triplet", "--batch-size", "16"], "active fraction"),
    (["--method", "softmax", "--batch-size", "16"], "accuracy"),
    (["--method", "triplet", "--batch-size", "16", "--cpus", "2"], "active fraction"),
    (["--method", "softmax", "--batch-size", "16", "--cpus", "2"], "accuracy"),
    (["--method", "arcface", "--batch-size", "16"], "accuracy"),
    (["--method", "cosface", "--batch-size", "16", "--scale", "16"], "accuracy"),
    (["--method", "sphereface", "--batch-size", "16"], "accuracy"),
    (["--method", "sphereface", "--batch-size", "16", "--cpus", "2", "--margin", "2"], "accuracy"),
    (["--method", "triplet_batch_hard"] + TINY[:4], "active fraction"),
    (["--method", "triplet_batch_all"] + TINY[:4], "positive triplet fraction"),
] + [(["--method", "online_triplet", "--selector", s] + TINY[:4], "active fraction")
     for s in ("all", "hardest", "random_hard", "semihard")] + [
    (["--method", "online_contrastive", "--selector", s] + TINY[:4], "active fraction")
    for s in ("all_positive", "hard_negative")]


@pytest.mark.filterwarnings("ignore:Cannot decide type:UserWarning")
@pytest.mark.parametrize("argv,stat", METHOD_RUNS, ids=[" ".join(a) for a, _ in METHOD_RUNS])
def test_every_method_trains_end_to_end(tiny_cifar, tmp_path, argv, stat):
    out = str(tmp_path / "out")
    code = main(["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs", "1",
                 "--output-root", out, "--embedding-dim", "8", "--num-workers", "1"] + argv)
    assert code == 0
    method = argv[1]
    run = only_run_dir(out, "cifar10", method)
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert METRIC_KEYS <= set(metrics) and metrics["num_queries"] == 50
    assert ("verification_auc" in metrics) == (method == "siamese")
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["method"] == method
    if "--selector" in argv:
        assert config["selector"] == argv[argv.index("--selector") + 1]
    log_text = open(os.path.join(run, "logs", "train.log")).read()
    assert re.search(r"epoch 1/1: loss \d+\.\d+, %s \d\.\d{3}" % stat, log_text), log_text
    assert ("val loss" in log_text) == (method in ("siamese", "triplet"))
    params = os.path.join(run, "params")
    assert os.path.isfile(os.path.join(params, "classifier-0001.params")) == (
        method in ("softmax", "arcface", "cosface", "sphereface"))
    for key in ("margin", "scale"):
        if "--" + key in argv:
            assert config[key] == float(argv[argv.index("--" + key) + 1])
    # what is exported is the embedding net alone, whatever wrapper trained it
    net = mx.gluon.SymbolBlock.imports(os.path.join(params, "embedding-symbol.json"), ["data"],
                                       os.path.join(params, "embedding-0001.params"))
    assert net(mx.nd.random.uniform(shape=(2, 3, 32, 32))).shape == (2, 8)


def test_method_defaults_are_recorded(tmp_path):
    from dml.cli import build_parser, config_from_args

    for method, want in {"online_triplet": dict(selector="random_hard", batch_size=0, n_classes=10),
                         "online_contrastive": dict(selector="hard_negative"),
                         "siamese": dict(batch_size=64, n_classes=0, selector=None),
                         "softmax": dict(distance="cosine", l2_normalize=False)}.items():
        cfg = config_from_args(build_parser().parse_args(["train", "--method", method]))
        for key, value in want.items():
            assert getattr(cfg, key) == value, (method, key)
    cfg = config_from_args(build_parser().parse_args(["train", "--method", "siamese",
                                                      "--dataset", "cifar10"]))
    assert (cfg.n_classes, cfg.n_samples, cfg.batch_size) == (0, 0, 64)


def test_one_class_batches_train_safely_with_a_warning(tiny_cifar, tmp_path):
    out = str(tmp_path / "out")
    code = main(["train", "--method", "online_triplet", "--dataset", "cifar10", "--data-root",
                 tiny_cifar, "--epochs", "1", "--output-root", out, "--embedding-dim", "8",
                 "--n-classes", "1", "--n-samples", "8", "--num-workers", "1"])
    assert code == 0
    log_text = open(os.path.join(only_run_dir(out, "cifar10", "online_triplet"), "logs",
                                 "train.log")).read()
    assert "WARNING a batch of 8 samples from 1 class(es) forms no triplet: its loss is 0" in log_text
    assert re.search(r"epoch 1/1: loss 0\.0000, active fraction 0\.000", log_text)


@pytest.mark.parametrize("launcher,method,kind", [
    ("train_cifar_siamese.sh", "siamese", "pairs"), ("train_cifar_triplet.sh", "triplet", "triplets"),
    ("train_cifar_arcface.sh", "arcface", "images"), ("train_cifar_cosface.sh", "cosface", "images"),
    ("train_cifar_sphereface.sh", "sphereface", "images")])
def test_tuple_launchers_on_tiny_cifar(tiny_cifar, tmp_path, launcher, method, kind):
    out = str(tmp_path / "out")
    env = dict(os.environ, DML_OFFLINE="1")
    proc = subprocess.run(["bash", os.path.join(ROOT, launcher), "--data-root", tiny_cifar,
                           "--epochs", "1", "--output-root", out, "--num-workers", "1",
                           "--batch-size", "32", "--embedding-dim", "8"],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = only_run_dir(out, "cifar10", method)
    config = json.load(open(os.path.join(run, "config.json")))
    assert (config["method"], config["batch_size"], config["epochs"]) == (method, 32, 1)
    assert config["lr_steps"] == [40, 50] and config["backbone"] == "resnet18_v1"
    assert "batches of 32 %s" % kind in open(os.path.join(run, "logs", "train.log")).read()
    heads = {"arcface": (0.5, 64.0), "cosface": (0.35, 64.0), "sphereface": (4.0, 30.0)}
    if method in heads:
        assert (config["margin"], config["scale"]) == heads[method]
    assert os.path.isfile(os.path.join(run, "metrics.json"))


def test_help_explains_the_options():
    proc = subprocess.run([sys.executable, "-m", "dml", "train", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0
    for option in ("--method", "--dataset", "--data-root", "--epochs", "--n-classes", "--n-samples",
                   "--embedding-dim", "--margin", "--optimizer", "--lr", "--wd", "--gpus",
                   "--num-workers", "--seed", "--save-period", "--output-root", "--pretrained",
                   "--selector", "--batch-size", "random_hard", "hard_negative", "--split", "--scale",
                   "--eval-period"):
        assert option in proc.stdout


def run_bad(capsys, argv):
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    return code, err


BAD_INPUTS = [
    (["--method", "quadruplet"], "unknown method 'quadruplet'"),
    (["--method", "arcface", "--margin", "1.6"],
     "arcface: ArcFace margin m must be in [0, pi/2), not 1.6 (--margin 1.6, --scale 64)"),
    (["--method", "cosface", "--margin", "1"], "cosface: CosFace margin m must be in [0, 1)"),
    (["--method", "sphereface", "--margin", "2.5"],
     "sphereface: SphereFace margin m must be a positive integer, not 2.5"),
    (["--method", "arcface", "--scale", "0"], "must be > 0"),
    (["--method", "arcface", "--scale", "inf"], "'inf' must be a finite number"),
    (["--scale", "30"], "--scale applies to arcface, cosface, sphereface, subcenter_arcface, not "
                        "triplet_semihard"),
    (["--method", "cosface", "--n-classes", "4"], "cosface takes --batch-size"),
    (["--method", "online_triplet", "--selector", "hard"],
     "unknown selector 'hard' for online_triplet: choose one of random_hard, all, hardest, semihard"),
    (["--method", "online_contrastive", "--selector", "semihard"],
     "unknown selector 'semihard' for online_contrastive"),
    (["--method", "siamese", "--selector", "all"], "--selector applies to online_triplet and"),
    (["--method", "siamese", "--margin", "0"], "must be > 0"),
    (["--method", "online_triplet", "--margin", "-0.2"], "must be > 0"),
    (["--method", "triplet", "--n-classes", "4"], "triplet takes --batch-size"),
    (["--batch-size", "32"], "--batch-size applies to siamese, triplet and softmax"),
    (["--method", "softmax", "--batch-size", "5000"], "--batch-size 5000 is larger than the 1347"),
    (["--method", "siamese", "--dataset", "folder", "--data-root", "{one_class}"],
     "siamese needs at least 2 classes"),
    (["--dataset", "svhn"], "unknown dataset 'svhn'"),
    (["--dataset", "cifar10", "--data-root", "{empty}"], "CIFAR-10 not found in"),
    (["--dataset", "cifar10", "--data-root", "{corrupt}"], "is not a CIFAR binary batch"),
    (["--dataset", "folder"], "needs --data-root"),
    (["--n-classes", "11"], "--n-classes 11 but digits has only 10 classes"),
    (["--n-classes", "10", "--n-samples", "200"], "larger than the 1347 training images"),
    (["--gpus", "0,a"], "not a comma-separated list of GPU numbers"),
    (["--gpus", "1,1"], "must be distinct"),
    (["--gpus", "0"], "mxnet sees 0 GPU(s)"),
    (["--margin", "0"], "must be > 0"),
    (["--margin", "-1"], "must be > 0"),
    (["--epochs", "zero"], "not a whole number"),
    (["--distance", "manhattan"], "invalid choice"),
    (["--output-root", "{file}/sub"], "cannot write to --output-root"),
    (["--pretrained"], "--pretrained needs GluonCV's ImageNet weights for resnet18_v1 at {home}"),
    (["--backbone", "resnet1000"], "unknown backbone 'resnet1000'"),
    (["--split", "unseen", "--dataset", "folder", "--data-root", "{three_classes}"],
     "--split unseen needs a dataset with at least 4 classes (half to train on, half to evaluate "
     "on); folder has 3"),
    (["--split", "seen"], "invalid choice: 'seen'"),
    (["--eval-period", "-1"], "must be >= 0"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, argv,
                                                         message):
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet_home"))
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    write_cifar(str(corrupt), "cifar10", "binary", n_train=20, n_test=10)
    path = corrupt / "cifar-10-batches-bin" / "data_batch_1.bin"
    path.write_bytes(path.read_bytes()[:1000])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    one_class = write_image_folder(str(tmp_path / "one_class"), classes=("cat",), per_class=(3, 2))
    three_classes = write_image_folder(str(tmp_path / "three"), classes=("a", "b", "c"),
                                       per_class=(3, 2))
    out = tmp_path / "out"
    argv = [a.format(empty=empty, corrupt=corrupt, file=blocker, one_class=one_class,
                     three_classes=three_classes) for a in argv]
    if "--output-root" not in argv:
        argv += ["--output-root", str(out)]
    code, err = run_bad(capsys, ["train"] + argv)
    assert code == 2
    assert message.format(home=tmp_path / "mxnet_home") in err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())
