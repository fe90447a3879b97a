"""Labeled image batches: loading, validation and class-incremental splits.

A labeled batch is what an operator hands the learner (DESIGN.md §1 "Learn"): a folder of class
sub-folders, a zip or tar of one, or an ``.npz``. Everything is decoded into one
:class:`LabeledBatch` (uint8 images N×H×W×C, int64 labels, class names). Fashion-MNIST is read from
its IDX files (DESIGN.md §7). :func:`class_incremental_split` cuts a dataset into T tasks of k new
classes each, the protocol behind the accuracy matrix of DESIGN.md §3.

Untrusted input is handled defensively: archives are checked member by member before anything is
written (no path escapes, no links out, bounded size and member count), ``.npz`` files are read
without pickle, and images are checked against a pixel limit before they are decoded.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import posixpath
import re
import stat
import tarfile
import tempfile
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "DataError",
    "LabeledBatch",
    "Task",
    "class_incremental_split",
    "holdout_split",
    "load_batch",
    "load_fashion_mnist",
    "per_class_limit",
    "write_class_folders",
]

GiB = 1 << 30
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
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
DEFAULT_MAX_PIXELS = 50_000_000  # per image; below PIL's own bomb warning (≈89 M)
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
_IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:(/|$)")  # "C:/x" in a member name is absolute on Windows


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


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_batch(
    path: str | os.PathLike[str],
    *,
    image_size: int | None = None,
    max_bytes: int = 2 * GiB,
    max_members: int = 200_000,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LabeledBatch:
    """Loads a labeled batch from a class-folder tree, a zip/tar of one, or an ``.npz``.

    Class names are the sub-folder names, sorted. If every image is grayscale the batch keeps one
    channel, otherwise all images become RGB. Images of different sizes are resized (bilinear) to
    ``image_size`` × ``image_size`` if given, else to the most common size.

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
    if not path.exists():
        raise DataError(
            f"{path}: no such file or folder; pass a folder of class sub-folders, "
            "a .zip/.tar/.tar.gz of one, or an .npz"
        )
    if path.is_dir():
        return _load_folder(path, path, image_size=image_size, max_pixels=max_pixels)
    name = path.name.lower()
    if name.endswith(".npz"):
        return _load_npz(path, image_size=image_size, max_bytes=max_bytes)
    if name.endswith(_ARCHIVE_SUFFIXES):
        with tempfile.TemporaryDirectory(prefix="janus-batch-") as tmp:
            dest = Path(tmp)
            _extract_archive(path, dest, max_bytes=max_bytes, max_members=max_members)
            root = _archive_root(dest)
            return _load_folder(
                root, path, image_size=image_size, max_pixels=max_pixels, display_base=dest
            )
    raise DataError(
        f"{path}: unsupported file type; pass a folder of class sub-folders, an archive of one "
        f"({', '.join(_ARCHIVE_SUFFIXES)}) or an .npz with images, labels and class_names"
    )


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED_NAMES


def _load_folder(
    root: Path,
    source: Path,
    *,
    image_size: int | None,
    max_pixels: int,
    display_base: Path | None = None,
) -> LabeledBatch:
    """Reads ``root/<class>/**/<image>``; errors name files relative to ``source``."""

    def show(p: Path) -> str:
        # Inside an archive, name the member: "data.zip:cat/1.png".
        if display_base is None:
            return str(p)
        return f"{source}:{p.relative_to(display_base).as_posix()}"

    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p.name)), key=_name)
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
                and all(_visible(part) for part in p.relative_to(class_dir).parts)
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

    decoded = [_read_image(f, show(f), max_pixels) for f in files]
    images = _stack(decoded, image_size)
    return LabeledBatch(images, np.asarray(labels, dtype=np.int64), tuple(map(_name, class_dirs)))


def _name(p: Path) -> str:
    return p.name


def _read_image(path: Path, shown: str, max_pixels: int) -> Image.Image:
    """Decodes one image to mode "L" or "RGB", refusing decompression bombs."""
    try:
        with warnings.catch_warnings():
            # We apply our own pixel limit below; PIL's softer warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise DataError(
                    f"{shown}: image is {w}×{h} = {w * h} pixels, above the limit of "
                    f"{max_pixels} (possible decompression bomb); shrink it or raise max_pixels"
                )
            im.load()
            return _to_l_or_rgb(im)
    except DataError:
        raise
    except Image.DecompressionBombError as err:
        raise DataError(
            f"{shown}: refused as a decompression bomb ({err}); shrink the image or remove it"
        ) from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(
            f"{shown}: cannot decode image ({err}); replace or remove the file"
        ) from err


def _to_l_or_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in ("L", "1", "LA"):
        return im.convert("L")
    if mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.uint16) >> 8  # 16-bit grayscale → top 8 bits
        return Image.fromarray(arr.astype(np.uint8))
    if mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        if arr.size and arr.max() > 255:
            arr = arr * (255.0 / arr.max())
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im.convert("RGB")


def _stack(decoded: list[Image.Image], image_size: int | None) -> np.ndarray:
    """Stacks images into (N, H, W, C): one channel if all are grayscale, else RGB."""
    gray = all(im.mode == "L" for im in decoded)
    if image_size is not None:
        size = (image_size, image_size)
    else:
        size = Counter(im.size for im in decoded).most_common(1)[0][0]
    w, h = size
    out = np.empty((len(decoded), h, w, 1 if gray else 3), dtype=np.uint8)
    for i, im in enumerate(decoded):
        if not gray and im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        out[i] = arr[..., None] if gray else arr
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
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        decoded = [
            Image.fromarray(im[..., 0]) if im.shape[-1] == 1 else Image.fromarray(im)
            for im in images
        ]
        images = _stack(decoded, image_size)
    try:
        return LabeledBatch(np.ascontiguousarray(images), labels, class_names)
    except DataError as err:
        raise DataError(f"{path}: {err}") from err


# --------------------------------------------------------------------------------------------
# Safe archive extraction
# --------------------------------------------------------------------------------------------


def _member_path(archive: Path, name: str) -> PurePosixPath | None:
    """Validates a member name; returns its relative path (None for the root itself)."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or _DRIVE.match(clean) or "\x00" in clean:
        raise DataError(
            f"{archive}: member {name!r} has an absolute path and would escape the extraction "
            "folder; re-create the archive with relative paths"
        )
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DataError(
            f"{archive}: member {name!r} escapes its folder through '..'; re-create the archive "
            "from inside the dataset folder"
        )
    return PurePosixPath(*parts) if parts else None


def _link_target(archive: Path, member: str, rel: PurePosixPath, target: str, hard: bool) -> str:
    """Resolves a link target to a path relative to the archive root, or refuses it."""
    clean = target.replace("\\", "/")
    escape = DataError(
        f"{archive}: member {member!r} is a {'hard' if hard else 'symbolic'} link to {target!r} "
        "outside the archive folder; replace links with the files themselves"
    )
    if clean.startswith("/") or _DRIVE.match(clean):
        raise escape
    # Hard links name a member from the archive root; symlinks are relative to their folder.
    joined = clean if hard else posixpath.join(rel.parent.as_posix(), clean)
    resolved = posixpath.normpath(joined)
    if resolved == ".." or resolved.startswith("../"):
        raise escape
    return resolved


def _extract_archive(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> None:
    """Extracts a zip or tar into ``dest`` after checking every header.

    Refuses absolute paths, ``..``, links that leave the folder, special files, more than
    ``max_members`` members and more than ``max_bytes`` unpacked (also enforced while writing,
    in case a header lies).
    """
    if archive.name.lower().endswith(".zip"):
        _extract_zip(archive, dest, max_bytes=max_bytes, max_members=max_members)
    else:
        _extract_tar(archive, dest, max_bytes=max_bytes, max_members=max_members)


def _too_many(archive: Path, count: int, max_members: int) -> DataError:
    return DataError(
        f"{archive}: has {count} members, more than max_members={max_members}; split it into "
        "smaller batches or raise max_members"
    )


def _too_big(archive: Path, size: int, max_bytes: int) -> DataError:
    return DataError(
        f"{archive}: unpacks to {size} bytes or more, above max_bytes={max_bytes}; split it "
        "into smaller batches or raise max_bytes"
    )


def _copy_limited(
    src: IO[bytes], dst: Path, archive: Path, written: list[int], max_bytes: int
) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "xb") as out:
        while chunk := src.read(_CHUNK):
            written[0] += len(chunk)
            if written[0] > max_bytes:
                raise _too_big(archive, written[0], max_bytes)
            out.write(chunk)


def _extract_zip(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive}: not a readable zip file ({err}); re-create it") from err
    with zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise _too_many(archive, len(infos), max_members)
        plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
        links: list[tuple[PurePosixPath, str]] = []
        total = 0
        for info in infos:
            rel = _member_path(archive, info.filename)
            if rel is None or info.is_dir():
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                links.append((rel, _link_target(archive, info.filename, rel, target, False)))
                continue
            total += info.file_size
            plan.append((info, rel))
        if total > max_bytes:
            raise _too_big(archive, total, max_bytes)
        written = [0]
        try:
            for info, rel in plan:
                with zf.open(info) as src:
                    _copy_limited(src, dest.joinpath(*rel.parts), archive, written, max_bytes)
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"{archive}: corrupt member ({err}); re-create the archive") from err
    _materialise_links(archive, dest, links, written, max_bytes)


def _extract_tar(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> None:
    with _open_tar(archive) as tf:
        members: list[tarfile.TarInfo] = []
        try:
            # Read headers one by one so a huge member count stops early.
            for member in _iter_tar(tf):
                members.append(member)
                if len(members) > max_members:
                    raise _too_many(archive, len(members), max_members)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"{archive}: corrupt tar ({err}); re-create it") from err
        plan: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
        links: list[tuple[PurePosixPath, str]] = []
        total = 0
        for m in members:
            rel = _member_path(archive, m.name)
            if m.issym() or m.islnk():
                if rel is None:
                    raise DataError(f"{archive}: member {m.name!r} is a link at the root")
                links.append((rel, _link_target(archive, m.name, rel, m.linkname, m.islnk())))
            elif m.isdir() or rel is None:
                continue
            elif m.isfile():
                total += m.size
                plan.append((m, rel))
            else:
                raise DataError(
                    f"{archive}: member {m.name!r} is a device, FIFO or other special file; "
                    "archives may hold only folders, regular files and links inside the folder"
                )
        if total > max_bytes:
            raise _too_big(archive, total, max_bytes)
        written = [0]
        try:
            for m, rel in plan:
                src = tf.extractfile(m)
                if src is None:  # pragma: no cover - isfile() members always have data
                    continue
                with src:
                    _copy_limited(src, dest.joinpath(*rel.parts), archive, written, max_bytes)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"{archive}: corrupt member ({err}); re-create the archive") from err
    _materialise_links(archive, dest, links, written, max_bytes)


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: not a readable tar file ({err}); re-create it") from err


def _iter_tar(tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while (member := tf.next()) is not None:
        yield member


def _materialise_links(
    archive: Path,
    dest: Path,
    links: list[tuple[PurePosixPath, str]],
    written: list[int],
    max_bytes: int,
) -> None:
    """Turns links inside the archive into plain copies of their (regular file) targets."""
    for rel, target in links:
        src = dest.joinpath(*PurePosixPath(target).parts)
        if not src.is_file() or src.is_symlink():
            raise DataError(
                f"{archive}: link {rel.as_posix()!r} points to {target!r}, which is not a file "
                "in the archive; replace links with the files themselves"
            )
        with open(src, "rb") as fh:
            _copy_limited(fh, dest.joinpath(*rel.parts), archive, written, max_bytes)


def _archive_root(dest: Path) -> Path:
    """Descends through one wrapping top-level folder, if the archive has one."""
    entries = [p for p in dest.iterdir() if _visible(p.name)]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if _visible(p.name)]
        if any(p.is_dir() for p in inner):
            return entries[0]
    return dest


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def holdout_split(
    batch: LabeledBatch, fraction: float, seed: int
) -> tuple[LabeledBatch, LabeledBatch]:
    """Stratified split into (train, holdout); deterministic under ``seed``.

    Each class gives ``round(fraction · n_c)`` samples to the holdout, at least one and at most
    ``n_c − 1``, so every class keeps a training sample and appears in the holdout.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"holdout fraction must lie strictly between 0 and 1, got {fraction}")
    rng = _rng(seed)
    hold: list[np.ndarray] = []
    for label, name in enumerate(batch.class_names):
        idx = np.flatnonzero(batch.labels == label)
        if len(idx) < 2:
            raise DataError(
                f"class {name!r} has {len(idx)} sample(s); a held-out split needs at least 2 per "
                "class; add samples or pass a separate test batch"
            )
        n_hold = min(max(1, round(fraction * len(idx))), len(idx) - 1)
        hold.append(rng.permutation(idx)[:n_hold])
    mask = np.zeros(len(batch), dtype=bool)
    if hold:
        mask[np.concatenate(hold)] = True
    return batch.subset(~mask), batch.subset(mask)


def per_class_limit(batch: LabeledBatch, n: int, seed: int) -> LabeledBatch:
    """Keeps at most ``n`` samples per class, chosen deterministically under ``seed``."""
    if n < 1:
        raise DataError(f"per-class limit must be at least 1, got {n}")
    rng = _rng(seed)
    keep: list[np.ndarray] = []
    for label in range(batch.num_classes):
        idx = np.flatnonzero(batch.labels == label)
        keep.append(rng.permutation(idx)[:n] if len(idx) > n else idx)
    chosen = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
    return batch.subset(chosen)


@dataclass(frozen=True, eq=False)
class Task:
    """One step of a class-incremental stream.

    Attributes:
        index: position in the stream, from 0.
        class_names: the task's new classes; local label i means ``class_names[i]``.
        train: training samples of these classes only, labels 0..k-1.
        test: test samples of these classes only, labels 0..k-1.
    """

    index: int
    class_names: tuple[str, ...]
    train: LabeledBatch
    test: LabeledBatch


def class_incremental_split(
    train: LabeledBatch,
    test: LabeledBatch | None,
    *,
    tasks: int,
    seed: int,
    holdout: float = 0.2,
    class_order: Sequence[str] | None = None,
) -> list[Task]:
    """Cuts a dataset into ``tasks`` tasks of ``k = n_classes / tasks`` new classes each.

    Args:
        train: the training batch.
        test: a test batch with (at least) the same class names; None holds out ``holdout`` of
            each class of ``train`` instead.
        tasks: number of tasks T; must divide the number of classes.
        seed: shuffles the class order (unless ``class_order``) and the holdout.
        holdout: fraction of each class held out when ``test`` is None.
        class_order: explicit class order (a subset of the classes is allowed).
    """
    if class_order is None:
        order = [train.class_names[i] for i in _rng(seed).permutation(train.num_classes)]
    else:
        order = list(class_order)
        unknown = [n for n in order if n not in train.class_names]
        if unknown:
            raise DataError(
                f"class_order names {unknown}, which the training batch lacks; "
                f"choose among {list(train.class_names)}"
            )
        if len(set(order)) != len(order):
            raise DataError(f"class_order repeats a class: {order}")
    n = len(order)
    if tasks < 1 or n < tasks or n % tasks:
        divisors = [d for d in range(1, n + 1) if n % d == 0]
        raise DataError(
            f"{n} classes cannot be split into {tasks} tasks of equal size; pass a number of "
            f"tasks that divides {n}: one of {divisors}"
        )
    if test is not None and test.images.shape[1:] != train.images.shape[1:]:
        raise DataError(
            f"test images are {test.images.shape[1:]} (H, W, C) but training images are "
            f"{train.images.shape[1:]}; load both with the same image_size"
        )
    k = n // tasks
    out: list[Task] = []
    for t in range(tasks):
        names = tuple(order[t * k : (t + 1) * k])
        task_train = train.select_classes(names)
        if test is None:
            task_train, task_test = holdout_split(task_train, holdout, seed=_seed(seed, t))
        else:
            missing = [c for c in names if c not in test.class_names]
            if missing:
                raise DataError(
                    f"the test batch lacks classes {missing} of task {t}; give it the same "
                    "class names as the training batch, or pass no test batch to hold out "
                    "part of the training data"
                )
            task_test = test.select_classes(names)
        empty = [c for c, m in task_train.counts().items() if m == 0]
        if empty:
            raise DataError(f"task {t}: classes {empty} have no training samples")
        if len(task_test) == 0:
            raise DataError(f"task {t}: the test batch has no samples of classes {list(names)}")
        out.append(Task(t, names, task_train, task_test))
    return out


def _seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


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
        pil = Image.fromarray(img[..., 0]) if img.shape[-1] == 1 else Image.fromarray(img)
        pil.save(out / batch.class_names[label] / f"{i:0{width}d}.png")
    return out
