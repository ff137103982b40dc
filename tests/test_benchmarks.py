"""The zero-shot benchmarks (CUB-200-2011, Cars196, SOP, In-Shop) read from tiny files written in
their official layouts, the photo pipeline (random resized crop for training, resize + centre crop
for evaluation and serving), query-against-gallery retrieval, ``dml evaluate --query/--gallery``,
and every malformed benchmark file refused with one line, exit 2 and nothing written."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dml import DmlError
from dml.cli import main
from dml.data import (Augment, BatchLoader, SequentialBatches, augment_batch, fit_image,
                      load_dataset)
from dml.data.transforms import RESIZED_CROP_RATIO, RESIZED_CROP_SCALE, resized_crop_box
from dml.evaluation import retrieval_metrics
from fakedata import write_cars196, write_cub200, write_image_folder, write_inshop, write_sop
from runhelpers import ROOT, only_run_dir, run_main

TINY_PHOTO = ["--no-pretrained", "--backbone", "resnet18_v1", "--image-size", "32",
              "--embedding-dim", "8", "--n-classes", "4", "--n-samples", "2", "--num-workers", "1",
              "--epochs", "1"]


run = run_main


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    return {"cub200": write_cub200(str(root / "cub")) and str(root / "cub"),
            "cars196": write_cars196(str(root / "cars")),
            "sop": write_sop(str(root / "sop")) and str(root / "sop"),
            "inshop": write_inshop(str(root / "inshop")) and str(root / "inshop")}


EXPECTED = {  # train images, test images, gallery images, train classes, test classes
    "cub200": (20, 20, None, 4, 4),
    "cars196": (20, 20, None, 4, 4),
    "sop": (16, 16, None, 4, 4),
    "inshop": (16, 8, 12, 4, 4),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_benchmark_loads_its_official_layout(benchmarks, name):
    splits = load_dataset(name, benchmarks[name], image_size=40)
    n_train, n_test, n_gallery, c_train, c_test = EXPECTED[name]
    assert (len(splits.train), len(splits.test)) == (n_train, n_test)
    assert (None if splits.gallery is None else len(splits.gallery)) == n_gallery
    train, test = set(np.unique(splits.train.labels)), set(np.unique(splits.test.labels))
    assert (len(train), len(test)) == (c_train, c_test) and not train & test  # class-disjoint
    assert splits.train_classes == sorted(train) and splits.eval_classes == sorted(test)
    assert splits.resize == "center_crop" and splits.augment_name == "resized-crop-flip"
    assert splits.train[0][0].shape == (40, 40, 3) and splits.test[3][0].shape == (40, 40, 3)
    if splits.gallery is not None:
        assert set(np.unique(splits.gallery.labels)) == test


def test_benchmark_class_names_and_split_rules(benchmarks):
    cub = load_dataset("cub200", benchmarks["cub200"], 32)
    assert cub.class_names[:2] == ["001.Bird_1", "002.Bird_2"]  # classes.txt
    assert [cub.class_names[c] for c in cub.eval_classes][0] == "101.Bird_101"  # 101-200 test
    cars = load_dataset("cars196", benchmarks["cars196"], 32)
    # the file's own test flag (every other image here) is not the zero-shot split
    assert [cars.class_names[c] for c in cars.eval_classes] == ["Car Model %d" % c for c in
                                                                (99, 100, 101, 102)]
    sop = load_dataset("sop", benchmarks["sop"], 32)
    assert [sop.class_names[c] for c in sop.train_classes] == ["1", "2", "3", "4"]
    # the data root may also be the folder of the files itself
    assert len(load_dataset("cub200", os.path.join(benchmarks["cub200"], "CUB_200_2011"),
                            32).train) == 20


def test_centre_crop_keeps_the_middle_of_a_photo():
    from PIL import Image

    arr = np.zeros((100, 200, 3), dtype=np.uint8)  # a wide image: red middle, blue sides
    arr[:, :50] = (0, 0, 255)
    arr[:, 150:] = (0, 0, 255)
    arr[:, 50:150] = (255, 0, 0)
    out = np.asarray(fit_image(Image.fromarray(arr), 64, "center_crop"))
    assert out.shape == (64, 64, 3)
    # shorter side to round(64 * 256 / 224) = 73: width 146, the central 64 columns are red
    assert (out[..., 0] > 200).all() and (out[..., 2] < 50).all()
    squashed = np.asarray(fit_image(Image.fromarray(arr), 64, "square"))
    assert squashed[:, 0, 2] .min() > 200  # the whole width: blue at the edges


def test_resized_crop_boxes_follow_torchvision():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(500):
        left, top, w, h = resized_crop_box(300, 200, rng)
        assert 0 <= left and left + w <= 300 and 0 <= top and top + h <= 200
        areas.append(w * h / 60000.0)
        ratios.append(w / h)
    assert RESIZED_CROP_SCALE[0] * 0.9 <= min(areas) and max(areas) <= 1.0
    assert min(ratios) >= RESIZED_CROP_RATIO[0] * 0.95 and max(ratios) <= RESIZED_CROP_RATIO[1] * 1.05
    assert np.std(areas) > 0.1  # the draws spread over the range
    # an impossible aspect (a 1000 x 10 strip) falls back to the central crop clamped to the ratio
    assert resized_crop_box(1000, 10, np.random.default_rng(1)) == (493, 0, 13, 10)


def test_resized_crop_batches_are_reproducible_whatever_the_image_sizes():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, size=(h, w, 3)).astype(np.uint8)
              for h, w in ((30, 50), (64, 20), (16, 16))]
    augment = Augment.named("resized-crop-flip", size=24)
    out = augment_batch(images, augment, np.random.default_rng(5))
    again = augment_batch(images, augment, np.random.default_rng(5))
    assert out.shape == (3, 24, 24, 3) and out.dtype == np.uint8 and np.array_equal(out, again)
    assert Augment.named("crop", pad=4, size=24) == Augment(pad=4)
    assert Augment.named("none", pad=4) == Augment()
    with pytest.raises(ValueError, match="augment must be one of"):
        Augment.named("rotate")


def test_file_datasets_feed_whole_images_to_the_resized_crop(benchmarks):
    splits = load_dataset("cub200", benchmarks["cub200"], image_size=24)
    images, _ = splits.train.raw_batch([0, 1])
    assert images[0].shape == (36, 48, 3)  # the file's own size (not the evaluation geometry)
    loader = BatchLoader(splits.train, SequentialBatches(len(splits.train), 8), splits.mean,
                         splits.std, augment=splits.augment, seed=3, num_workers=2)
    first, labels = next(iter(loader))
    assert first.shape == (8, 3, 24, 24) and len(labels) == 8
    loader.set_epoch(0)
    assert np.array_equal(next(iter(loader))[0], first)


def test_query_gallery_metrics_match_a_loop():
    rng = np.random.default_rng(0)
    queries, q_labels = rng.normal(size=(30, 5)), rng.integers(0, 5, size=30)
    gallery, g_labels = rng.normal(size=(40, 5)), rng.integers(0, 6, size=40)
    q_labels[0] = 7  # a query whose class the gallery lacks: left out
    got = retrieval_metrics(queries, q_labels, gallery=gallery, gallery_labels=g_labels)
    p1, rp, maps, recall8, count = [], [], [], [], 0
    for q, label in zip(queries, q_labels):
        relevant = g_labels == label
        r = int(relevant.sum())
        if r == 0:
            continue
        count += 1
        order = np.argsort(np.linalg.norm(gallery - q, axis=1), kind="stable")
        hits = relevant[order]
        p1.append(hits[0])
        rp.append(hits[:r].mean())
        maps.append(sum(hits[:i + 1].mean() for i in range(r) if hits[i]) / r)
        recall8.append(hits[:8].any())
    assert got["num_queries"] == count == 29
    for key, values in (("precision_at_1", p1), ("r_precision", rp), ("map_at_r", maps),
                        ("recall_at_8", recall8)):
        assert got[key] == pytest.approx(np.mean(values)), key


def test_inshop_trains_and_scores_queries_against_the_gallery(benchmarks, tmp_path):
    out = str(tmp_path / "out")
    code, printed = run(["train", "--dataset", "inshop", "--data-root", benchmarks["inshop"],
                         "--output-root", out] + TINY_PHOTO)
    assert code == 0, printed
    run_dir = only_run_dir(out, "inshop", "triplet_semihard")
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert metrics["num_queries"] == 8 and metrics["num_gallery"] == 12
    config = json.load(open(os.path.join(run_dir, "config.json")))
    assert config["augment"] == "resized-crop-flip" and config["image_size"] == 32
    assert config["normalization"]["resize"] == "center_crop"
    assert config["train_classes"] == ["id_%08d" % i for i in range(1, 5)]
    # In-Shop's gallery is reachable by dml index --dataset gallery (and only In-Shop has one)
    index_dir = str(tmp_path / "gallery.index")
    assert main(["index", run_dir, "--dataset", "gallery", "-o", index_dir]) == 0
    assert json.load(open(os.path.join(index_dir, "index.json")))["count"] == 12
    # a new process reproduces the query/gallery metrics
    before = dict(metrics)
    proc = subprocess.run([sys.executable, "-m", "dml", "evaluate", run_dir], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.load(open(os.path.join(run_dir, "metrics.json")))
    for key in ("precision_at_1", "map_at_r", "recall_at_1", "nmi", "knn_accuracy",
                "num_queries", "num_gallery"):
        assert after[key] == before[key], key


@pytest.fixture(scope="module")
def cub_run(benchmarks, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cubrun"))
    code, printed = run(["train", "--dataset", "cub200", "--data-root", benchmarks["cub200"],
                         "--output-root", out] + TINY_PHOTO)
    assert code == 0, printed
    return only_run_dir(out, "cub200", "triplet_semihard")


def test_a_gallery_of_a_dataset_without_one_is_refused(cub_run, tmp_path, capsys):
    code = main(["embed", cub_run, "--dataset", "gallery", "-o", str(tmp_path / "e.npy")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cub200 has no gallery (In-Shop has one)" in err
    assert not os.path.exists(str(tmp_path / "e.npy"))


def test_load_run_embeds_a_photo_with_the_evaluation_geometry(cub_run, benchmarks):
    import dml
    from dml.data import normalize_batch
    from dml.data.datasets import read_image

    run = dml.load_run(cub_run)
    assert run.resize == "center_crop"
    splits = load_dataset("cub200", benchmarks["cub200"], 32)
    path = splits.test.paths[0]
    want = normalize_batch(read_image(path, 32, "center_crop")[None], run.mean, run.std)
    assert np.array_equal(run.preprocess([path]), want)
    from PIL import Image

    assert np.array_equal(run.preprocess([Image.open(path)]), want)


def _folder_pair(root, query_classes, gallery_classes):
    write_image_folder(os.path.join(root, "q"), classes=query_classes, per_class=(3, 0))
    write_image_folder(os.path.join(root, "g"), classes=gallery_classes, per_class=(4, 0), seed=1)
    return os.path.join(root, "q", "train"), os.path.join(root, "g", "train")


def test_evaluate_query_against_gallery_folders(cub_run, tmp_path):
    import dml

    query, gallery = _folder_pair(str(tmp_path), ("cat", "dog", "fox"), ("cat", "dog", "fox"))
    metrics_file = str(tmp_path / "qg.json")
    before = open(os.path.join(cub_run, "metrics.json")).read()
    proc = subprocess.run([sys.executable, "-m", "dml", "evaluate", cub_run, "--query", query,
                           "--gallery", gallery, "--out", metrics_file], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "map_at_r" in proc.stdout and "gallery: 12 images" in proc.stdout
    got = json.load(open(metrics_file))
    run = dml.load_run(cub_run)
    from dml.serve import labelled_items

    q_items, g_items = labelled_items(query, "query"), labelled_items(gallery, "gallery")
    q = run.embed([i.source for i in q_items])
    g = run.embed([i.source for i in g_items])
    want = retrieval_metrics(q, [i.label for i in q_items], run.config.distance, gallery=g,
                             gallery_labels=[i.label for i in g_items])
    for key in ("precision_at_1", "r_precision", "map_at_r", "recall_at_8", "num_queries"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert open(os.path.join(cub_run, "metrics.json")).read() == before  # the run is untouched


def test_query_gallery_bad_input(cub_run, tmp_path, capsys):
    query, gallery = _folder_pair(str(tmp_path), ("cat", "dog", "owl"), ("cat", "dog", "fox"))
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(os.path.join(query, "cat", "cat_0.jpg"), str(flat / "a.jpg"))
    cases = [
        (["--query", query, "--gallery", gallery], "1 classes of %s are not in %s (owl)"
         % (query, gallery)),
        (["--query", query], "--query and --gallery go together"),
        (["--query", str(flat), "--gallery", gallery], "must hold class folders"),
        (["--query", query, "--gallery", str(tmp_path / "nope")], "no such folder"),
        (["--query", query, "--gallery", gallery, "--out", str(tmp_path / "m.txt")],
         "name a .json file"),
        (["--query", query, "--gallery", gallery, "--split", "test"],
         "--split applies to the run's own dataset"),
    ]
    for extra, message in cases:
        code = main(["evaluate", cub_run] + extra)
        err = capsys.readouterr().err.strip()
        assert code == 2 and message in err and len(err.splitlines()) == 1, (extra, err)


def _corrupt(name, folder, how):
    """Damage a copy of a benchmark's files: returns the data root to pass."""
    if name == "cub200":
        base = os.path.join(folder, "CUB_200_2011")
        if how == "truncated":
            lines = open(os.path.join(base, "images.txt")).read().splitlines()
            open(os.path.join(base, "images.txt"), "w").write("\n".join(lines[:-3]) + "\n")
        elif how == "label":
            path = os.path.join(base, "image_class_labels.txt")
            lines = open(path).read().splitlines()
            lines[2] = "3 201"
            open(path, "w").write("\n".join(lines) + "\n")
        elif how == "missing_image":
            os.remove(os.path.join(base, "images", "101.Bird_101", "Bird_101_0002.jpg"))
        elif how == "broken_image":
            path = os.path.join(base, "images", "002.Bird_2", "Bird_2_0001.jpg")
            data = open(path, "rb").read()
            open(path, "wb").write(data[:len(data) // 2])
        elif how == "missing_list":
            os.remove(os.path.join(base, "image_class_labels.txt"))
        elif how == "duplicate_id":  # image 2 listed again: a dict would keep one of the two
            path = os.path.join(base, "images.txt")
            lines = open(path).read().splitlines()
            lines[5] = "2 " + lines[5].split(" ", 1)[1]
            open(path, "w").write("\n".join(lines) + "\n")
        elif how == "outside":
            path = os.path.join(base, "images.txt")
            lines = open(path).read().splitlines()
            lines[0] = lines[0].split(" ", 1)[0] + " ../../etc/hostname"
            open(path, "w").write("\n".join(lines) + "\n")
    elif name == "cars196":
        if how == "no_annotations":
            write_cars196(folder, annotations=False)
        elif how == "not_mat":
            open(os.path.join(folder, "cars_annos.mat"), "wb").write(b"garbage" * 20)
    elif name == "sop":
        base = os.path.join(folder, "Stanford_Online_Products")
        if how == "short_line":
            with open(os.path.join(base, "Ebay_test.txt"), "a") as f:
                f.write("99 11330\n")
        elif how == "shared_class":
            with open(os.path.join(base, "Ebay_test.txt"), "a") as f:
                f.write("99 1 1 bicycle_final/100001_0.JPG\n")
        elif how == "no_header":  # the first image would be read as the header and dropped
            path = os.path.join(base, "Ebay_train.txt")
            lines = open(path).read().splitlines()
            open(path, "w").write("\n".join(lines[1:]) + "\n")
    elif name == "inshop":
        path = os.path.join(folder, "In-shop Clothes Retrieval Benchmark", "Eval",
                            "list_eval_partition.txt")
        lines = open(path).read().splitlines()
        if how == "status":
            lines[3] = lines[3].rsplit(" ", 1)[0] + " validation"
        elif how == "no_gallery":
            lines = [line for line in lines if not line.endswith(" gallery")]
            lines[0] = str(len(lines) - 2)  # the count line agrees
        elif how == "count":
            lines[0] = "9999"
        elif how == "no_img":
            shutil.rmtree(os.path.join(folder, "In-shop Clothes Retrieval Benchmark", "Img"))
        open(path, "w").write("\n".join(lines) + "\n")
    return folder


BAD_BENCHMARKS = [
    ("cub200", "empty_folder", "holds no images.txt"),
    ("cub200", "truncated", "list different images (3 ids in one only"),
    ("cub200", "label", "line 3: class 201 is outside 1-200"),
    ("cub200", "missing_image", "Bird_101_0002.jpg is missing"),
    ("cub200", "broken_image", "Bird_2_0001.jpg is not an image Pillow can decode"),
    ("cub200", "missing_list", "image_class_labels.txt is missing"),
    ("cars196", "no_annotations", "holds no annotations with relative_im_path and class"),
    ("cars196", "not_mat", "is not a MATLAB file scipy can read"),
    ("sop", "short_line", "Ebay_test.txt line 18 is '99 11330', not 4 fields"),
    ("sop", "shared_class", "share 1 classes (first 1)"),
    ("inshop", "status", "evaluation status 'validation' is not train, query or gallery"),
    ("inshop", "no_gallery", "lists no gallery image"),
    ("cub200", "duplicate_id", "images.txt line 6: image id 2 is listed twice (also on line 2)"),
    ("cub200", "outside", "images.txt line 1: '../../etc/hostname' leads outside"),
    ("sop", "no_header", "Ebay_train.txt does not start with its header line"),
    ("inshop", "count", "says it lists 9999 images on its first line, but lists 36"),
    ("inshop", "no_img", "holds no Img/ folder (In-Shop's images, Img/img/<...>, belong there)"),
    ("sop", "no_folder", "sop not found: no folder at"),
]


@pytest.mark.parametrize("name,how,message", BAD_BENCHMARKS,
                         ids=["%s-%s" % (n, h) for n, h, _ in BAD_BENCHMARKS])
def test_malformed_benchmark_files_are_one_line_exit_2(benchmarks, tmp_path, capsys, name, how,
                                                       message):
    data = str(tmp_path / "data")
    if how == "empty_folder":
        os.makedirs(data)
    elif how != "no_folder":
        shutil.copytree(benchmarks[name], data)
        _corrupt(name, data, how)
    out = str(tmp_path / "out")
    code = main(["train", "--dataset", name, "--data-root", data, "--output-root", out]
                + TINY_PHOTO)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not os.path.exists(out)  # nothing written


def test_missing_benchmark_names_what_goes_where(tmp_path):
    with pytest.raises(DmlError, match=r"put In-Shop \(Eval/list_eval_partition.txt and "
                                       r"Img/img/\) there"):
        load_dataset("inshop", str(tmp_path), 32)


def test_split_unseen_is_refused_on_a_class_disjoint_benchmark(benchmarks, capsys):
    code = main(["train", "--dataset", "cub200", "--data-root", benchmarks["cub200"], "--split",
                 "unseen"] + TINY_PHOTO)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cub200 is class-disjoint already" in err and "--split test" in err


def test_the_serving_page_centre_crop_lines_match_the_evaluation_geometry():
    """doc/serving.md's lines for a center_crop model's ONNX input, run as written."""
    import re

    from PIL import Image

    text = open(os.path.join(ROOT, "doc", "serving.md"), encoding="utf-8").read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "side = height" in b)
    for size in ((300, 200), (120, 500), (224, 224)):
        original = Image.fromarray(np.random.default_rng(size[0]).integers(
            0, 255, size=(size[1], size[0], 3)).astype(np.uint8))
        namespace = {"image": original, "height": 96, "Image": Image}
        exec(block, namespace)  # noqa: S102  (our own documentation)
        assert np.array_equal(np.asarray(namespace["image"]),
                              np.asarray(fit_image(original, 96, "center_crop")))
