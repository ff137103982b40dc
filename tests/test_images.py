"""Reading one image file (dml.data.images.read_image): high-bit-depth images scaled to 8 bits or
refused, and files that are not regular image files refused at once, each in one line."""
import os
import threading

import numpy as np
import pytest
from PIL import Image

from dml import DmlError
from dml.data.images import read_image


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    values = np.linspace(24, 65525, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    image = read_image(path)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    expected = np.round(values.astype(np.float64) * 255 / 65535)
    assert np.abs(image[..., 0].astype(np.float64) - expected).max() <= 0.5
    assert len(np.unique(image)) > 200  # a ramp, not 4 values of white
    assert read_image(path, 32).shape == (32, 32, 3)


def test_a_16_bit_tiff_likewise(tmp_path):
    values = (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)
    path = str(tmp_path / "deep.tif")
    Image.fromarray(values).save(path)
    image = read_image(path)
    assert image[..., 1].max() == round(values.max() * 255 / 65535)


def test_float_and_wide_integer_images_are_refused_in_one_line(tmp_path):
    path = str(tmp_path / "float.tif")
    Image.fromarray(np.random.default_rng(0).random((16, 16)).astype(np.float32)).save(path)
    with pytest.raises(DmlError, match="float.tif is a floating-point image"):
        read_image(path)
    wide = str(tmp_path / "wide.tif")
    Image.fromarray((np.arange(256).reshape(16, 16) * 1000).astype(np.int32)).save(wide)
    with pytest.raises(DmlError, match="wide.tif is a 32-bit integer image with values from 0 "
                                       "to 255000"):
        read_image(wide)
    small = str(tmp_path / "small.tif")
    Image.fromarray(np.arange(256).reshape(16, 16).astype(np.int32)).save(small)
    assert read_image(small)[..., 0].max() == 255


def test_missing_files_pipes_and_devices_are_named(tmp_path):
    with pytest.raises(DmlError, match="gone.png: no such file"):
        read_image(str(tmp_path / "gone.png"))
    fifo = str(tmp_path / "x.png")
    os.mkfifo(fifo)
    done = []
    worker = threading.Thread(target=lambda: done.append(_refusal(fifo)), daemon=True)
    worker.start()
    worker.join(10)
    assert done and "x.png is not a regular file" in done[0]  # refused, not read for ever
    assert "/dev/zero is not a regular file" in _refusal("/dev/zero")
    assert "is not a regular file" in _refusal(str(tmp_path))


def _refusal(path):
    try:
        read_image(path)
    except DmlError as err:
        return str(err)
    return "read"


def test_pillows_bomb_warning_is_a_refusal_not_three_lines(tmp_path, monkeypatch, recwarn):
    path = str(tmp_path / "big.png")
    Image.new("RGB", (300, 300)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300 - 1)  # warns, below 2x: no error
    with pytest.raises(DmlError, match="big.png is too large to decode safely"):
        read_image(path)
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
