#!/usr/bin/env python
"""Writes the tiny worked example of a user's own dataset: ``datasets/example_own_data/``.

    python datasets/make_example_own_data.py [--root datasets/example_own_data]

Three classes (background, disc, bar): a noisy gray background with a red disc and a blue bar at
random places. 8 training and 2 validation JPEGs of 64x64, label PNGs with the class index per
pixel and 255 (ignore) on a thin border around each shape, and ``example_own_data.yaml``, the
dataset file that declares it. Deterministic; the committed copy was written by this script.
"""

import argparse
import os

import numpy as np
from PIL import Image

SIZE = 64
SPLITS = {"train": 8, "val": 2}
DATASET_FILE = """\
# A dataset file: everything train_net.py, demo/demo.py, tools/validate_dataset.py and
# mta_clip.Predictor need to know about a dataset. Paths are relative to this file's folder.
name: example_own_data            # registers example_own_data_train and example_own_data_val
classes: [background, disc, bar]  # label value i in the PNGs = classes[i]
prompt_names: [background, circle, stripe]   # optional: what MTA-CLIP puts in its text prompts
palette: [[90, 90, 90], [220, 40, 40], [40, 60, 220]]   # optional: RGB display colors
ignore_label: 255                 # label value of pixels that are not scored
image_suffix: .jpg                # an image a/b.jpg pairs with the label a/b.png
label_suffix: .png
splits:
  train: {images: images/train, labels: labels/train}
  val: {images: images/val, labels: labels/val}
"""


def _sample(rng: np.random.Generator):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = rng.normal(110, 12, (SIZE, SIZE, 3))
    label = np.zeros((SIZE, SIZE), np.uint8)
    cy, cx, r = rng.integers(14, SIZE - 14), rng.integers(14, SIZE - 14), rng.integers(7, 12)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    x0, w = rng.integers(0, SIZE - 12), rng.integers(6, 10)
    bar = (xx >= x0) & (xx < x0 + w)
    disc = dist <= r
    image[bar] = rng.normal([40, 60, 220], 10, (int(bar.sum()), 3))
    image[disc] = rng.normal([220, 40, 40], 10, (int(disc.sum()), 3))
    label[bar] = 2
    label[disc] = 1
    edge = (np.abs(dist - r) < 0.7) | ((np.abs(xx - x0 + 0.5) < 0.6) | (np.abs(xx - (x0 + w) + 0.5) < 0.6)) & ~disc
    label[edge] = 255
    return np.clip(image, 0, 255).astype(np.uint8), label


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "example_own_data"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(12)
    for split, n in SPLITS.items():
        os.makedirs(os.path.join(args.root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(args.root, "labels", split), exist_ok=True)
        for i in range(n):
            image, label = _sample(rng)
            Image.fromarray(image).save(os.path.join(args.root, "images", split, f"{split}_{i}.jpg"), quality=90)
            Image.fromarray(label).save(os.path.join(args.root, "labels", split, f"{split}_{i}.png"))
    with open(os.path.join(args.root, "example_own_data.yaml"), "w", encoding="utf-8") as f:
        f.write(DATASET_FILE)
    print(f"wrote {sum(SPLITS.values())} images and labels and example_own_data.yaml under {args.root}")


if __name__ == "__main__":
    main()
