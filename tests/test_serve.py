"""Using a trained run (issue 18): dml embed, index, search, export and evaluate --verification,
each written by one process and read by the next; the faiss index against brute force; the ONNX
model against MXNet with ONNX Runtime; every bad input one line, exit 2, nothing written."""
import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dml.cli import main
from fakedata import write_image_folder
from runhelpers import ROOT, assert_png


def cli(*argv):
    """``python -m dml ARGV`` in a fresh process -> (exit code, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests"))
    proc = subprocess.run([sys.executable, "-m", "dml"] + list(argv), capture_output=True,
                          text=True, env=env, timeout=900)
    return proc.returncode, proc.stdout, proc.stderr


def bad(capsys, argv):
    """In-process ``dml ARGV`` that must fail as a user error: (exit code, its one line)."""
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    lines = [l for l in err.strip().splitlines() if l.startswith("dml ")]
    assert "Traceback" not in err, err
    return code, lines[-1] if lines else err


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A labelled image folder (4 classes, png and jpg, grey and colour) and a bad file."""
    root = write_image_folder(str(tmp_path_factory.mktemp("photos")), per_class=(6, 3))
    return root


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    copy = str(tmp_path_factory.mktemp("served") / "run")
    shutil.copytree(tiny_run[1], copy)
    return copy


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_embed_a_folder_in_a_new_process_equals_load_run(run, photos, tmp_path):
    import dml

    out = str(tmp_path / "emb.npy")
    folder = os.path.join(photos, "train")
    shutil.copy(os.path.join(ROOT, "README.md"), os.path.join(folder, "cat", "notes.txt"))
    with open(os.path.join(folder, "dog", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\nnot really")
    try:
        code, stdout, err = cli("embed", run, folder, "-o", out)
        assert code == 0, err[-2000:]
        assert "skipped: " in err and "broken.png" in err and "1 of 25 images" in err, err
        rows = read_csv(str(tmp_path / "emb.csv"))
        embeddings = np.load(out)
        assert embeddings.shape == (24, 16) and embeddings.dtype == np.float32
        assert {r["label"] for r in rows} == {"cat", "dog", "fox", "owl"}
        assert [int(r["index"]) for r in rows] == list(range(24))
        expected = dml.load_run(run).embed([r["path"] for r in rows])
        assert np.abs(embeddings - expected).max() < 1e-5
        # --strict refuses the bad file, and writes nothing
        strict = str(tmp_path / "strict.npy")
        assert main(["embed", run, folder, "-o", strict, "--strict"]) == 2
        assert not os.path.exists(strict) and not os.path.exists(str(tmp_path / "strict.csv"))
    finally:
        os.remove(os.path.join(folder, "dog", "broken.png"))
        os.remove(os.path.join(folder, "cat", "notes.txt"))


def test_embed_a_list_file_and_the_runs_own_dataset(run, photos, tmp_path, capsys):
    images = sorted(glob.glob(os.path.join(photos, "test", "*", "*")))[:3]
    listing = tmp_path / "list.txt"
    listing.write_text("# three images\n%s\tfirst\n\n%s,second\n%s\n" % (
        os.path.relpath(images[0], str(tmp_path)), images[1], images[2]))
    out = str(tmp_path / "l.npy")
    assert main(["embed", run, str(listing), "-o", out]) == 0
    rows = read_csv(str(tmp_path / "l.csv"))
    assert [r["label"] for r in rows] == ["first", "second", ""]
    assert os.path.samefile(rows[0]["path"], images[0])
    # --dataset test: the run's own test split, which training evaluated (its projector tensors)
    out = str(tmp_path / "t.npy")
    assert main(["embed", run, "--dataset", "test", "-o", out]) == 0
    trained = np.loadtxt(os.path.join(run, "logs", "test_embedding_000002", "tensors.tsv"))
    assert np.abs(np.load(out) - trained).max() < 1e-4
    assert read_csv(str(tmp_path / "t.csv"))[0]["path"] == "cifar10:test:0"


def brute(gallery, queries, k):
    from dml.evaluation import pairwise_distances_np

    d = pairwise_distances_np(queries.astype(np.float64), gallery.astype(np.float64))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


def test_index_and_search_in_new_processes_equal_brute_force(run, photos, tmp_path):
    from PIL import Image

    index_dir = str(tmp_path / "index")
    gallery = os.path.join(photos, "train")
    code, stdout, err = cli("index", run, gallery, "-o", index_dir)
    assert code == 0, err[-2000:]
    assert sorted(os.listdir(index_dir)) == ["index.faiss", "index.json", "items.csv"]
    meta = json.load(open(os.path.join(index_dir, "index.json")))
    assert meta["kind"] == "exact" and meta["count"] == 24 and meta["distance"] == "euclidean"
    assert os.path.samefile(meta["run_dir"], run)
    queries = os.path.join(photos, "test")
    out, grid = str(tmp_path / "r.csv"), str(tmp_path / "g.png")
    code, stdout, err = cli("search", index_dir, queries, "-k", "5", "--out", out, "--grid", grid)
    assert code == 0, err[-2000:]
    rows = read_csv(out)
    assert len(rows) == 12 * 5
    import dml as lib

    loaded = lib.load_run(run)
    items = read_csv(os.path.join(index_dir, "items.csv"))
    gallery_emb = loaded.embed([r["path"] for r in items])
    query_paths = sorted({r["query"] for r in rows}, key=[r["query"] for r in rows].index)
    want_d, want_i = brute(gallery_emb, loaded.embed(query_paths), 5)
    got_paths = np.array([r["path"] for r in rows]).reshape(12, 5)
    assert (got_paths == np.array([r["path"] for r in items])[want_i]).all()
    got_d = np.array([float(r["distance"]) for r in rows]).reshape(12, 5)
    assert np.allclose(got_d, want_d, rtol=1e-4, atol=1e-5)
    assert {r["query_label"] for r in rows} == {"cat", "dog", "fox", "owl"}
    assert query_paths[0] in stdout and "(label cat)" in stdout
    assert_png(grid)
    with Image.open(grid) as img:  # one row per query, 1 + k cells per row
        assert img.size[1] > 12 * 100 and img.size[0] > 6 * 100


@pytest.mark.parametrize("distance", ["euclidean", "squared", "cosine"])
def test_exact_index_is_brute_force_and_approximate_ones_reach_their_recall(distance):
    from dml.index import SearchIndex, brute_force

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(50, 24))
    gallery = (centres[rng.integers(0, 50, 4000)] + 0.3 * rng.normal(size=(4000, 24)))
    queries = (centres[rng.integers(0, 50, 100)] + 0.3 * rng.normal(size=(100, 24)))
    gallery, queries = gallery.astype(np.float32), queries.astype(np.float32)
    want_d, want_i = brute_force(queries, gallery, 10, distance)
    d, i = SearchIndex.build(gallery, distance, "exact").search(queries, 10)
    assert (i == want_i).all() and np.allclose(d, want_d, rtol=1e-4, atol=1e-4)
    for kind, recall in (("ivf", 0.9), ("hnsw", 0.95)):
        d, i = SearchIndex.build(gallery, distance, kind).search(queries, 10)
        got = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, want_i)])
        assert got >= recall, (kind, got)
        assert np.all(np.diff(d, axis=1) >= -1e-6)  # nearest first


def test_approximate_index_through_the_cli(run, photos, tmp_path, capsys):
    for kind in ("ivf", "hnsw"):
        index_dir = str(tmp_path / kind)
        assert main(["index", run, os.path.join(photos, "train"), "-o", index_dir, "--kind",
                     kind]) == 0
        capsys.readouterr()
        assert main(["search", index_dir, os.path.join(photos, "test", "cat"), "-k", "3",
                     "--nprobe", "1", "--ef", "8"]) == 0
        assert capsys.readouterr().out.count("  1  ") == 3


def test_search_refuses_another_network_and_bad_queries(run, photos, tmp_path, capsys):
    index_dir = str(tmp_path / "index")
    assert main(["index", run, os.path.join(photos, "train"), "-o", index_dir]) == 0
    # another checkpoint of the same run (epoch 1, not the last) is another network
    code, line = bad(capsys, ["search", index_dir, photos, "--run", run, "--checkpoint",
                              glob.glob(os.path.join(run, "params", "net-0001.params"))[0]])
    assert code == 2 and "was built with another network" in line, line
    # the same run under another distance
    other = str(tmp_path / "cosine-run")
    shutil.copytree(run, other)
    config = json.load(open(os.path.join(other, "config.json")))
    config["distance"] = "cosine"
    json.dump(config, open(os.path.join(other, "config.json"), "w"))
    code, line = bad(capsys, ["search", index_dir, photos, "--run", other])
    assert code == 2 and "index for the euclidean distance" in line, line
    code, line = bad(capsys, ["search", index_dir, photos, "-k", "25"])
    assert code == 2 and "-k 25 but the gallery holds 24 images" in line, line
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    code, line = bad(capsys, ["search", index_dir, str(empty)])
    assert code == 2 and "holds no image files" in line, line
    notimage = tmp_path / "x.png"
    notimage.write_bytes(b"GIF89a garbage")
    code, line = bad(capsys, ["search", index_dir, str(notimage), "--strict"])
    assert code == 2 and "x.png is not an image" in line, line
    moved = tmp_path / "moved-index"
    shutil.copytree(index_dir, str(moved))
    meta = json.load(open(str(moved / "index.json")))
    meta["run_dir"] = str(tmp_path / "gone")
    json.dump(meta, open(str(moved / "index.json"), "w"))
    code, line = bad(capsys, ["search", str(moved), photos])
    assert code == 2 and "run folder" in line and "--run RUN_DIR" in line, line
    assert main(["search", str(moved), os.path.join(photos, "test", "cat"), "--run", run,
                 "-k", "2"]) == 0  # the moved run, named
    code, line = bad(capsys, ["search", str(tmp_path), photos])
    assert code == 2 and "is not an index folder" in line, line
    code, line = bad(capsys, ["search", index_dir, photos, "--grid", str(tmp_path / "no" / "g.png")])
    assert code == 2 and "there is no folder" in line, line
    code, line = bad(capsys, ["search", index_dir, photos, "--out", str(tmp_path / "r.txt")])
    assert code == 2 and "name a .csv file" in line, line
    # an existing index folder is never overwritten; a bad gallery leaves no folder behind
    code, line = bad(capsys, ["index", run, photos, "-o", index_dir])
    assert code == 2 and "already exists" in line, line
    code, line = bad(capsys, ["index", run, str(empty), "-o", str(tmp_path / "new")])
    assert code == 2 and not os.path.exists(str(tmp_path / "new"))
    assert not glob.glob(str(tmp_path / "*.tmp-*"))
    code, line = bad(capsys, ["embed", run, "-o", str(tmp_path / "e.npy")])
    assert code == 2 and "give the images" in line, line
    code, line = bad(capsys, ["embed", run, photos, "-o", str(tmp_path / "e.bin")])
    assert code == 2 and "name a .npy file" in line, line
    code, line = bad(capsys, ["embed", run, str(tmp_path / "missing"), "-o",
                              str(tmp_path / "e.npy")])
    assert code == 2 and "no file or folder at" in line and not os.path.exists(
        str(tmp_path / "e.npy"))


def test_onnx_export_in_a_new_process_matches_mxnet_on_the_test_split(run, tmp_path, tiny_cifar):
    """The exported model, run by ONNX Runtime alone (the README's lines), gives the
    embeddings training evaluated, to 1e-4."""
    model = str(tmp_path / "model.onnx")
    code, stdout, err = cli("export", run, "--onnx", model)
    assert code == 0, err[-2000:]
    assert "max abs difference" in stdout
    import onnxruntime as ort

    from dml.data.datasets import load_cifar

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    mean, std = np.array(json.loads(meta["mean"])), np.array(json.loads(meta["std"]))
    images = load_cifar("cifar10", tiny_cifar).test.images  # uint8 N x 32 x 32 x 3
    x = ((images / 255.0 - mean) / std).astype(np.float32).transpose(0, 3, 1, 2)
    got = session.run(["embedding"], {"data": x})[0]
    trained = np.loadtxt(os.path.join(run, "logs", "test_embedding_000002", "tensors.tsv"))
    assert got.shape == (50, 16)
    assert np.abs(got - trained).max() <= 1e-4
    assert session.get_inputs()[0].shape[0] is None or isinstance(
        session.get_inputs()[0].shape[0], str)  # the batch axis is dynamic


def test_export_of_an_unnormalized_net_and_bad_targets(tmp_path, capsys, tiny_cifar):
    from dml.export import export_onnx
    import dml as lib

    out = str(tmp_path / "out")
    assert main(["train", "--method", "softmax", "--dataset", "cifar10", "--data-root",
                 tiny_cifar, "--epochs", "1", "--batch-size", "16", "--embedding-dim", "8",
                 "--num-workers", "0", "--output-root", out]) == 0
    run = glob.glob(os.path.join(out, "cifar10", "softmax", "*"))[0]
    loaded = lib.load_run(run)
    path, diff = export_onnx(loaded, str(tmp_path / "m.onnx"))
    assert diff <= 1e-4 and os.path.getsize(path) > 1000
    code, line = bad(capsys, ["export", run, "--onnx", str(tmp_path / "m.bin")])
    assert code == 2 and "name a .onnx file" in line
    code, line = bad(capsys, ["export", run, "--onnx", str(tmp_path / "none" / "m.onnx")])
    assert code == 2 and "there is no folder" in line
    # a folder nobody can write: a read-only mount as root (root writes through permissions),
    # permissions otherwise
    locked = tmp_path / "locked"
    locked.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                              str(locked)], capture_output=True).returncode == 0
    if not mounted:
        os.chmod(str(locked), 0o500)
    try:
        assert not os.access(str(locked), os.W_OK), "no unwritable folder could be made"
        code, line = bad(capsys, ["export", run, "--onnx", str(locked / "m.onnx")])
        assert code == 2 and "is not writable" in line
        code, line = bad(capsys, ["export", run, "--onnx", str(tmp_path / "m.onnx" / "x.onnx")])
        assert code == 2 and "there is no folder" in line  # a path under a file
    finally:
        if mounted:
            subprocess.run(["umount", str(locked)], check=False)
        else:
            os.chmod(str(locked), 0o700)


def test_missing_onnx_runtime_is_one_line(run, tmp_path):
    script = ("import sys; sys.modules['onnxruntime'] = None; from dml.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script, "export", run, "--onnx",
                           str(tmp_path / "m.onnx")], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "onnxruntime is not installed" in proc.stderr and "Traceback" not in proc.stderr
    assert not os.path.exists(str(tmp_path / "m.onnx"))


def test_verification_thresholds_against_a_loop():
    from dml.evaluation import verification_thresholds

    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 5))
    labels = rng.integers(0, 4, 120)
    got = verification_thresholds(x, labels, chunk=7)
    genuine, impostor = [], []
    for i in range(120):
        for j in range(i + 1, 120):
            d = float(np.linalg.norm(x[i] - x[j]))
            (genuine if labels[i] == labels[j] else impostor).append(d)
    assert got["verification_genuine_pairs"] == len(genuine)
    assert got["verification_impostor_pairs"] == len(impostor)
    impostor, genuine = np.sort(impostor), np.array(genuine)
    # 1e-2: the largest threshold whose false match rate is at most 1e-2
    t = got["threshold_at_fmr_1e-2"]
    eps = 1e-9  # the loop's norm and the metric's |a|^2 + |b|^2 - 2ab differ in the last bits
    assert np.mean(impostor < t - eps) <= 1e-2 < np.mean(impostor <= t + eps)
    assert got["fnmr_at_fmr_1e-2"] == pytest.approx(np.mean(genuine >= t))
    # 1e-3 needs 1000 impostor pairs: 5,3xx here resolve it
    assert "threshold_at_fmr_1e-3" in got
    # 20 images: under 1000 impostor pairs, 1e-3 cannot mean anything and is left out
    small = verification_thresholds(x[:20], labels[:20])
    assert "threshold_at_fmr_1e-2" in small and "threshold_at_fmr_1e-3" not in small
    assert verification_thresholds(x[:5], np.arange(5)) == {
        "verification_genuine_pairs": 0, "verification_impostor_pairs": 10}


def test_evaluate_verification_writes_thresholds(run, tmp_path):
    copy = str(tmp_path / "run")
    shutil.copytree(run, copy)
    code, stdout, err = cli("evaluate", copy, "--verification")
    assert code == 0, err[-2000:]
    metrics = json.load(open(os.path.join(copy, "metrics.json")))
    assert 0 <= metrics["fnmr_at_fmr_1e-2"] <= 1 and metrics["threshold_at_fmr_1e-2"] > 0
    assert metrics["verification_impostor_pairs"] + metrics["verification_genuine_pairs"] == \
        50 * 49 // 2
    assert "FNMR" in stdout and "1e-2" in stdout
    assert_png(os.path.join(copy, "plots", "retrieval_test.png"))


def test_the_readme_onnxruntime_lines_embed_like_load_run(run, photos, tmp_path):
    """The README's ONNX Runtime snippet, run as written (in a folder holding model.onnx and
    a.png), gives load_run's embedding of a.png."""
    import re

    import dml as lib
    from dml.export import export_onnx

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "onnxruntime" in b]
    assert len(blocks) == 1
    assert len(blocks[0].strip().splitlines()) <= 16  # short enough to paste
    loaded = lib.load_run(run)
    export_onnx(loaded, str(tmp_path / "model.onnx"))
    image = sorted(glob.glob(os.path.join(photos, "test", "*", "*.png")))[0]
    shutil.copy(image, str(tmp_path / "a.png"))
    namespace = {}
    cwd = os.getcwd()
    os.chdir(str(tmp_path))
    try:
        exec(blocks[0], namespace)  # noqa: S102  (our own README)
    finally:
        os.chdir(cwd)
    want = loaded.embed([image])
    assert namespace["embedding"].shape == want.shape
    assert np.abs(namespace["embedding"] - want).max() <= 1e-4

    # a benchmark run's export says resize=center_crop: the snippet crops as dml does
    import onnx
    from PIL import Image

    from dml.data.transforms import fit_image

    model = onnx.load(str(tmp_path / "model.onnx"))
    (prop,) = [p for p in model.metadata_props if p.key == "resize"]
    prop.value = "center_crop"
    onnx.save(model, str(tmp_path / "model.onnx"))
    Image.open(image).convert("RGB").resize((45, 61)).save(str(tmp_path / "a.png"))
    os.chdir(str(tmp_path))
    try:
        exec(blocks[0], namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    side = namespace["width"]
    cropped = fit_image(Image.open(str(tmp_path / "a.png")).convert("RGB"), side, "center_crop")
    x = ((np.asarray(cropped) / 255.0 - namespace["mean"]) / namespace["std"]).astype(np.float32)
    assert np.abs(namespace["x"] - x.transpose(2, 0, 1)[None]).max() < 1e-6


def test_the_exporter_writes_weights_as_raw_bytes_with_the_same_values():
    """Inside the export, onnx.helper.make_tensor writes float32 tensors above RAW_ABOVE values as
    raw little-endian bytes (pure-Python protobuf encodes repeated floats one by one: minutes for
    a ResNet), the same values as the float_data encoding; small and non-float tensors as before;
    and make_tensor is itself again afterwards, also after an exception."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from dml.serve.export import RAW_ABOVE, _RawTensors

    original = onnx.helper.make_tensor
    values = np.random.default_rng(0).normal(size=(RAW_ABOVE + 7,)).astype(np.float32)
    with _RawTensors(onnx.helper):
        big = onnx.helper.make_tensor("w", TensorProto.FLOAT, values.shape, values.tolist())
        small = onnx.helper.make_tensor("s", TensorProto.FLOAT, (2,), [1.5, -2.0])
        ints = onnx.helper.make_tensor("i", TensorProto.INT64, (RAW_ABOVE + 1,),
                                       list(range(RAW_ABOVE + 1)))
    assert onnx.helper.make_tensor is original
    assert big.raw_data and not big.float_data and not small.raw_data and not ints.raw_data
    reference = original("w", TensorProto.FLOAT, values.shape, values.tolist())
    assert np.array_equal(numpy_helper.to_array(big), numpy_helper.to_array(reference))
    assert np.array_equal(numpy_helper.to_array(small), [1.5, -2.0])
    with pytest.raises(RuntimeError):
        with _RawTensors(onnx.helper):
            raise RuntimeError("the exporter failed")
    assert onnx.helper.make_tensor is original
