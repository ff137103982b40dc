"""Reading one image file: the only place dml decodes an image from disk (training, evaluation,
the image checks and serving all come here), so every file gets the same checks and the same
conversion to 8-bit RGB."""
import os
import stat
import warnings

import numpy as np

from ..errors import DmlError
from .transforms import fit_image, load_side

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _regular_file(path):
    """``path`` must name a regular file: a FIFO, a device (``/dev/zero``) or a folder would
    hang or mislead the decoder."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DmlError("%s: no such file" % path) from None
    except OSError as err:
        raise DmlError("cannot read %s (%s)" % (path, err.strerror or err)) from None
    if not stat.S_ISREG(st.st_mode):
        raise DmlError("%s is not a regular file (a folder, a pipe or a device): give image "
                       "files" % path)


def to_rgb(img, path):
    """A PIL image as 8-bit RGB. 16-bit grey images (``I;16``: PNG, TIFF) are scaled to 8 bits
    (v * 255 / 65535, rounded), 32-bit integer ones taken as they are when every value is in
    0..255; other 32-bit integer and floating-point images have no one meaning for their values
    and are refused, naming the file."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT:
        values = np.asarray(img, dtype=np.uint32)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if img.mode == "I":
        values = np.asarray(img)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise DmlError("%s is a 32-bit integer image with values from %d to %d, which have no "
                           "one scale: save it with 8 or 16 bits per channel"
                           % (path, values.min(), values.max()))
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise DmlError("%s is a floating-point image, whose values have no one scale: save it "
                       "with 8 or 16 bits per channel" % path)
    return img.convert("RGB")


def read_image(path, size=None, resize="square", draft=None):
    """The image at ``path`` fully decoded as uint8 H x W x 3 RGB (:func:`to_rgb`): brought to
    ``size`` x ``size`` by ``resize`` (:func:`dml.data.transforms.fit_image`) when ``size`` is
    given, else whole (a JPEG at the reduced scale that keeps it at least ``draft`` pixels on
    each side, when given). A missing file, one that is not a regular file, an undecodable or
    truncated one (whatever ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` another library set) or a
    decompression bomb (Pillow's warning as well as its error) is a :class:`dml.DmlError`
    naming the file."""
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False  # GluonCV's import turns it on for the process
    _regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                target = load_side(size, resize) if size is not None else draft
                if target:
                    img.draft("RGB", (target, target))  # JPEG: decode at a reduced scale
                img = to_rgb(img, path)
                if size is not None:
                    img = fit_image(img, size, resize)
                return np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DmlError("%s is too large to decode safely (%s): shrink or remove it"
                       % (path, str(err).split(" could be")[0].rstrip(","))) from None
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's parsers raise all three
        raise DmlError("%s is not an image Pillow can decode (%s): remove or replace it"
                       % (path, str(err).strip() or type(err).__name__)) from None
