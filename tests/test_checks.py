"""The full decode check of image files, remembered between runs (dml.data.checks): a second load
in a new process decodes only what changed, a changed file is decoded again (and refused when
broken), files modified just before their check are not trusted to the record, a broken or
unwritable record costs only time, and DML_RECHECK=1 decodes everything."""
import glob
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dml import DmlError
from dml.data import checks
from fakedata import _photo, write_cub200
from runhelpers import ROOT

HOUR_AGO = time.time() - 3600


def settle(paths):
    """Date the files an hour back: a check then records them (not "racily clean")."""
    for path in paths:
        os.utime(path, (HOUR_AGO, HOUR_AGO))


def photos(folder, n=6):
    rng = np.random.default_rng(0)
    paths = [os.path.join(folder, "c%d" % (i % 2), "p%d.jpg" % i) for i in range(n)]
    for i, path in enumerate(paths):
        _photo(path, i % 2, rng, (30, 20))
    return paths


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DML_RECHECK", raising=False)
    return tmp_path / "cache"


def load_in_a_new_process(folder, cache_dir):
    code = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, "
            "format='%(message)s'); from dml.data.benchmarks import load_benchmark; "
            "load_benchmark('cub200', sys.argv[1], 32)")
    env = dict(os.environ, DML_CACHE_DIR=str(cache_dir))
    env.pop("DML_RECHECK", None)
    return subprocess.run([sys.executable, "-c", code, folder], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_second_load_in_a_new_process_decodes_only_what_changed(tmp_path):
    folder = write_cub200(str(tmp_path / "cub"))
    images = sorted(glob.glob(os.path.join(folder, "images", "*", "*.jpg")))
    settle(images)
    first = load_in_a_new_process(folder, tmp_path / "cache")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "unchanged since an earlier check" not in first.stdout  # everything decoded
    second = load_in_a_new_process(folder, tmp_path / "cache")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "decoded 0 of 40 images in full; 40 are unchanged" in second.stdout, second.stdout
    with open(images[7], "r+b") as f:  # same size, another content, another time
        f.seek(0)
        f.write(b"\0" * 64)
    os.utime(images[7], (HOUR_AGO + 10, HOUR_AGO + 10))
    third = load_in_a_new_process(folder, tmp_path / "cache")
    assert third.returncode != 0
    assert "%s is not an image Pillow can decode" % images[7] in third.stderr


def test_a_file_modified_just_before_its_check_is_checked_again(tmp_path, cache):
    paths = photos(str(tmp_path / "img"))
    assert checks.check_images(paths, 16) == 6
    assert checks.check_images(paths, 16) == 6  # written a moment ago: not recorded
    settle(paths)
    assert checks.check_images(paths, 16) == 6
    assert checks.check_images(paths, 16) == 0
    assert checks.check_images(paths, 24) == 6  # another size is another check


def test_the_files_that_decoded_are_remembered_when_one_did_not(tmp_path, cache):
    paths = photos(str(tmp_path / "img"))
    with open(paths[3], "wb") as f:
        f.write(b"not a jpeg")
    settle(paths)
    with pytest.raises(DmlError, match="p3.jpg is not an image Pillow can decode"):
        checks.check_images(paths, 16)
    _photo(paths[3], 1, np.random.default_rng(1), (30, 20))  # the user replaces it
    settle(paths[3:4])
    os.utime(paths[3], (HOUR_AGO + 5, HOUR_AGO + 5))
    # p0-p2 decoded before it and are remembered; the check stopped at p3, so p3-p5 are decoded
    assert checks.check_images(paths, 16) == 3
    assert checks.check_images(paths, 16) == 0


def test_a_missing_file_is_named(tmp_path, cache):
    paths = photos(str(tmp_path / "img"))
    os.remove(paths[2])
    with pytest.raises(DmlError, match="p2.jpg is gone: put it back"):
        checks.check_images(paths, 16, missing="%s is gone: put it back")


@pytest.mark.parametrize("content", [b"not json", b'{"version": 99, "files": {}}',
                                     b'{"version": 1, "files": {"x": "y"}}', b"[1, 2]"])
def test_a_record_that_is_not_ours_is_ignored_and_rewritten(tmp_path, cache, content):
    paths = photos(str(tmp_path / "img"))
    settle(paths)
    record = checks.record_path([os.path.abspath(p) for p in paths], 16, "square")
    os.makedirs(os.path.dirname(record))
    with open(record, "wb") as f:
        f.write(content)
    assert checks.check_images(paths, 16) == 6
    assert checks.check_images(paths, 16) == 0


def test_an_unwritable_cache_costs_only_time(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("DML_CACHE_DIR", str(blocker / "dml"))
    paths = photos(str(tmp_path / "img"))
    settle(paths)
    assert checks.check_images(paths, 16) == 6
    assert checks.check_images(paths, 16) == 6


def test_dml_recheck_decodes_everything(tmp_path, cache, monkeypatch):
    paths = photos(str(tmp_path / "img"))
    settle(paths)
    checks.check_images(paths, 16)
    monkeypatch.setenv("DML_RECHECK", "1")
    assert checks.check_images(paths, 16) == 6
    monkeypatch.setenv("DML_RECHECK", "0")
    assert checks.check_images(paths, 16) == 0


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "a"))
    assert checks.cache_dir() == str(tmp_path / "a")
    monkeypatch.delenv("DML_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert checks.cache_dir() == str(tmp_path / "xdg" / "dml")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert checks.cache_dir() == str(tmp_path / "home" / ".cache" / "dml")


def test_a_rewrite_with_the_same_size_and_modification_time_is_checked_again(tmp_path, cache):
    paths = photos(str(tmp_path / "img"))
    settle(paths)
    assert checks.check_images(paths, 16) == 6
    before = os.stat(paths[4])
    with open(paths[4], "r+b") as f:  # another content, the same size ...
        f.write(b"\0" * 64)
    os.utime(paths[4], ns=(before.st_atime_ns, before.st_mtime_ns))  # ... and the same time
    assert os.stat(paths[4]).st_mtime_ns == before.st_mtime_ns
    with pytest.raises(DmlError, match="p4.jpg is not an image Pillow can decode"):
        checks.check_images(paths, 16)
