"""A labeled batch that stays on disk: image files with labels, read one at a time when needed.

`FileBatch` is the streaming twin of `LabeledBatch`: the same labels, class names, subsets and
class selection, but each image is decoded and resized to the model's side only when it is read
(`read`), through the one image path of `learner.data.images`. Memory therefore follows the side
and the number of images in flight, not the number or the size of the files; a learn job or a
benchmark over tens of thousands of photos reads them epoch after epoch instead of holding them
(`learner.loader` drives the reads from worker processes).

Pixels: `read` gives what `load_batch(..., image_size=side)` gives for the same file, except that
grayscale images are repeated over three channels (the model's input repeats them anyway, so the
model sees the same numbers).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from learner.data.batch import DataError, LabeledBatch
from learner.data.images import MAX_PIXELS

_CHUNK = 1 << 20


@dataclass(frozen=True, eq=False)
class FileBatch:
    """Image files with class labels, read at ``side`` × ``side`` on demand.

    Attributes:
        files: one path per image.
        labels: int64 (N,), indices into ``class_names``.
        class_names: one unique, non-empty name per class.
        side: the square side every image is resized to when read (the model's side).
        shown: how errors name each file (inside an archive: "data.zip:cat/1.png"); the paths
            themselves when empty.
        max_pixels: refuse any image whose header declares more pixels than this.
    """

    files: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    side: int
    shown: tuple[str, ...] = ()
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be a 1-D integer array, got {labels.shape}")
        object.__setattr__(self, "files", tuple(Path(f) for f in self.files))
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "shown", tuple(self.shown) or tuple(map(str, self.files)))
        if not len(self.files) == len(labels) == len(self.shown):
            raise DataError(
                f"{len(self.files)} files, {len(labels)} labels and {len(self.shown)} names; "
                "give exactly one label per file"
            )
        if self.side < 1:
            raise DataError(f"side must be a positive number of pixels, got {self.side}")
        duplicates = sorted(n for n, c in Counter(self.class_names).items() if c > 1)
        if duplicates:
            raise DataError(f"class names must be unique; duplicated: {duplicates}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(
                f"labels must lie in 0..{len(self.class_names) - 1} ({len(self.class_names)} "
                "class names); add the missing name or fix the label"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return f"FileBatch(n={len(self)}, side={self.side}, class_names={self.class_names})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` decoded and resized: uint8 (side, side, 3).

        Raises:
            DataError: the file is missing, corrupt, of a refused format or too large; the
                message names it.
        """
        from learner.data.loading import read_image  # loading imports this module

        pixels = read_image(self.files[index], self.shown[index], self.side, self.max_pixels)
        return pixels if pixels.shape[-1] == 3 else np.repeat(pixels, 3, axis=-1)

    def read_many(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Images at ``indices``: uint8 (B, side, side, 3)."""
        out = np.empty((len(indices), self.side, self.side, 3), dtype=np.uint8)
        for row, i in enumerate(np.asarray(indices, dtype=np.int64)):
            out[row] = self.read(int(i))
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileBatch:
        """The samples at ``indices`` (integer indices or a boolean mask)."""
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == np.bool_ else idx.astype(np.int64, copy=False)
        return replace(
            self,
            files=tuple(self.files[i] for i in idx),
            labels=self.labels[idx],
            shown=tuple(self.shown[i] for i in idx),
        )

    def select_classes(self, names: Sequence[str]) -> FileBatch:
        """Keeps only the classes ``names``, relabelled 0..k-1 in the given order."""
        names = tuple(names)
        missing = [n for n in names if n not in self.class_names]
        if missing:
            raise DataError(f"classes {missing} are not in this batch; it has {self.class_names}")
        remap = np.full(len(self.class_names), -1, dtype=np.int64)
        for new, name in enumerate(names):
            remap[self.class_names.index(name)] = new
        relabelled = remap[self.labels]
        keep = np.flatnonzero(relabelled >= 0)
        picked = self.subset(keep)
        return replace(picked, labels=relabelled[keep], class_names=names)

    def resized(self, side: int) -> FileBatch:
        """The same files, read at ``side`` × ``side`` from now on."""
        return self if side == self.side else replace(self, side=side)

    def counts(self) -> dict[str, int]:
        """Number of samples per class, in class order (zero included)."""
        per_label = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(c) for name, c in zip(self.class_names, per_label, strict=True)}

    def digest(self) -> str:
        """Stable sha256 (hex) of the files' bytes, the labels and the class names (the files
        are read once, in chunks; nothing is decoded)."""
        h = hashlib.sha256()
        h.update(json.dumps({"files": len(self), "names": self.class_names}).encode())
        for path, shown in zip(self.files, self.shown, strict=True):
            try:
                with open(path, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        h.update(chunk)
            except OSError as err:
                raise DataError(f"{shown}: cannot read ({err.strerror or err})") from None
            h.update(b"\x00")
        h.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return h.hexdigest()

    def load(self) -> LabeledBatch:
        """Every image read into memory (for small batches: a held-out sample, a test)."""
        return LabeledBatch(self.read_many(range(len(self))), self.labels, self.class_names)


Batch = LabeledBatch | FileBatch
"""A labeled batch in memory or on disk; the learner takes either."""


def in_memory(batch: Batch) -> LabeledBatch:
    """The batch's images in memory (read from disk if needed: for small batches only)."""
    return batch if isinstance(batch, LabeledBatch) else batch.load()


def concatenate(parts: Sequence[Batch]) -> Batch:
    """Batches of one kind (all in memory or all on disk) with distinct classes as one batch:
    the class names joined in order, each part's labels shifted past the classes before it."""
    names = tuple(n for p in parts for n in p.class_names)
    offsets = np.cumsum([0, *(p.num_classes for p in parts[:-1])])
    labels = np.concatenate([p.labels + off for p, off in zip(parts, offsets, strict=True)])
    if all(isinstance(p, FileBatch) for p in parts):
        files = [p for p in parts if isinstance(p, FileBatch)]
        return replace(
            files[0],
            files=tuple(f for p in files for f in p.files),
            shown=tuple(s for p in files for s in p.shown),
            labels=labels,
            class_names=names,
        )
    if all(isinstance(p, LabeledBatch) for p in parts):
        images = np.concatenate([p.images for p in parts if isinstance(p, LabeledBatch)])
        return LabeledBatch(images, labels, names)
    raise TypeError("cannot join batches in memory with batches on disk")
