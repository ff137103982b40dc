"""The similarity and proxy methods through the command line: each trains and evaluates with its
paper's defaults, records them in config.json, and refuses options that do not apply to it. (Their
losses against naive loops: test_modern_losses.py; two devices: test_devices.py; SIGTERM, resume
and evaluate in new processes: test_hostile.py's "proxy" and "mined" kinds.)"""
import glob
import json
import os

import pytest

from dml.cli import main
from dml.registry import MINER_METHODS, PK_METHODS, PROXY_METHODS
from runhelpers import TINY

NEW_PAIR_METHODS = ("multi_similarity", "circle", "supcon", "lifted", "npairs", "margin")


def run_dir(out, method):
    runs = glob.glob(os.path.join(out, "cifar10", method, "*"))
    assert len(runs) == 1, runs
    return runs[0]


@pytest.mark.parametrize("method", NEW_PAIR_METHODS + PROXY_METHODS + ("subcenter_arcface",))
def test_each_new_method_trains_and_evaluates(method, tiny_cifar, tmp_path, capsys):
    out = str(tmp_path / "out")
    shape = TINY if method in PK_METHODS else ["--batch-size", "16", "--embedding-dim", "16",
                                               "--num-workers", "1"]
    code = main(["train", "--method", method, "--dataset", "cifar10", "--data-root", tiny_cifar,
                 "--epochs", "1", "--output-root", out] + shape)
    assert code == 0
    run = run_dir(out, method)
    config = json.load(open(os.path.join(run, "config.json")))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert 0 <= metrics["map_at_r"] <= 1 and config["distance"] in ("cosine", "euclidean")
    assert config["l2_normalize"] is True
    history = json.load(open(os.path.join(run, "logs", "history.json")))
    stat = ("accuracy" if method in PROXY_METHODS + ("subcenter_arcface",) else
            "active_fraction" if method == "margin" else "similarity_gap")
    assert stat in history[0], history[0]
    if method in PROXY_METHODS:
        assert config["loss_lr_mult"] == (100.0 if method in ("proxy_anchor", "soft_triple")
                                          else 1.0)
        assert glob.glob(os.path.join(run, "params", "classifier-*.params"))  # the proxies
    if method == "multi_similarity":
        assert config["miner"] == "multi_similarity" and config["margin"] is None
    if method == "margin":
        assert config["miner"] == "distance_weighted" and config["margin"] == 0.2
    if method in ("circle", "lifted"):
        assert config["miner"] == "none" and config["margin"] == {"circle": 0.4,
                                                                  "lifted": 1.0}[method]


def test_proxies_train_with_their_learning_rate_multiplier():
    import mxnet as mx

    from dml.methods import get_method
    from dml.nets import EmbeddingNet

    net = EmbeddingNet(embedding_dim=8)
    net.initialize(ctx=mx.cpu())
    model = get_method("proxy_anchor").build_model(net, 5, [mx.cpu()], 0.1, 0.0,
                                                   loss_lr_mult=37.0)
    assert model.classifier.proxies.lr_mult == 37.0
    assert model.classifier.proxies.shape == (5, 8)


def test_a_miner_changes_the_pairs(tiny_cifar, tmp_path):
    """circle with --miner multi_similarity scores fewer pairs than circle on every pair: the
    first epoch's loss differs (same seed, same batches)."""
    losses = []
    for miner in ("none", "multi_similarity"):
        out = str(tmp_path / miner)
        assert main(["train", "--method", "circle", "--miner", miner, "--dataset", "cifar10",
                     "--data-root", tiny_cifar, "--epochs", "1", "--output-root", out]
                    + TINY) == 0
        history = json.load(open(os.path.join(run_dir(out, "circle"), "logs", "history.json")))
        losses.append(history[0]["train_loss"])
    assert losses[0] != losses[1]


@pytest.mark.parametrize("argv,message", [
    (["--method", "triplet_semihard", "--miner", "multi_similarity"],
     "--miner applies to %s, not triplet_semihard" % ", ".join(MINER_METHODS)),
    (["--method", "npairs", "--miner", "none"], "--miner applies to"),
    (["--method", "margin", "--miner", "multi_similarity"],
     "--miner multi_similarity does not apply to margin: choose distance_weighted or none"),
    (["--method", "circle", "--miner", "distance_weighted"], "does not apply to circle"),
    (["--method", "circle", "--loss-lr-mult", "10"], "--loss-lr-mult applies to the proxy"),
    (["--method", "supcon", "--margin", "0.5"], "--margin does not apply to supcon"),
    (["--method", "multi_similarity", "--margin", "0.5"], "--margin does not apply to"),
    (["--method", "proxy_anchor", "--n-classes", "4"], "proxy_anchor takes --batch-size"),
    (["--method", "proxy_nca", "--loss-lr-mult", "0"], "must be > 0"),
    (["--method", "circle", "--margin", "1.5"], "m must be between 0 and 1"),
])
def test_options_that_do_not_apply_are_refused(argv, message, tmp_path, capsys):
    try:
        code = main(["train", "--dataset", "digits", "--output-root", str(tmp_path)] + argv)
    except SystemExit as stop:  # argparse's own usage errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not os.listdir(str(tmp_path))


def test_npairs_batches_two_images_per_class_whatever_the_dataset():
    from dml.config import defaults_for

    for dataset in ("digits", "cifar10", "cifar100", "folder"):
        assert defaults_for("npairs", dataset)["n_samples"] == 2, dataset
    assert defaults_for("multi_similarity", "cifar10")["n_samples"] == 16  # the dataset's shape
