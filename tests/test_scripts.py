"""scripts/method_table.py: the benchmark behind the README's method table."""
import json
import os
import subprocess
import sys

from fakedata import write_cifar

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "method_table.py")


def test_method_table_trains_and_tabulates(tmp_path):
    data = str(tmp_path / "cifar")
    write_cifar(data, "cifar10", "python", n_train=60, n_test=20)
    out = str(tmp_path / "runs")
    env = dict(os.environ, DML_OFFLINE="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--methods", "softmax", "--dataset", "cifar10",
                           "--output-root", out, "--", "--data-root", data, "--epochs", "1",
                           "--embedding-dim", "8", "--batch-size", "16", "--num-workers", "0"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, row = proc.stdout.strip().splitlines()
    assert header.split() == ["method", "selector", "seed", "precision_at_1", "r_precision",
                              "map_at_r", "train_s"]
    fields = row.split()
    assert fields[:3] == ["softmax", "-", "0"] and all(0 <= float(v) <= 1 for v in fields[3:6])


def test_method_table_collects_existing_runs_and_plots(tmp_path):
    out = tmp_path / "runs"
    for (method, selector), value in {("triplet_semihard", "default"): 0.9,
                                      ("online_triplet", "hardest"): 0.8}.items():
        run = out / ("%s-%s-0" % (method, selector)) / "digits" / method / "202611221200"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(dict(
            precision_at_1=value, r_precision=value - 0.1, map_at_r=value - 0.2, train_seconds=50.0)))
    png = tmp_path / "table.png"
    proc = subprocess.run([sys.executable, SCRIPT, "--collect", "--output-root", str(out),
                           "--plot", str(png)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = proc.stdout.strip().splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["triplet_semihard", "-"], ["online_triplet", "hardest"]]
    assert rows[1].split()[3:6] == ["0.8000", "0.7000", "0.6000"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
