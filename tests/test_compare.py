"""``dml compare`` groups runs that differ only in their seed (mean, 95% confidence interval,
count), ``scripts/method_table.py --seeds`` prints the same grouping, and TensorBoard's HParams
tab lists every run of a logdir with its options and final metrics."""
import csv
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout

import numpy as np
import pytest
from scipy import stats

from dml.cli import main
from dml.compare import compare_rows, confidence_interval
from runhelpers import ROOT, TensorBoard

CONFIG = dict(method="triplet_semihard", dataset="digits", split="test", epochs=10, lr=0.001,
              margin=0.2, seed=0, run_dir="x", started="2026", gpus=[], cpus=0, data_root=None,
              num_workers=2)


def fake_run(root, name, metrics, **config):
    folder = os.path.join(root, name)
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump(dict(dict(split="test", epochs=10, train_seconds=30.0), **metrics), f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(dict(CONFIG, run_dir=folder, **config), f)
    return folder


@pytest.fixture()
def runs(tmp_path):
    root = str(tmp_path / "runs")
    maps = {0: 0.80, 1: 0.84, 2: 0.79}
    for seed, value in maps.items():  # one experiment over three seeds, on other devices too
        fake_run(root, "semihard-%d" % seed, dict(map_at_r=value, precision_at_1=value + 0.1),
                 seed=seed, cpus=seed, num_workers=seed)
    fake_run(root, "semihard-lr", dict(map_at_r=0.70, precision_at_1=0.8), lr=0.0001)
    fake_run(root, "supcon-0", dict(map_at_r=0.90, precision_at_1=0.95), method="supcon")
    fake_run(root, "supcon-unseen", dict(map_at_r=0.40, precision_at_1=0.5, split="unseen"),
             method="supcon")
    return root, maps


def test_confidence_interval_is_students_t():
    values = [0.8, 0.84, 0.79]
    mean, half = confidence_interval(values)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((high - low) / 2)
    assert confidence_interval([0.5]) == (0.5, None)


def test_runs_differing_only_in_seed_are_one_row(runs):
    root, maps = runs
    rows = compare_rows(root)
    assert [r["method"] for r in rows] == ["supcon", "triplet_semihard", "triplet_semihard",
                                           "supcon"]
    grouped = rows[1]
    assert grouped["n"] == 3 and grouped["seeds"] == "0,1,2"
    assert grouped["map_at_r"] == pytest.approx(np.mean(list(maps.values())))
    assert grouped["map_at_r_ci95"] == pytest.approx(confidence_interval(list(maps.values()))[1])
    assert rows[2]["n"] == 1 and rows[2]["map_at_r_ci95"] is None  # another learning rate
    assert len(compare_rows(root, group=False)) == 6


def test_compare_prints_mean_interval_and_count(runs):
    root, maps = runs
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert main(["compare", root]) == 0
    lines = printed.getvalue().strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:7] == ["run", "method", "dataset", "split", "epochs", "seeds", "options"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    grouped = rows[1]
    mean, half = confidence_interval(list(maps.values()))
    assert grouped[header.index("map_at_r")] == "%.4f ± %.4f" % (mean, half)
    assert grouped[header.index("seeds")] == "0,1,2 (n=3)"
    assert grouped[header.index("run")] == "semihard-0 (+2)"
    assert grouped[header.index("options")] == "lr=0.001"
    assert rows[2][header.index("options")] == "lr=0.0001"
    with redirect_stdout(io.StringIO()) as out:
        assert main(["compare", root, "--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    grouped = next(r for r in table if r["n"] == "3")
    assert float(grouped["map_at_r_ci95"]) == pytest.approx(half, abs=1e-4)
    assert grouped["runs"] == "semihard-0;semihard-1;semihard-2"
    with redirect_stdout(io.StringIO()) as out:
        assert main(["compare", root, "--runs"]) == 0
    assert len(out.getvalue().strip().splitlines()) == 2 + 6


def test_method_table_groups_seeds(tmp_path):
    out = tmp_path / "runs"
    for seed, value in ((0, 0.9), (1, 0.8)):
        run = out / ("triplet_semihard-default-%d" % seed) / "digits" / "triplet_semihard" / "2026"
        fake_run(str(run.parent), run.name, dict(map_at_r=value, precision_at_1=value,
                                                 r_precision=value), seed=seed)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "method_table.py"),
                           "--collect", "--seeds", "0,1", "--methods", "triplet_semihard",
                           "--output-root", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grouped = proc.stdout.strip().split("\n\n")[1].splitlines()
    assert grouped[0].split()[:2] == ["method", "n"]
    mean, half = confidence_interval([0.9, 0.8])
    assert grouped[1].split()[:2] == ["triplet_semihard", "2"]
    assert "%.4f +- %.4f" % (mean, half) in grouped[1]


def test_tensorboard_hparams_lists_every_run_with_options_and_metrics(tiny_cifar, tmp_path):
    out = str(tmp_path / "runs")
    for seed in (0, 1):
        with redirect_stdout(io.StringIO()):
            assert main(["train", "--dataset", "cifar10", "--data-root", tiny_cifar, "--epochs",
                         "1", "--seed", str(seed), "--n-classes", "4", "--n-samples", "4",
                         "--embedding-dim", "8", "--num-workers", "1", "--output-root", out]) == 0
    runs = sorted(os.path.join(out, "cifar10", "triplet_semihard", d) for d in os.listdir(
        os.path.join(out, "cifar10", "triplet_semihard")))
    with TensorBoard(out) as tb:
        experiment = tb.until("/data/plugin/hparams/experiment", {"experimentName": ""},
                              ready=lambda answer: answer.get("hparamInfos"))
        names = {h["name"] for h in experiment["hparamInfos"]}
        assert {"method", "dataset", "seed", "lr", "margin", "augment", "embedding_dim"} <= names
        assert "data_root" not in names and "gpus" not in names
        metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
        assert {"eval/map_at_r", "eval/precision_at_1", "eval/nmi"} <= metrics
        groups = tb.request("/data/plugin/hparams/session_groups", {
            "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS"], "colParams": [],
            "startIndex": 0, "sliceSize": 100})["sessionGroups"]
        assert len(groups) == 2
        for group in groups:
            run = next(r for r in runs if group["name"].endswith(os.path.basename(r)))
            final = json.load(open(os.path.join(run, "metrics.json")))
            config = json.load(open(os.path.join(run, "config.json")))
            assert group["hparams"]["seed"] == config["seed"]
            assert group["hparams"]["method"] == "triplet_semihard"
            value = next(m["value"] for m in group["metricValues"]
                         if m["name"]["tag"] == "eval/map_at_r")
            assert value == pytest.approx(final["map_at_r"], abs=1e-6)


def test_a_nan_metric_sorts_last_and_a_copied_run_is_one_sample(runs, caplog, capsys):
    import logging
    import shutil

    root, maps = runs
    fake_run(root, "broken", dict(map_at_r=float("nan"), precision_at_1=0.1), lr=0.5)
    shutil.copytree(os.path.join(root, "semihard-0"), os.path.join(root, "semihard-0-copy"))
    caplog.set_level(logging.WARNING, logger="dml")
    rows = compare_rows(root)
    assert rows[-1]["run"] == "broken"
    maps_seen = [r["map_at_r"] for r in rows[:-1]]
    assert maps_seen == sorted(maps_seen, reverse=True)
    semihard = [r for r in rows if r["method"] == "triplet_semihard" and r["n"] > 1][0]
    assert semihard["n"] == 3 and semihard["seeds"] == "0,1,2"
    assert semihard["map_at_r"] == pytest.approx(np.mean(list(maps.values())))
    assert any("semihard-0-copy" in r.getMessage() and "same experiment and seed" in
               r.getMessage() for r in caplog.records)


def test_an_unreadable_run_is_warned_about_once(runs, capsys):
    root, _ = runs
    with open(os.path.join(root, "semihard-1", "metrics.json"), "w") as f:
        f.write('{"map_at_r": 0.8')  # cut short
    capsys.readouterr()
    assert main(["compare", root]) == 0
    err = capsys.readouterr().err
    assert err.count("skipping") == 1 and "semihard-1" in err
