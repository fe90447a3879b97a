"""Writes the sample data of `janus up` from Debian's Fashion-MNIST (MIT licence, see README.md).

    python examples/make_samples.py      # rewrites examples/fashion-mnist/ and examples/images/

task1: 4 classes × 50 training images (the first version `janus up` learns); task2: 2 new classes
× 40 (to try learning through the API); golden: 30 test-split images of each of those six classes
(the golden evaluation set `janus up` attaches); images/: a few test-split images to classify.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from learner.data import load_fashion_mnist, per_class_limit, write_class_folders

HERE = Path(__file__).resolve().parent
TASKS = {
    "task1": (["t-shirt_top", "trouser", "sneaker", "bag"], 50),
    "task2": (["dress", "sandal"], 40),
}
QUERIES = ["t-shirt_top", "trouser", "sneaker", "bag", "dress", "sandal"]
GOLDEN_PER_CLASS = 30


def main() -> None:
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    for name, (classes, n) in TASKS.items():
        out = HERE / "fashion-mnist" / name
        shutil.rmtree(out, ignore_errors=True)
        write_class_folders(per_class_limit(train.select_classes(classes), n, seed=0), out)
    golden = HERE / "fashion-mnist" / "golden"
    shutil.rmtree(golden, ignore_errors=True)
    queries = {  # the images/ queries are the first test image of each class: not in golden
        int(np.nonzero(test.labels == test.class_names.index(n))[0][0]) for n in QUERIES
    }
    rest = test.subset([i for i in range(len(test)) if i not in queries])
    write_class_folders(
        per_class_limit(rest.select_classes(QUERIES), GOLDEN_PER_CLASS, seed=0), golden
    )
    images = HERE / "images"
    shutil.rmtree(images, ignore_errors=True)
    images.mkdir()
    for name in QUERIES:
        label = test.class_names.index(name)
        index = int(np.nonzero(test.labels == label)[0][0])
        Image.fromarray(test.images[index, ..., 0]).save(images / f"{name}.png")


if __name__ == "__main__":
    main()
