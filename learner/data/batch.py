"""The labeled batch: uint8 images N×H×W×C with int64 labels and class names, validated."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from learner.data.images import array_pixels


class DataError(ValueError):
    """A labeled batch cannot be used; the message names the file and the fix."""


# --------------------------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LabeledBatch:
    """Images with class labels.

    Attributes:
        images: uint8 array (N, H, W, C), C in {1, 3}.
        labels: int64 array (N,), indices into ``class_names``.
        class_names: one non-empty, unique name per class; label i means ``class_names[i]``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise DataError(
                f"images must be a uint8 numpy array, got {getattr(images, 'dtype', type(images))}"
                "; convert with np.clip(x, 0, 255).astype(np.uint8)"
            )
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise DataError(
                f"images must have shape (N, H, W, C) with C in {{1, 3}}, got {images.shape}"
            )
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"labels must be a 1-D integer array, got shape {labels.shape} {labels.dtype}"
            )
        names = tuple(self.class_names)
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", names)
        if len(images) != len(labels):
            raise DataError(
                f"{len(images)} images but {len(labels)} labels; give exactly one label per image"
            )
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise DataError(f"class names must be non-empty strings, got {name!r}")
        duplicates = sorted(n for n, c in Counter(names).items() if c > 1)
        if duplicates:
            raise DataError(f"class names must be unique; duplicated: {duplicates}")
        if len(labels):
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= len(names):
                bad = lo if lo < 0 else hi
                raise DataError(
                    f"label {bad} has no class name ({len(names)} class names, so labels must "
                    f"lie in 0..{len(names) - 1}); add the missing name or fix the label"
                )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"LabeledBatch(n={len(self)}, image_shape={self.images.shape[1:]}, "
            f"class_names={self.class_names})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes named (some may have no samples)."""
        return len(self.class_names)

    def subset(self, indices: Sequence[int] | np.ndarray) -> LabeledBatch:
        """Returns the samples at ``indices`` (integer indices or a boolean mask)."""
        idx = np.asarray(indices)
        if idx.dtype != np.bool_:
            idx = idx.astype(np.int64, copy=False)
        return LabeledBatch(self.images[idx], self.labels[idx], self.class_names)

    def select_classes(self, names: Sequence[str]) -> LabeledBatch:
        """Keeps only the classes ``names``, relabelled 0..k-1 in the given order."""
        names = tuple(names)
        missing = [n for n in names if n not in self.class_names]
        if missing:
            raise DataError(f"classes {missing} are not in this batch; it has {self.class_names}")
        if len(set(names)) != len(names):
            raise DataError(f"class names to select must be unique, got {names}")
        remap = np.full(len(self.class_names), -1, dtype=np.int64)
        for new, name in enumerate(names):
            remap[self.class_names.index(name)] = new
        new_labels = remap[self.labels]
        keep = new_labels >= 0
        return LabeledBatch(self.images[keep], new_labels[keep], names)

    def resized(self, side: int) -> LabeledBatch:
        """The batch at side × side, each image resized as `learner.data.images` does it."""
        if self.images.shape[1:3] == (side, side):
            return self
        images = (
            np.stack([array_pixels(im, side) for im in self.images])
            if len(self)
            else (np.zeros((0, side, side, self.images.shape[-1]), np.uint8))
        )
        return LabeledBatch(images, self.labels, self.class_names)

    def digest(self) -> str:
        """Stable sha256 (hex) of the images, labels and class names."""
        h = hashlib.sha256()
        h.update(json.dumps({"shape": list(self.images.shape), "names": self.class_names}).encode())
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        """Number of samples per class, in class order (zero included)."""
        per_label = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, per_label, strict=True)}
