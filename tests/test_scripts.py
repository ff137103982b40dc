"""scripts/: the method-table benchmark, the network diagrams and the projector screenshot."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from fakedata import write_cifar
from runhelpers import assert_png

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


def test_network_diagrams_are_drawn_from_the_nets(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "network_diagrams.py"),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("siamese_net.png", "triplet_net.png"):
        assert_png(str(tmp_path / name))


def test_network_diagram_reads_the_built_network():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        from network_diagrams import describe
    finally:
        sys.path.pop(0)
    info = describe("triplet", "resnet18_v1", 32)
    assert (info["wrapper"], info["inputs"], info["embedding_dim"]) == ("TripletNet", 3, 128)
    assert (info["feature_dim"], info["loss"], info["margin"]) == (512, "TripletMarginLoss", 0.5)
    assert describe("siamese", "resnet18_v1", 32)["loss"] == "ContrastiveLoss"


SCREENSHOT = os.path.join(ROOT, "scripts", "projector_screenshot.py")


def screenshot(args):
    return subprocess.run([sys.executable, SCREENSHOT] + args, capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def test_projector_screenshot_refuses_a_folder_without_projector_data(tmp_path):
    proc = screenshot([str(tmp_path), "--out", str(tmp_path / "p.png")])
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("projector_screenshot: error: %s has no projector data "
                                   "(logs/projector_config.pbtxt): pass a finished dml run folder"
                                   % tmp_path)
    assert not (tmp_path / "p.png").exists()


def test_projector_screenshot_names_a_missing_browser(tiny_run, tmp_path):
    proc = screenshot([tiny_run[1], "--out", str(tmp_path / "p.png"), "--chromium",
                       str(tmp_path / "no-chromium")])
    assert proc.returncode == 2
    assert "--chromium %s is not an executable file" % (tmp_path / "no-chromium") in proc.stderr
    assert not (tmp_path / "p.png").exists()


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (.ci/run installs it)")
def test_projector_screenshot_in_headless_chromium(tiny_run, tmp_path):
    out = tmp_path / "projector.png"
    proc = screenshot([tiny_run[1], "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the projector showing test_embedding_000002 (50 points)" in proc.stdout
    assert_png(str(out))
    from PIL import Image

    with Image.open(str(out)) as img:
        assert img.size == (1400, 900)
        # TensorBoard's orange header bar, i.e. the page rendered, not a blank or error page
        r, g, b = img.convert("RGB").getpixel((700, 20))
        assert r > 200 and 80 < g < 180 and b < 60
    proc = screenshot([tiny_run[1], "--out", str(out), "--tensor", "test_embedding_000003"])
    assert proc.returncode == 2 and "--tensor test_embedding_000003: the run logged " \
        "test_embedding_000002" in proc.stderr


def test_bench_metrics_prints_a_row_per_metric():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench_metrics.py"),
                           "--sizes", "300", "--all", "--dim", "8"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split()[:2] == ["metric", "N"]
    assert [r.split()[:2] for r in rows] == [["retrieval", "300"], ["clustering", "300"],
                                             ["knn_accuracy", "300"]]
    assert float(rows[0].split()[5]) > 0 and rows[2].split()[5] == "n/a"


def test_unseen_attempts_prints_the_references_of_unseen_digits(tmp_path):
    """`scripts/unseen_attempts.py --only none` (doc/unseen.md's command) trains nothing and
    prints the references: raw pixels, the PCA rows fit on the five training classes (below the
    pixels' map_at_r: what doc/unseen.md says), and the untrained network."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "unseen_attempts.py"),
                           "--output-root", str(tmp_path), "--only", "none", "--seeds", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line[:22].strip(): line.split() for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {"raw pixels", "pixels, PCA 8", "pixels, PCA 16", "pixels, PCA 32",
                         "pixels, PCA 64", "untrained"}, proc.stdout
    pca = [float(rows["pixels, PCA %d" % d][4]) for d in (8, 16, 32, 64)]
    assert pca == sorted(pca) and 0.5 < pca[0] and pca[-1] < 0.62, proc.stdout
    assert os.listdir(str(tmp_path)) == []  # nothing trained
