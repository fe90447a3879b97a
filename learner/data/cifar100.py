"""CIFAR-100 in its binary version (no pickle): the format the Janus-LoRA paper's first benchmark
ships in, for users who have the data (nothing is downloaded).

The folder (`cifar-100-binary/` of the official `cifar-100-binary.tar.gz`, or the folder holding
it) has `train.bin` (50,000 records) and `test.bin` (10,000), and `fine_label_names.txt` (100
names, one per line). A record is 3,074 bytes: the coarse label, the fine label, then the 32×32
image as 1,024 red, 1,024 green and 1,024 blue bytes, rows first. Classes are the fine labels.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from learner.data.batch import DataError, LabeledBatch

SIDE = 32
RECORD_BYTES = 2 + 3 * SIDE * SIDE
NUM_CLASSES = 100
_FILES = ("train.bin", "test.bin", "fine_label_names.txt")


def find_cifar100(path: str | os.PathLike[str]) -> Path | None:
    """The CIFAR-100 binary folder at `path` (or its `cifar-100-binary/` sub-folder); None when
    `path` is not one (so other loaders may try)."""
    path = Path(path)
    for folder in (path, path / "cifar-100-binary"):
        if folder.is_dir() and any((folder / name).is_file() for name in _FILES):
            return folder
    return None


def load_cifar100(
    root: str | os.PathLike[str], split: Literal["train", "test"] = "train"
) -> LabeledBatch:
    """The train or test split: uint8 images (N, 32, 32, 3), fine labels, the 100 class names.

    Raises:
        DataError: a file is missing, truncated or holds an impossible label; the message names
            the file.
    """
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    folder = find_cifar100(root) or Path(root)
    names = _class_names(folder / "fine_label_names.txt")
    path = folder / f"{split}.bin"
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"{path}: cannot read the CIFAR-100 binary file ({err.strerror or err}); pass the "
            "cifar-100-binary folder of the official cifar-100-binary.tar.gz"
        ) from None
    if not raw or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{path}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte CIFAR-100 "
            "records; the file is truncated or not CIFAR-100 binary: extract it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 1].astype(np.int64)
    if labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path}: fine label {labels.max()} is outside 0..99; the file is corrupt: extract it "
            "again"
        )
    images = records[:, 2:].reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)  # (N, 32, 32, 3)
    return LabeledBatch(np.ascontiguousarray(images), labels, names)


def _class_names(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path}: cannot read the CIFAR-100 class names ({err}); it comes with train.bin and "
            "test.bin in the cifar-100-binary folder"
        ) from None
    if len(lines) != NUM_CLASSES or len(set(lines)) != NUM_CLASSES:
        raise DataError(
            f"{path}: {len(lines)} names ({len(set(lines))} distinct), expected the 100 distinct "
            "fine class names of CIFAR-100, one per line"
        )
    return tuple(lines)
