"""The recipe for classes never seen in training (doc/unseen.md): the small stem and when `auto`
picks it, the cosine learning rate, the dataset defaults that carry it, the raw-pixel baseline
against a loop reference, and the warnings a run gives when training hurts its embedding."""
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from dml import baselines
from dml.config import RunConfig, defaults_for, resolve_stem
from dml.engine import _warn_repeats, learning_rate_at
from dml.nets import EmbeddingNet
from runhelpers import ROOT


def test_auto_stem_is_small_only_for_small_inputs_of_a_resnet_from_random_weights():
    assert resolve_stem("auto", 32, False, "resnet18_v1") == "small"
    assert resolve_stem("auto", 64, False, "resnet50_v1") == "small"
    assert resolve_stem("auto", 65, False, "resnet18_v1") == "imagenet"
    assert resolve_stem("auto", 32, True, "resnet18_v1") == "imagenet"  # pretrained weights
    assert resolve_stem("auto", 32, False, "googlenet") == "imagenet"
    for stem in ("imagenet", "small"):
        assert resolve_stem(stem, 224, True, "googlenet") == stem  # asked for by name: kept


@pytest.mark.parametrize("dataset", ["glyphs", "folder"])
def test_class_disjoint_sets_default_to_the_measured_recipe(dataset):
    values = defaults_for("triplet_semihard", dataset)
    assert (values["n_classes"], values["n_samples"]) == (32, 4)
    assert values["stem"] == "auto" and values["lr"] == 3e-4 and values["lr_schedule"] == "cosine"
    assert values["method"] == "triplet_semihard"


def test_other_datasets_keep_their_measured_defaults():
    for dataset in ("digits", "cifar10", "mnist", "cub200"):
        values = defaults_for("triplet_semihard", dataset)
        assert values["stem"] == "imagenet" and values["lr_schedule"] == "step", dataset
    assert RunConfig().stem == "imagenet"  # a config.json from before the option


def test_small_stem_keeps_2x2_cells_and_imagenet_names():
    x = mx.nd.random.uniform(shape=(2, 3, 32, 32))
    shapes, names = {}, {}
    for stem in ("imagenet", "small"):
        net = EmbeddingNet(16, stem=stem, prefix="net_")
        net.initialize(mx.init.Xavier())
        shapes[stem] = net.features[:-1](x).shape  # before the global pool
        names[stem] = sorted(net.collect_params().keys())
        conv = net.features[0]
        assert conv.weight.shape[2:] == ((7, 7) if stem == "imagenet" else (3, 3))
        assert net(x).shape == (2, 16)
    assert shapes["imagenet"] == (2, 512, 1, 1) and shapes["small"] == (2, 512, 2, 2)
    assert names["imagenet"] == names["small"]  # one naming: checkpoints and exports read alike


def test_a_synced_small_stem_net_deploys_as_one_device_computes_it():
    """The twin export uses (plain BatchNorm) has the small stem and every value of the
    SyncBatchNorm net: in inference both embed alike."""
    net = EmbeddingNet(16, stem="small", sync_devices=2, prefix="net_", l2_normalize=True)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    x = mx.nd.random.uniform(shape=(3, 3, 32, 32))
    want = net(x).asnumpy()
    twin = net.deployable()
    assert twin is not net and not twin.sync_devices
    assert sorted(twin.collect_params().keys()) == sorted(net.collect_params().keys())
    assert np.abs(twin(x).asnumpy() - want).max() < 1e-5


def test_cosine_schedule_against_its_formula():
    cfg = RunConfig(lr=3e-4, lr_schedule="cosine")
    total = 120
    for step in (0, 1, 30, 60, 119, 120):
        want = 3e-4 * 0.5 * (1 + np.cos(np.pi * step / total))
        assert learning_rate_at(cfg, 1, step, total) == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert learning_rate_at(cfg, 1, 60, total) == pytest.approx(1.5e-4)
    assert learning_rate_at(cfg, 1, 500, total) == 0  # past the end: 0, not a second wave
    step_cfg = RunConfig(lr=1e-3, lr_steps=[2, 3], lr_factor=0.1)
    assert [learning_rate_at(step_cfg, e, 7, 9) for e in (1, 2, 3, 4)] == pytest.approx(
        [1e-3, 1e-3, 1e-4, 1e-5])


def test_repeated_images_are_named(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="dml")
    _warn_repeats([0] * 8 + [1] * 4 + [2] * 3, 8)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("2 of 3 training classes have fewer than n_samples=8")
    assert "lower n_samples to 3" in record.getMessage()
    caplog.clear()
    _warn_repeats([0] * 4 + [1] * 4, 4)
    assert not caplog.records


class _Images:
    """A dataset as dml.baselines reads one: ``batch(indices) -> (uint8 images, labels)``."""

    def __init__(self, images, labels):
        self.images, self.labels = images, np.asarray(labels)

    def __len__(self):
        return len(self.images)

    def batch(self, indices):
        return self.images[indices], self.labels[indices]


def _map_at_r_loop(x, labels):
    """MAP@R of each row against the others by cosine distance, one query at a time."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    scores, firsts = [], []
    for q in range(len(x)):
        others = [i for i in range(len(x)) if i != q]
        order = sorted(others, key=lambda i: 1 - float(unit[q] @ unit[i]))
        r = sum(labels[i] == labels[q] for i in others)
        hits, precision_sum = 0, 0.0
        for rank, i in enumerate(order[:r], start=1):
            if labels[i] == labels[q]:
                hits += 1
                precision_sum += hits / rank
        scores.append(precision_sum / r)
        firsts.append(labels[order[0]] == labels[q])
    return float(np.mean(scores)), float(np.mean(firsts))


def test_raw_pixels_against_a_loop_reference():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 5)
    centres = rng.integers(0, 256, size=(6, 32, 32, 3))
    images = np.clip(centres[labels] + rng.normal(0, 60, size=(30, 32, 32, 3)), 0, 255)
    images = images.astype(np.uint8)
    got = baselines.pixel_metrics(_Images(images, labels))
    x = images.reshape(30, -1).astype(np.float64) / 255.0
    map_at_r, p1 = _map_at_r_loop(x - x.mean(axis=0), labels)
    assert got["map_at_r"] == pytest.approx(map_at_r, abs=1e-6)
    assert got["precision_at_1"] == pytest.approx(p1, abs=1e-6)
    # other sizes are resized to 32 x 32 first; too many images: skipped, not slow
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    assert baselines.pixel_metrics(_Images(big, labels))["map_at_r"] == pytest.approx(
        map_at_r, abs=0.05)
    many = _Images(np.zeros((baselines.MAX_IMAGES + 1, 1, 1, 3), np.uint8),
                   np.arange(baselines.MAX_IMAGES + 1) % 2)
    assert baselines.pixel_metrics(many) is None


def _train(*args):
    proc = subprocess.run([sys.executable, "-m", "dml", "train", "--dataset", "digits",
                           "--num-workers", "1", "--embedding-dim", "16"] + list(args),
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_a_run_that_hurts_its_embedding_says_so_while_it_trains(tmp_path):
    """Unseen digits, 3 training classes, a learning rate 10x the default: the validation
    classes fall below the untrained network in the first epoch and the test classes end below
    it and below raw pixels. Both warnings, and the table's two reference columns."""
    proc = _train("--split", "unseen", "--val-classes", "2", "--epochs", "2", "--lr", "0.01",
                  "--output-root", str(tmp_path))
    lines = proc.stderr.splitlines()
    hurting = [line for line in lines if "training is hurting retrieval on the 2 validation" in line]
    assert hurting and "at epoch 1" in hurting[0] and "since epoch 1" in hurting[0]
    assert any("the trained network retrieves worse on the unseen split than the untrained "
               "network and raw pixels" in line for line in lines)
    header = [line for line in proc.stdout.splitlines() if line.startswith("metric")][0]
    assert header.split() == ["metric", "value", "untrained", "raw", "pixels"]


def test_a_healthy_run_of_the_recipe_warns_of_nothing(tmp_path):
    """Digits (seen classes) with the glyphs recipe: the small stem and a cosine schedule train,
    and nothing is said to hurt. (At 16 px, the digits' 8 x 8 doubled: 17 s instead of 87 s at
    32 px, with the same verdicts.)"""
    import glob
    import json
    import os

    proc = _train("--epochs", "2", "--n-classes", "10", "--n-samples", "6", "--stem", "small",
                  "--lr", "3e-4", "--lr-schedule", "cosine", "--image-size", "16",
                  "--output-root", str(tmp_path))
    assert "hurting" not in proc.stderr and "collapsing" not in proc.stderr
    assert "retrieves worse" not in proc.stderr
    assert "training-sample map_at_r" in proc.stderr
    (run,) = glob.glob(os.path.join(str(tmp_path), "digits", "triplet_semihard", "*"))
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["stem"] == "small" and config["lr_schedule"] == "cosine"
    history = json.load(open(os.path.join(run, "logs", "history.json")))
    rates = [h["learning_rate"] for h in history]
    assert rates[0] < 3e-4 and rates[1] < rates[0] * 0.2  # the epoch's last rate, falling to 0
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["map_at_r"] > metrics["untrained_map_at_r"]


def test_glyphs_and_folders_resolve_the_recipe_and_demo_unseen_trains_glyphs():
    from dml.cli import build_parser, config_from_args

    for dataset in ("glyphs", "folder"):
        cfg = config_from_args(build_parser().parse_args(["train", "--dataset", dataset]))
        assert (cfg.stem, cfg.lr, cfg.lr_schedule) == ("small", 3e-4, "cosine")
        assert (cfg.n_classes, cfg.n_samples, cfg.method) == (32, 4, "triplet_semihard")
    cfg = config_from_args(build_parser().parse_args(["train", "--dataset", "folder",
                                                      "--image-size", "96"]))
    assert cfg.stem == "imagenet"  # larger inputs: ImageNet's stem
    cfg = config_from_args(build_parser().parse_args(["train", "--dataset", "digits"]))
    assert (cfg.stem, cfg.lr, cfg.lr_schedule) == ("imagenet", 1e-3, "step")
    make = subprocess.run(["make", "-n", "demo-unseen"], cwd=ROOT, capture_output=True,
                          text=True)
    assert "-m dml train --dataset glyphs" in make.stdout
