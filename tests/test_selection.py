"""Honest model selection: ``--val-classes`` holds training classes out as validation,
``--eval-period`` and ``params/best/`` select on them, and the test split is scored once, at the
end, with the selected weights (what ``dml evaluate`` reproduces in a new process). Selecting on
the test split needs ``--select-on-test``. Also: the named ``--augment`` and configs written
before these options."""
import os
import subprocess
import sys

import numpy as np
import pytest

from dml import DmlError
from dml.config import RunConfig
from dml.data import hold_out_classes, load_digits
from runhelpers import (ROOT, load_json, only_run_dir, read_with_tensorboard, refused,
                        run_main)

TINY_DIGITS = ["--dataset", "digits", "--n-samples", "4", "--embedding-dim", "8",
               "--num-workers", "1"]


def tiny_cifar_args(root):
    return ["--dataset", "cifar10", "--data-root", root, "--n-samples", "4", "--embedding-dim",
            "8", "--num-workers", "1"]


run, load = run_main, load_json


def test_hold_out_classes_takes_training_classes_only():
    splits = load_digits()
    held = hold_out_classes(splits, 3)
    assert len(held.val_classes) == 3 and sorted(held.val_classes + held.train_classes) == list(
        range(10))
    assert set(np.unique(held.val.labels)) == set(held.val_classes)
    assert not set(np.unique(held.train.labels)) & set(held.val_classes)
    assert len(held.val) + len(held.train) == len(splits.train)
    assert held.test is splits.test  # the test split is untouched
    # a fraction of the training classes; the same classes whatever the run's seed
    assert hold_out_classes(splits, 0.2).val_classes == hold_out_classes(splits, 2).val_classes
    assert hold_out_classes(splits, 0) is splits
    unseen = hold_out_classes(__import__("dml.data", fromlist=["x"]).apply_split(
        splits, "unseen"), 2)
    assert set(unseen.val_classes) <= {0, 1, 2, 3, 4}  # never a test (unseen) class
    for bad in (1, 9, 0.05):
        with pytest.raises(DmlError, match="validation and training each need at least 2"):
            hold_out_classes(splits, bad)


@pytest.fixture(scope="module")
def selected_run(tiny_cifar, tmp_path_factory):
    """A 3-epoch digits run whose validation scores are scripted (0.5, 0.9, 0.3): epoch 2 must
    be selected, and the test split scored with epoch 2's weights."""
    import dml.train.loop

    real = dml.train.loop.score_for_run
    scripted = iter([0.5, 0.9, 0.3])
    seen = []

    def scripted_evaluation(cfg, splits, net, ctx, full=True, on="test"):
        result = real(cfg, splits, net, ctx, full, on=on)
        seen.append(on)
        if on == "val":
            result[0]["map_at_r"] = next(scripted)
        return result

    out = str(tmp_path_factory.mktemp("selected"))
    dml.train.loop.score_for_run = scripted_evaluation
    try:
        code, printed = run(["train", "--epochs", "3", "--val-classes", "2", "--keep-checkpoints",
                             "0", "--output-root", out] + tiny_cifar_args(tiny_cifar))
    finally:
        dml.train.loop.score_for_run = real
    assert code == 0
    return only_run_dir(out, "cifar10", "triplet_semihard"), seen, printed


def test_selection_on_validation_classes_reports_the_selected_epoch(selected_run):
    run_dir, seen, printed = selected_run
    # the test split: the untrained network's baseline before the first step (dml.baselines:
    # reported beside the result, never selected on), then the trained network once, at the end
    assert seen == ["test", "val", "val", "val", "test"]
    metrics = load(run_dir)
    assert metrics["checkpoint"] == "best" and metrics["epochs"] == 2
    assert metrics["selected_on"] == "validation" and metrics["val_map_at_r"] == 0.9
    best = load(run_dir, "params/best/best.json")
    assert best["epoch"] == 2 and best["val_map_at_r"] == 0.9
    history = load(run_dir, "logs/history.json")
    assert [h["val_map_at_r"] for h in history] == [0.5, 0.9, 0.3]
    assert "map_at_r" in history[1] and "map_at_r" not in history[2]  # test scores at epoch 2
    config = load(run_dir, "config.json")
    assert len(config["validation_classes"]) == 2 and len(config["train_classes"]) == 8
    assert not set(config["validation_classes"]) & set(config["train_classes"])
    assert config["eval_period"] == 1  # implied by --val-classes
    scalars = read_with_tensorboard(os.path.join(run_dir, "logs"))["scalars"]
    assert scalars["val/map_at_r"] == [1, 2, 3] and scalars["eval/map_at_r"] == [2]


def test_the_selected_test_metrics_are_those_of_the_best_weights(selected_run):
    run_dir, _, _ = selected_run
    trained = load(run_dir)
    # a new process, the default checkpoint (the one training reported: best)
    proc = subprocess.run([sys.executable, "-m", "dml", "evaluate", run_dir], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    again = load(run_dir)
    for key in ("precision_at_1", "map_at_r", "recall_at_4", "nmi", "knn_accuracy", "epochs",
                "checkpoint", "selected_on", "val_map_at_r"):
        assert again[key] == trained[key], key
    # epoch 2's own checkpoint file holds the same weights
    proc = subprocess.run([sys.executable, "-m", "dml", "evaluate", run_dir, "--checkpoint",
                           os.path.join(run_dir, "params", "net-0002.params")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load(run_dir)["map_at_r"] == trained["map_at_r"]
    # the final epoch's weights are another network
    assert run(["evaluate", run_dir, "--checkpoint", "last"])[0] == 0
    last = load(run_dir)
    assert last["epochs"] == 3 and "selected_on" not in last


SELECTION_ERRORS = [
    (["--eval-period", "2"], "--eval-period 2 selects params/best/ and needs a split to select "
     "on: hold out training classes with --val-classes"),
    (["--val-classes", "2", "--select-on-test"], "--val-classes and --select-on-test exclude"),
    (["--val-classes", "9"], "--val-classes 9 would hold out 9 of the 10 training classes"),
    (["--val-classes", "1"], "validation and training each need at least 2"),
    (["--val-classes", "1.5"], "neither a whole number of classes nor a fraction"),
    (["--val-classes", "-1"], "neither a whole number of classes nor a fraction"),
    (["--augment", "rotate"], "invalid choice: 'rotate'"),
]


@pytest.mark.parametrize("extra,message", SELECTION_ERRORS,
                         ids=[" ".join(e) for e, _ in SELECTION_ERRORS])
def test_selection_bad_input(tmp_path, capsys, extra, message):
    out = str(tmp_path / "out")
    code, err = refused(["train", "--epochs", "1", "--output-root", out] + TINY_DIGITS + extra,
                        capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not os.path.exists(out)


def test_augment_defaults_per_dataset_and_the_choice_is_recorded(tiny_cifar, tmp_path, capsys):
    from dml.config import defaults_for

    assert [defaults_for("triplet_semihard", d)["augment"] for d in (
        "digits", "mnist", "fashion-mnist", "cifar10", "folder", "cub200", "sop")] == [
        "crop", "crop", "crop-flip", "crop-flip", "crop-flip", "resized-crop-flip",
        "resized-crop-flip"]
    out = str(tmp_path / "out")
    assert run(["train", "--epochs", "1", "--augment", "resized-crop-flip", "--output-root", out]
               + tiny_cifar_args(tiny_cifar))[0] == 0
    run_dir = only_run_dir(out, "cifar10", "triplet_semihard")
    assert load(run_dir, "config.json")["augment"] == "resized-crop-flip"
    printed = capsys.readouterr().err
    assert "training augmentation: resized-crop-flip\n" in printed  # (not cifar10's default)


def test_configs_from_before_named_augmentation_and_selection_still_load():
    old = RunConfig.from_dict({"dataset": "folder", "augment": True, "eval_period": 5})
    assert old.augment == "crop-flip" and old.select_on_test  # they selected on the test split
    assert RunConfig.from_dict({"dataset": "cifar10", "augment": False}).augment == "none"
    assert not RunConfig.from_dict({"dataset": "digits", "eval_period": 0}).select_on_test
