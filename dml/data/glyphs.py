"""``--dataset glyphs``: characters rendered from real fonts, the offline zero-shot set.

A class is a character (a Unicode code point); its images are that character drawn by every font
that covers it. The fonts that ship with matplotlib are always there (DejaVu Sans, Sans Mono and
Serif in four styles each, STIX General in four styles, and five
Computer Modern faces), and ``data_root`` may name a folder of more ``.ttf``/``.otf`` files
(searched recursively). The characters are letters, digits, punctuation and symbols
(Unicode categories L, N, P, S) without a canonical decomposition (no precomposed accents)
that at least :data:`MIN_FONTS` fonts cover; of characters that the reference font (DejaVu Sans)
draws identically (Latin A, Greek Alpha and Cyrillic A), only the first is kept.

Many classes with few images each, as Stanford Online Products: with matplotlib's fonts 1,300 or so
characters of 10 to 21 images. Training and test classes are disjoint, split by a fixed rule (the
CRC-32 of ``U+XXXX``, even to training, odd to test), the same on every machine.

Rendering: black ink on white, drawn 4x larger and reduced (anti-aliased); the font size is 0.7 of
the side and the baseline at 0.75 of it, so that position and size stay meaningful (a comma and
an apostrophe differ); a glyph larger than 0.92 of the side is scaled down to fit and centred,
one that would cross the border is moved inside it. Each image set is rendered once per size and
cached in ``$DML_CACHE_DIR`` (``~/.cache/dml``) under a key of the font files' SHA-1, the size,
Pillow's FreeType version and this module's rendering version.
"""
import hashlib
import logging
import os
import unicodedata
import zlib

import numpy as np

from ..errors import DmlError
from .base import ImageArrayDataset, _splits
from .checks import cache_dir

log = logging.getLogger("dml.data")

MIN_FONTS = 10  # a character is a class when this many fonts cover it
MIN_FONT_CHARACTERS = 20  # a font of --data-root must cover this many of the candidate characters
FONT_EXTENSIONS = (".ttf", ".otf")
REFERENCE_FONT = "DejaVuSans.ttf"
SUPERSAMPLE = 4
FONT_SIZE = 0.70  # of the side
BASELINE = 0.75  # of the side, from the top
FIT = 0.92  # the largest ink extent, of the side
MAX_FONT_BYTES = 64 << 20
MAX_FONTS = 2000
_RENDER_VERSION = 1
# matplotlib's fonts that draw characters of other code points than their own (Computer Modern's
# symbol and extension fonts map ASCII codes to math symbols), or only private-use glyphs, size
# variants or a few dozen display cuts of other fonts' glyphs
_SKIPPED_FONTS = ("cmex10.ttf", "cmsy10.ttf")
_SKIPPED_PREFIXES = ("STIXNonUni", "STIXSiz", "DejaVuSansDisplay", "DejaVuSerifDisplay")


def matplotlib_fonts():
    """The font files that ship with matplotlib and draw characters at their own code points."""
    import matplotlib

    folder = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().endswith(FONT_EXTENSIONS) and name not in _SKIPPED_FONTS
            and not name.startswith(_SKIPPED_PREFIXES)]


def user_fonts(root):
    """The ``.ttf``/``.otf`` files below ``root`` (sorted; hidden files and links skipped)."""
    if not os.path.isdir(root):
        raise DmlError("dataset=glyphs: data_root=%s is not a folder (it holds more fonts, "
                       ".ttf or .otf files, beside matplotlib's)" % root)
    found = []
    for here, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(here, name)
            if (name.lower().endswith(FONT_EXTENSIONS) and not name.startswith(".")
                    and not os.path.islink(path)):
                found.append(path)
    if not found:
        raise DmlError("dataset=glyphs: %s holds no usable font (no .ttf or .otf file): put "
                       "font files there or drop `data_root`" % root)
    if len(found) > MAX_FONTS:
        raise DmlError("dataset=glyphs: %s holds %d font files, more than %d: point `data_root` "
                       "at a smaller folder" % (root, len(found), MAX_FONTS))
    return found


def _candidate(code):
    char = chr(code)
    return unicodedata.category(char)[0] in "LNPS" and not unicodedata.decomposition(char)


def font_characters(path):
    """The candidate code points ``path`` maps to a glyph; a file that is not a font is a
    :class:`dml.DmlError` naming it."""
    from fontTools.ttLib import TTFont, TTLibError

    try:
        if os.path.getsize(path) > MAX_FONT_BYTES:
            raise DmlError("%s is larger than %d MB, more than any font: remove it"
                           % (path, MAX_FONT_BYTES >> 20))
        with TTFont(path, lazy=True) as font:
            cmap = font.getBestCmap() or {}
            glyphs = set(font.getGlyphOrder())
    except DmlError:
        raise
    except (TTLibError, OSError, ValueError, KeyError, AssertionError, IndexError,
            TypeError, AttributeError) as err:  # fontTools' parsers raise all of these
        raise DmlError("%s is not a font fontTools can read (%s): remove or replace it"
                       % (path, str(err).strip().splitlines()[0][:120] if str(err).strip()
                          else type(err).__name__)) from None
    return {code for code, glyph in cmap.items() if glyph in glyphs and glyph != ".notdef"
            and 0x20 < code < 0x110000 and _candidate(code)}


def _sha1(path):
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render(font, char, side):
    """``char`` drawn by the Pillow ``font`` (at ``SUPERSAMPLE`` x ``side`` scale) as a uint8
    ``side`` x ``side`` image, black ink on white, or None when it draws no ink."""
    from PIL import Image, ImageDraw

    big = side * SUPERSAMPLE
    canvas = Image.new("L", (3 * big, 3 * big), 0)
    ImageDraw.Draw(canvas).text((big, 2 * big), char, fill=255, font=font, anchor="ls")
    box = canvas.getbbox()
    if box is None:
        return None
    ink = canvas.crop(box)
    width, height = ink.size
    top = box[1] - 2 * big + int(round(BASELINE * big))  # where the baseline puts the ink
    limit = FIT * big
    if max(width, height) > limit:
        scale = limit / max(width, height)
        width, height = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        ink = ink.resize((width, height), Image.LANCZOS)
        top = (big - height) // 2
    margin = int((big - limit) / 2)
    top = min(max(top, margin), big - margin - height)
    out = Image.new("L", (big, big), 0)
    out.paste(ink, ((big - width) // 2, top))
    out = out.resize((side, side), Image.LANCZOS)
    return 255 - np.asarray(out, dtype=np.uint8)


def test_class(code):
    """The fixed split rule: a character is a test class when the CRC-32 of ``U+XXXX`` is odd."""
    return zlib.crc32(("U+%04X" % code).encode()) % 2 == 1


def class_name(code):
    return "%s U+%04X" % (chr(code), code)


def _choose_classes(coverage, reference):
    """The code points covered by at least :data:`MIN_FONTS` fonts, sorted."""
    counts = {}
    for codes in coverage:
        for code in codes:
            counts[code] = counts.get(code, 0) + 1
    return sorted(code for code, n in counts.items() if n >= MIN_FONTS)


def _render_all(fonts, coverage, codes, side, progress=True):
    """``(images, labels)``: every chosen code point drawn by every font covering it, lookalike
    classes (identical in the reference font) dropped."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import ImageFont
    from tqdm import tqdm

    size = int(round(FONT_SIZE * side * SUPERSAMPLE))
    loaded = [ImageFont.truetype(path, size) for path in fonts]

    def one(code):
        char = chr(code)
        return [render(font, char, side) if code in covered else None
                for font, covered in zip(loaded, coverage)]

    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool, \
            tqdm(total=len(codes), desc="rendering glyphs at %d px" % side, unit="char",
                 disable=None if progress else True, leave=False) as bar:
        drawn = []
        for images in pool.map(one, codes):
            drawn.append(images)
            bar.update(1)
    names = [os.path.basename(f) for f in fonts]
    ref = names.index(REFERENCE_FONT) if REFERENCE_FONT in names else 0
    seen, images, labels, kept = set(), [], [], []
    for code, per_font in zip(codes, drawn):
        present = [im for im in per_font if im is not None]
        if len(present) < MIN_FONTS:
            continue
        key = per_font[ref].tobytes() if per_font[ref] is not None else None
        if key is not None:
            if key in seen:  # a lookalike of an earlier character (Greek or Cyrillic A)
                continue
            seen.add(key)
        images.extend(present)
        labels.extend([len(kept)] * len(present))
        kept.append(code)
    return np.stack(images), np.asarray(labels, dtype=np.int32), kept


def _cache_file(fonts, side):
    from PIL import features

    key = hashlib.sha1()
    key.update(("%d\0%d\0%d\0%s\0" % (_RENDER_VERSION, side, MIN_FONTS,
                                      features.version("freetype2"))).encode())
    for path in fonts:
        key.update(("%s\0%s\0" % (os.path.basename(path), _sha1(path))).encode())
    return os.path.join(cache_dir(), "glyphs-%d-%s.npz" % (side, key.hexdigest()[:20]))


def _read_cache(path):
    try:
        with np.load(path, allow_pickle=False) as data:
            images, labels, codes = data["images"], data["labels"], data["codes"]
        if images.ndim == 3 and len(images) == len(labels) and labels.max() < len(codes):
            return images, labels, [int(c) for c in codes]
    except (OSError, ValueError, KeyError, EOFError, zlib.error):
        pass
    return None


def _write_cache(path, images, labels, codes):
    import tempfile

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".glyphs-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels, codes=np.asarray(codes, np.int64))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:  # a read-only home only costs the next start its rendering
        log.info("could not cache the rendered glyphs in %s (%s)", path, err)


def glyph_images(side=32, data_root=None, progress=True):
    """``(images uint8 N x side x side, labels, code points)`` of every class (labels index the
    code points), rendered once and cached."""
    fonts = matplotlib_fonts()
    if data_root:
        fonts = fonts + user_fonts(os.path.expanduser(data_root))
    path = _cache_file(fonts, side)
    cached = _read_cache(path) if os.path.isfile(path) else None
    if cached is not None:
        return cached
    coverage = []
    for font in fonts:
        codes = font_characters(font)
        if len(codes) < MIN_FONT_CHARACTERS:
            raise DmlError("%s covers %d of the characters glyphs draws (letters, digits, "
                           "punctuation, symbols), fewer than %d: remove it from `data_root`"
                           % (font, len(codes), MIN_FONT_CHARACTERS))
        coverage.append(codes)
    codes = _choose_classes(coverage, REFERENCE_FONT)
    images, labels, kept = _render_all(fonts, coverage, codes, side, progress)
    _write_cache(path, images, labels, kept)
    return images, labels, kept


def load_glyphs(data_root=None, image_size=32):
    """The glyphs :class:`dml.data.DatasetSplits`: training classes and test classes disjoint
    (:func:`test_class`), grey images repeated over 3 channels, the training split's mean and
    standard deviation."""
    images, labels, codes = glyph_images(int(image_size), data_root)
    is_test = np.array([test_class(c) for c in codes])[labels]
    rgb = np.repeat(images[..., None], 3, axis=3)
    train = ImageArrayDataset(rgb[~is_test], labels[~is_test])
    test = ImageArrayDataset(rgb[is_test], labels[is_test])
    train_classes = sorted(int(c) for c in np.unique(train.labels))
    eval_classes = sorted(int(c) for c in np.unique(test.labels))
    if len(train_classes) < 2 or len(eval_classes) < 2:
        raise DmlError("dataset=glyphs: the fonts leave %d training and %d test classes; each "
                       "needs at least 2" % (len(train_classes), len(eval_classes)))
    pixels = images[~is_test].astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    return _splits("glyphs", train, test, [class_name(c) for c in codes], (mean,) * 3,
                   (std,) * 3, crop_pad=max(1, image_size // 16), train_classes=train_classes,
                   eval_classes=eval_classes)
