"""Loading a labeled batch: a folder of class sub-folders, a zip or tar of one, or an ``.npz``.

A labeled batch is what an operator hands the learner (DESIGN.md §1 "Learn"). Class names are the
sub-folder names, sorted; images are read through the one image path of `learner.data.images`
(format by content, pixel limit before decoding, EXIF orientation, antialiased resize), so a
batch loaded at the model's side holds exactly the pixels the service would compute for the same
files. ``.npz`` files are read without pickle; archives are extracted by
`learner.data.archives`, checked member by member.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from learner.data.archives import ARCHIVE_SUFFIXES, archive_root, extract_archive, visible
from learner.data.batch import DataError, LabeledBatch
from learner.data.files import Batch, FileBatch
from learner.data.images import (
    IMAGE_FORMATS,
    MAX_PIXELS,
    ImageError,
    decode,
    open_image,
    resize,
    to_image,
)

GiB = 1 << 30
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
DATASET_FORMATS = (*IMAGE_FORMATS, "PPM")
"""Formats a dataset's images may have (checked by content): the service's, and PPM/PGM."""


def load_batch(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    max_bytes: int = 2 * GiB,
    max_members: int = 200_000,
    max_pixels: int = MAX_PIXELS,
) -> LabeledBatch:
    """Loads a labeled batch from a class-folder tree, a zip/tar of one, or an ``.npz``.

    If every image is grayscale the batch keeps one channel, otherwise all images become RGB.
    Every image is resized to ``image_size`` × ``image_size`` if given (the model's side: what
    learn jobs do), else to the most common size.

    Args:
        path: a folder, ``.zip``, ``.tar``, ``.tar.gz``/``.tgz`` (also bz2/xz) or ``.npz``.
        image_size: square side to resize every image to; None keeps the most common size.
        max_bytes: refuse archives (and ``.npz``) that unpack to more than this many bytes.
        max_members: refuse archives with more members than this.
        max_pixels: refuse any single image with more pixels than this (decompression bombs).

    Raises:
        DataError: the input is missing, malformed, unsafe or too large; the message names
            the file and what to do.
    """
    path = Path(path)
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")
    _check_exists(path)
    if path.is_dir():
        return _load_folder(list_images(path), image_size, max_pixels)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _load_npz(path, image_size=image_size, max_bytes=max_bytes)
    if name.endswith(ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="janus-batch-") as tmp:
            dest = Path(tmp)
            extract_archive(path, dest, max_bytes=max_bytes, max_members=max_members)
            listing = list_images(archive_root(dest), shown_as=(dest, path))
            return _load_folder(listing, image_size, max_pixels)
    raise DataError(
        f"{path}: unsupported file type; pass a folder of class sub-folders, an archive of one "
        f"({', '.join(ARCHIVE_SUFFIXES)}) or an .npz with images, labels and class_names"
    )


@contextlib.contextmanager
def open_batch(
    path: str | os.PathLike[str],
    *,
    image_size: int,
    max_bytes: int = 2 * GiB,
    max_members: int = 200_000,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[Batch]:
    """A labeled batch to stream at the model's side: a `FileBatch` over a class-folder tree
    (an archive is extracted to a temporary folder that lives as long as the context), or the
    `LabeledBatch` of an ``.npz`` (already in memory).

    Every image's header is checked on the way in (format by content, pixel limit), so a folder
    with an unreadable or oversized file is refused before any training; pixels are decoded only
    when read. Same arguments and errors as `load_batch`.
    """
    path = Path(path)
    if path.is_dir() or path.name.lower().endswith(ARCHIVE_SUFFIXES):
        with contextlib.ExitStack() as stack:
            if path.is_dir():
                listing = list_images(path)
            else:
                _check_exists(path)
                dest = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="janus-batch-")))
                extract_archive(path, dest, max_bytes=max_bytes, max_members=max_members)
                listing = list_images(archive_root(dest), shown_as=(dest, path))
            batch = FileBatch(
                listing.files,
                listing.labels,
                listing.class_names,
                image_size,
                listing.shown,
                max_pixels,
            )
            for file, shown in zip(batch.files, batch.shown, strict=True):
                _check_header(file, shown, max_pixels)
            yield batch
        return
    yield load_batch(path, image_size=image_size, max_bytes=max_bytes, max_pixels=max_pixels)


def read_image(path: Path, shown: str, side: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One dataset image through the one image path: uint8 (side, side, 1 or 3)."""
    return resize(_read(path, shown, side, max_pixels), side)


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder; pass a folder of class sub-folders, "
            "a .zip/.tar/.tar.gz of one, or an .npz"
        )


def _check_header(path: Path, shown: str, max_pixels: int) -> None:
    try:
        open_image(path, name=shown, formats=DATASET_FORMATS, max_pixels=max_pixels).close()
    except ImageError as err:
        raise _data_error(err) from None


@dataclass(frozen=True)
class ImageFiles:
    """The images of a class-folder tree, in the order `load_batch` gives them.

    Attributes:
        files: one path per image, class by class, sorted within a class.
        labels: int64 (N,), indices into ``class_names``.
        class_names: the sub-folder names, sorted.
        shown: how errors name each file (inside an archive: "data.zip:cat/1.png").
    """

    files: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    shown: tuple[str, ...]


def list_images(root: Path, *, shown_as: tuple[Path, Path] | None = None) -> ImageFiles:
    """Lists ``root/<class>/**/<image>``; `shown_as` = (extraction folder, archive) for errors."""

    def show(p: Path) -> str:
        if shown_as is None:
            return str(p)
        base, archive = shown_as
        return f"{archive}:{p.relative_to(base).as_posix()}"

    source = show(root) if shown_as is None else str(shown_as[1])
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and visible(p.name)), key=lambda p: p.name
    )
    if not class_dirs:
        stray = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = " (images must sit in one sub-folder per class)" if stray else ""
        raise DataError(
            f"{source}: no class sub-folders found{hint}; lay it out as "
            "<folder>/<class name>/<image>.png, one sub-folder per class"
        )
    files: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(
            (
                p
                for p in class_dir.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS
                and p.is_file()
                and all(visible(part) for part in p.relative_to(class_dir).parts)
            ),
            key=lambda p: p.relative_to(class_dir).as_posix(),
        )
        if not found:
            raise DataError(
                f"{show(class_dir)}: class folder has no images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}); add images or remove the folder"
            )
        files.extend(found)
        labels.extend([label] * len(found))
    return ImageFiles(
        tuple(files),
        np.asarray(labels, dtype=np.int64),
        tuple(p.name for p in class_dirs),
        tuple(show(p) for p in files),
    )


def _load_folder(listing: ImageFiles, image_size: int | None, max_pixels: int) -> LabeledBatch:
    decoded = (
        _read(path, shown, image_size, max_pixels)
        for path, shown in zip(listing.files, listing.shown, strict=True)
    )
    if image_size is None:  # hold every decoded image to find the most common size
        opened = list(decoded)
        size = Counter(im.size for im in opened).most_common(1)[0][0]
        arrays = [resize(im, size) for im in opened]
    else:  # decode and resize one image at a time: memory follows the side, not the files
        arrays = [resize(im, image_size) for im in decoded]
    return LabeledBatch(_stack(arrays), listing.labels, listing.class_names)


def _read(path: Path, shown: str, side: int | None, max_pixels: int) -> Image.Image:
    try:
        im = open_image(path, name=shown, side=side, formats=DATASET_FORMATS, max_pixels=max_pixels)
        return decode(im, shown)
    except ImageError as err:
        raise _data_error(err) from None


def _data_error(err: ImageError) -> DataError:
    fix = " or remove it" if err.kind == "too_large" else "; replace or remove the file"
    return DataError(f"{err}{fix}")


def _stack(arrays: list[np.ndarray]) -> np.ndarray:
    """(H, W, 1 or 3) arrays → (N, H, W, C): one channel if all are grayscale, else RGB."""
    gray = all(a.shape[-1] == 1 for a in arrays)
    h, w = arrays[0].shape[:2]
    out = np.empty((len(arrays), h, w, 1 if gray else 3), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        out[i] = arr if gray or arr.shape[-1] == 3 else np.repeat(arr, 3, axis=-1)
    return out


def _load_npz(path: Path, *, image_size: int | None, max_bytes: int) -> LabeledBatch:
    fix = (
        "save it with np.savez(path, images=<uint8 N×H×W[×C]>, labels=<int N>, "
        "class_names=np.array([...], dtype=str))"
    )
    try:
        with zipfile.ZipFile(path) as zf:
            unpacked = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: not a readable .npz ({err}); {fix}") from err
    if unpacked > max_bytes:
        raise DataError(
            f"{path}: unpacks to {unpacked} bytes, above max_bytes={max_bytes}; "
            "split the batch or raise max_bytes"
        )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("images", "labels", "class_names") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: missing key(s) {missing} (has {sorted(npz.files)}); {fix}"
                )
            images, labels, names = npz["images"], npz["labels"], npz["class_names"]
    except DataError:
        raise
    except ValueError as err:  # object arrays need pickle, which we never allow
        raise DataError(
            f"{path}: cannot read without pickle ({err}); store class_names as a str array, "
            f"not objects; {fix}"
        ) from err
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{path}: corrupt .npz ({err}); {fix}") from err

    if images.dtype != np.uint8:
        raise DataError(
            f"{path}: field 'images' has dtype {images.dtype}, expected uint8; "
            "convert with np.clip(x, 0, 255).astype(np.uint8)"
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(
            f"{path}: field 'images' has shape {images.shape}, expected N×H×W or N×H×W×C "
            "with C = 1 or 3"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: field 'labels' must be a 1-D integer array, got shape {labels.shape} "
            f"dtype {labels.dtype}"
        )
    if names.ndim != 1 or names.dtype.kind not in ("U", "S"):
        raise DataError(
            f"{path}: field 'class_names' must be a 1-D array of strings, got shape "
            f"{names.shape} dtype {names.dtype}; {fix}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{path}: {len(images)} images but {len(labels)} labels in fields 'images' and "
            "'labels'; give exactly one label per image"
        )
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
        raise DataError(
            f"{path}: field 'labels' contains {bad}, which has no class name "
            f"({len(class_names)} entries in 'class_names', so labels must lie in "
            f"0..{len(class_names) - 1}); add the missing name or fix the label"
        )
    try:
        batch = LabeledBatch(np.ascontiguousarray(images), labels, class_names)
    except DataError as err:
        raise DataError(f"{path}: {err}") from err
    return batch if image_size is None else batch.resized(image_size)


def write_class_folders(batch: LabeledBatch, out_dir: str | os.PathLike[str]) -> Path:
    """Writes one PNG per image into ``out_dir/<class name>/``; returns ``out_dir``."""
    out = Path(out_dir)
    for name in batch.class_names:
        if name in (".", "..") or any(c in name for c in "/\\\x00:") or name.startswith("."):
            raise DataError(
                f"class name {name!r} cannot be a folder name; rename it without / \\ : "
                "or a leading dot"
            )
    for name in batch.class_names:
        (out / name).mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(len(batch))))
    for i, (img, label) in enumerate(zip(batch.images, batch.labels, strict=True)):
        to_image(img).save(out / batch.class_names[label] / f"{i:0{width}d}.png")
    return out
