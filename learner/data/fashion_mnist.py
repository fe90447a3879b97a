"""Fashion-MNIST from its IDX files (DESIGN.md §7: the Debian package `dataset-fashion-mnist`)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Literal

import numpy as np

from learner.data.batch import DataError, LabeledBatch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Official Fashion-MNIST class names, spelled so that each is a valid folder name.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)


def load_fashion_mnist(
    root: str | os.PathLike[str] = FASHION_MNIST_DIR,
    split: Literal["train", "test"] = "train",
) -> LabeledBatch:
    """Reads Fashion-MNIST from its IDX files (gzip or plain): 60 000 train / 10 000 test.

    Args:
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        split: "train" or "test".
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_idx_file(root, f"{prefix}-images-idx3-ubyte"), 2051, 3)
    labels = _read_idx(_idx_file(root, f"{prefix}-labels-idx1-ubyte"), 2049, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{root}: {len(images)} {split} images but {len(labels)} labels; the files are "
            "from different releases; reinstall with `apt-get install --reinstall "
            "dataset-fashion-mnist`"
        )
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{root}: label {labels.max()} out of range 0..9; the files are corrupt")
    return LabeledBatch(images[..., None], labels.astype(np.int64), FASHION_MNIST_CLASSES)


def _idx_file(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{root / (stem + '.gz')}: Fashion-MNIST file not found; install it with "
        "`apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/"
        "fashion-mnist) or pass the folder that holds the IDX files"
    )


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parses an IDX file of unsigned bytes: big-endian magic, ndim sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(
            f"{path}: cannot read ({err}); reinstall with "
            "`apt-get install --reinstall dataset-fashion-mnist`"
        ) from err
    header = 4 * (1 + ndim)
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(
            f"{path}: not an IDX file of {ndim}-D unsigned bytes (magic {found}, expected "
            f"{magic}); reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
        )
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: holds {len(raw) - header} data bytes, header says {expected}; the file is "
            "truncated; reinstall with `apt-get install --reinstall dataset-fashion-mnist`"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()
