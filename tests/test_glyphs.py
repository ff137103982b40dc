"""The glyphs dataset (dml.data.glyphs): characters from real fonts, training and test classes
disjoint by a fixed rule, rendered once and cached; a bad font folder is one line, exit 2."""
import os
import zlib

import numpy as np
import pytest

from dml.data import glyphs
from runhelpers import refused


@pytest.fixture(scope="module")
def splits():
    from dml.data import load_dataset

    return load_dataset("glyphs", None, 32)


def test_classes_are_characters_split_by_the_fixed_rule(splits):
    train = set(np.unique(splits.train.labels).tolist())
    test = set(np.unique(splits.test.labels).tolist())
    assert not train & test
    assert len(train) > 500 and len(test) > 500
    assert splits.train_classes == sorted(train) and splits.eval_classes == sorted(test)
    for label in list(train)[:50] + list(test)[:50]:
        name = splits.class_names[label]
        code = int(name.split("U+")[1], 16)
        assert name == "%s U+%04X" % (chr(code), code)
        assert (label in test) == (zlib.crc32(("U+%04X" % code).encode()) % 2 == 1)


def test_every_class_has_an_image_per_covering_font(splits):
    counts = np.bincount(np.concatenate([splits.train.labels, splits.test.labels]))
    assert counts[counts > 0].min() >= glyphs.MIN_FONTS
    assert counts.max() <= len(glyphs.matplotlib_fonts())
    images = splits.train.images
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert (images[..., 0] == images[..., 2]).all()  # grey, repeated over 3 channels
    assert (images[:, 0, :, :] > 200).mean() > 0.95  # black ink on white, inside the border


def test_lookalikes_and_precomposed_characters_are_left_out(splits):
    names = {name.split(" U+")[0] for name in splits.class_names}
    assert "A" in names and "\u0391" not in names and "\u0410" not in names  # Greek, Cyrillic A
    assert "\u00e9" not in names  # e with an acute accent: a decomposition of e
    assert "a" in names and "7" in names


def test_position_is_kept_a_comma_is_not_an_apostrophe():
    from PIL import ImageFont

    font = ImageFont.truetype(os.path.join(os.path.dirname(glyphs.matplotlib_fonts()[0]),
                                           "DejaVuSans.ttf"), int(glyphs.FONT_SIZE * 128))
    comma, apostrophe = glyphs.render(font, ",", 32), glyphs.render(font, "'", 32)
    rows = lambda image: np.flatnonzero((image < 128).any(axis=1))  # noqa: E731
    assert rows(comma).min() > rows(apostrophe).max()  # the comma sits lower
    assert glyphs.render(font, " ", 32) is None  # no ink
    wide = glyphs.render(font, "\u27f9", 32)  # a long arrow, wider than the em: scaled to fit
    assert (wide[:, 0] > 200).all() and (wide[:, -1] > 200).all()


def test_rendered_once_then_read_from_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(glyphs, "MIN_FONTS", 18)  # few classes: a quick render
    first = glyphs.glyph_images(16, progress=False)
    assert len(list(tmp_path.glob("glyphs-16-*.npz"))) == 1

    def fail(*args):
        raise AssertionError("rendered again")

    monkeypatch.setattr(glyphs, "render", fail)
    second = glyphs.glyph_images(16, progress=False)
    assert np.array_equal(first[0], second[0]) and first[2] == second[2]
    # a cache file that is not one is rendered again, not trusted
    path = next(tmp_path.glob("glyphs-16-*.npz"))
    path.write_bytes(b"not an npz")
    monkeypatch.undo()
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(glyphs, "MIN_FONTS", 18)
    third = glyphs.glyph_images(16, progress=False)
    assert np.array_equal(first[0], third[0])


def _subset_font(src, dst, text):
    from fontTools import subset

    options = subset.Options()
    font = subset.load_font(src, options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=text)
    subsetter.subset(font)
    subset.save_font(font, dst, options)


def test_fonts_of_data_root_add_images(monkeypatch, tmp_path):
    monkeypatch.setenv("DML_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(glyphs, "MIN_FONTS", 18)
    base_images, base_labels, base_codes = glyphs.glyph_images(16, progress=False)
    fonts = tmp_path / "fonts" / "more"
    fonts.mkdir(parents=True)
    serif = os.path.join(os.path.dirname(glyphs.matplotlib_fonts()[0]), "DejaVuSerif.ttf")
    text = "".join(chr(c) for c in base_codes)
    _subset_font(serif, str(fonts / "serif-copy.ttf"), text)
    images, labels, codes = glyphs.glyph_images(16, str(tmp_path / "fonts"), progress=False)
    assert codes[:len(base_codes)] == base_codes or set(base_codes) <= set(codes)
    assert len(images) > len(base_images)


def _refused(argv, capsys):
    code, err = refused(argv, capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def test_bad_font_folders_are_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no fonts here")
    out = tmp_path / "out"
    line = _refused(["train", "--dataset", "glyphs", "--data-root", str(empty), "--output-root",
                    str(out)], capsys)
    assert "holds no usable font" in line and "--data-root" in line
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "broken.ttf").write_bytes(b"\x00\x01\x00\x00" + os.urandom(200))
    line = _refused(["train", "--dataset", "glyphs", "--data-root", str(corrupt),
                    "--output-root", str(out)], capsys)
    assert "broken.ttf is not a font" in line
    few = tmp_path / "few"
    few.mkdir()
    _subset_font(glyphs.matplotlib_fonts()[0], str(few / "tiny.ttf"), "abc")
    line = _refused(["train", "--dataset", "glyphs", "--data-root", str(few), "--output-root",
                    str(out)], capsys)
    assert "tiny.ttf covers 3 of the characters" in line
    line = _refused(["train", "--dataset", "glyphs", "--data-root", str(tmp_path / "nowhere"),
                    "--output-root", str(out)], capsys)
    assert "is not a folder" in line
    line = _refused(["train", "--dataset", "glyphs", "--split", "unseen", "--output-root",
                    str(out)], capsys)
    assert "class-disjoint already" in line
    assert not out.exists()
