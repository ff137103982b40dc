import os

import numpy as np
import pytest

from dml import DmlError
from dml.data import (Augment, BalancedBatchSampler, BatchLoader, augment_batch, load_cifar,
                      load_dataset, load_digits, load_folder, load_mnist, normalize_batch)
from fakedata import write_cifar, write_idx, write_image_folder

LAYOUTS = [("python", False), ("binary", False), ("python", True), ("binary", True)]


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("fmt,archive", LAYOUTS)
def test_cifar_official_layouts(tmp_path, name, fmt, archive):
    (x_tr, y_tr), (x_te, y_te) = write_cifar(str(tmp_path), name, fmt, archive, n_train=150, n_test=40)
    splits = load_cifar(name, str(tmp_path))
    assert len(splits.train) == 150 and len(splits.test) == 40
    np.testing.assert_array_equal(splits.train.images, x_tr.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(splits.train.labels, y_tr)
    np.testing.assert_array_equal(splits.test.images, x_te.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(splits.test.labels, y_te)
    assert splits.num_classes == (10 if name == "cifar10" else 100)
    if name == "cifar10":
        assert splits.class_names[0] == "airplane" and splits.class_names[9] == "truck"
    else:
        assert splits.class_names[42] == "class_42"
    assert splits.augment == Augment(pad=4, flip=True)


def test_cifar_missing_names_folder_and_files(tmp_path):
    with pytest.raises(DmlError) as err:
        load_cifar("cifar10", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message
    for expected in ("cifar-10-batches-py/", "cifar-10-batches-bin/", "cifar-10-python.tar.gz",
                     "cifar-10-binary.tar.gz", "`data_root`"):
        assert expected in message
    assert "\n" not in message


def test_cifar_missing_makes_one_download_attempt(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, path=None, sha1_hash=None, retries=5, **kwargs):
        calls.append((url, path, retries))
        raise OSError("no network")

    monkeypatch.delenv("DML_OFFLINE")
    monkeypatch.setattr("mxnet.gluon.utils.download", fake_download)
    with pytest.raises(DmlError, match="not found"):
        load_cifar("cifar100", str(tmp_path))
    assert len(calls) == 1
    assert calls[0][0].endswith("cifar-100-binary.tar.gz") and calls[0][2] == 1


def test_cifar_download_that_arrives_is_used(tmp_path, monkeypatch):
    source = tmp_path / "elsewhere"
    write_cifar(str(source), "cifar10", "binary", archive=True, n_train=20, n_test=10)

    def fake_download(url, path=None, sha1_hash=None, retries=5, **kwargs):
        os.replace(str(source / "cifar-10-binary.tar.gz"), path)
        return path

    monkeypatch.delenv("DML_OFFLINE")
    monkeypatch.setattr("mxnet.gluon.utils.download", fake_download)
    splits = load_cifar("cifar10", str(tmp_path / "root"))
    assert len(splits.train) == 20


def test_cifar_truncated_binary_is_reported(tmp_path):
    write_cifar(str(tmp_path), "cifar10", "binary", n_train=20, n_test=10)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DmlError, match="data_batch_3.bin is not a CIFAR binary batch"):
        load_cifar("cifar10", str(tmp_path))


def test_cifar_garbage_pickle_is_reported(tmp_path):
    write_cifar(str(tmp_path), "cifar10", "python", n_train=20, n_test=10)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DmlError, match="test_batch is not a CIFAR python batch"):
        load_cifar("cifar10", str(tmp_path))


def test_cifar_missing_batch_is_reported(tmp_path):
    write_cifar(str(tmp_path), "cifar10", "python", n_train=20, n_test=10)
    os.remove(str(tmp_path / "cifar-10-batches-py" / "data_batch_5"))
    with pytest.raises(DmlError, match="data_batch_5 is missing"):
        load_cifar("cifar10", str(tmp_path))


def test_cifar_corrupt_archive_is_reported(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DmlError, match="not a readable .tar.gz"):
        load_cifar("cifar10", str(tmp_path))


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_idx_files(tmp_path, gz, name):
    raw = write_idx(str(tmp_path), n_train=30, n_test=10, gz=gz)
    splits = load_mnist(name, str(tmp_path))
    assert splits.train.images.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(splits.train.images[:, 2:30, 2:30, 0], raw["train"][0])
    np.testing.assert_array_equal(splits.test.labels, raw["t10k"][1])


def test_mnist_missing_and_corrupt(tmp_path):
    with pytest.raises(DmlError, match="train-images-idx3-ubyte"):
        load_mnist("mnist", str(tmp_path))
    write_idx(str(tmp_path), gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x03junk")
    with pytest.raises(DmlError, match="t10k-labels-idx1-ubyte is not an idx file"):
        load_mnist("mnist", str(tmp_path))


def test_folder_loader(tmp_path):
    root = write_image_folder(str(tmp_path), per_class=(6, 3))
    splits = load_folder(root, image_size=24)
    assert splits.class_names == ["cat", "dog", "fox", "owl"]
    assert len(splits.train) == 24 and len(splits.test) == 12
    images, labels = splits.train.batch([0, 1, 7])
    assert images.shape == (3, 24, 24, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1]
    gray = images[1]  # the odd-numbered images were saved as grayscale
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_folder_bad_inputs(tmp_path):
    with pytest.raises(DmlError, match="needs data_root=ROOT"):
        load_folder(None)
    with pytest.raises(DmlError, match="train is not a folder"):
        load_folder(str(tmp_path))
    root = write_image_folder(str(tmp_path / "ok"), per_class=(2, 1))
    with open(os.path.join(root, "train", "cat", "broken.png"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(DmlError, match="broken.png is not an image"):
        load_folder(root)


def test_digits_split_is_fixed_and_stratified():
    a = load_digits()
    b = load_digits()
    assert len(a.train) == 1347 and len(a.test) == 450
    assert a.train.images.shape == (1347, 32, 32, 3)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    np.testing.assert_array_equal(a.test.images, b.test.images)
    train_share = np.bincount(a.train.labels) / len(a.train)
    test_share = np.bincount(a.test.labels) / len(a.test)
    assert np.abs(train_share - test_share).max() < 0.01


def test_unknown_dataset():
    with pytest.raises(DmlError, match="unknown dataset 'svhn'"):
        load_dataset("svhn")


def test_augment_and_normalize():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 8, 3)).astype(np.uint8)
    same = augment_batch(images, Augment(), rng)
    np.testing.assert_array_equal(same, images)
    out = augment_batch(images, Augment(pad=2, flip=True), np.random.default_rng(1))
    assert out.shape == images.shape
    for src, dst in zip(images, out):  # every output is a shifted (and maybe mirrored) crop
        padded = np.pad(src, ((2, 2), (2, 2), (0, 0)))
        found = any(np.array_equal(dst, cand[t:t + 8, l:l + 8])
                    for cand in (padded, padded[:, ::-1]) for t in range(5) for l in range(5))
        assert found
    x = normalize_batch(images, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (5, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 1, 2, 3], (images[0, 2, 3, 1] / 255 - 0.5) / 0.25, rtol=1e-6)


def test_batch_loader_is_deterministic_across_worker_counts():
    splits = load_digits()

    def batches(workers):
        sampler = BalancedBatchSampler(splits.train.labels, 4, 3, seed=9)
        loader = BatchLoader(splits.train, sampler, splits.mean, splits.std,
                             augment=Augment(pad=2, flip=True), seed=9, num_workers=workers)
        return [b for _, b in zip(range(5), loader)]

    serial, threaded = batches(0), batches(3)
    assert len(serial) == len(threaded) == 5
    for (xa, ya), (xb, yb) in zip(serial, threaded):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
