"""Dataset intake for learn jobs: where a batch may come from, and what it must be.

A job names its dataset either as a path (or `file://` URI) under one of the allowed roots
(`JANUS_DATASET_ROOTS`), or as `datasets/<sha256>`: an archive staged in the version store,
content-addressed (the CLI stages a path outside the roots this way; the service stages uploads).
Before training, a batch is refused with a clear message if it repeats a known class
(class-incremental), has too few images in a class, or fails `learner.data.load_batch`'s checks
(undecodable images, archives escaping their folder or unpacking past the size limit).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from adapters_store.manifest import plain_text
from learner.data import Batch, DataError, open_batch

STAGED = re.compile(r"datasets/([0-9a-f]{64})")
"""A dataset staged in the store: `datasets/<sha256 of the archive>`."""
_CHUNK = 1 << 20


def _store_fs(store_uri: str) -> tuple[Any, str]:
    if "://" not in store_uri:
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(store_uri))
    fs, root = url_to_fs(store_uri)
    return fs, str(root)


def _archive_suffix(head: bytes, data_path: Path) -> str:
    """The file suffix `load_batch` needs, from the archive's magic bytes."""
    if head.startswith(b"PK\x03\x04"):
        with zipfile.ZipFile(data_path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
        return ".npz" if names and all(n.endswith(".npy") for n in names) else ".zip"
    for magic, suffix in (
        (b"\x1f\x8b", ".tar.gz"),
        (b"BZh", ".tar.bz2"),
        (b"\xfd7zXZ\x00", ".tar.xz"),
    ):
        if head.startswith(magic):
            return suffix
    if head[257:262] == b"ustar":
        return ".tar"
    raise DataError(
        "the staged dataset is not a zip, tar (optionally gz/bz2/xz) or npz archive; "
        "upload one of those"
    )


def stage_dataset(
    path: str | os.PathLike[str], store_uri: str, *, digest: str | None = None
) -> str:
    """Copies a folder (packed as tar) or an archive into the store; returns `datasets/<sha>`.

    Streamed: a folder is packed into a temporary file, the digest is computed a chunk at a time
    (or given: an upload hashed while it was received) and the file is copied into the store
    from disk, so memory does not follow its size.
    """
    src = Path(path)
    with tempfile.TemporaryDirectory(prefix="janus-stage-") as tmp:
        if src.is_dir():
            archive = Path(tmp) / "dataset.tar"
            _pack(src, archive)
        elif src.is_file():
            archive = src
        else:
            raise DataError(
                f"{src}: no such file or folder; pass a class-folder tree or an archive"
            )
        if digest is None:
            with open(archive, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        fs, root = _store_fs(store_uri)
        target = f"{root}/datasets/{digest}"
        if not fs.exists(target):
            fs.makedirs(f"{root}/datasets", exist_ok=True)
            partial = f"{target}.tmp-{secrets.token_hex(6)}"
            fs.put_file(str(archive), partial)
            fs.mv(partial, target)
    return f"datasets/{digest}"


def _pack(folder: Path, archive: Path) -> None:
    """A folder as a deterministic tar (sorted members, no times or owners): the same folder
    always stages under the same digest."""
    with tarfile.open(archive, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for file in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            info = tf.gettarinfo(str(file), arcname=file.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(file, "rb") as fh:
                tf.addfile(info, fh)


def gc_datasets(store_uri: str, older_than_s: float, *, dry_run: bool = False) -> list[str]:
    """Removes staged datasets (`datasets/<sha256>`, and partial copies) last written more than
    `older_than_s` ago; returns their store paths. Versions never reference a staged dataset
    (they keep its digest only), so no version loses a file; a queued job whose dataset is
    removed fails with "not staged", so the age should exceed how long a job may wait."""
    fs, root = _store_fs(store_uri)
    folder = f"{root}/datasets"
    try:
        entries = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for entry in sorted(entries):
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if not re.fullmatch(r"[0-9a-f]{64}(\.tmp-[0-9a-f]+)?", name):
            continue  # not ours
        if fs.modified(entry).timestamp() > cutoff:
            continue
        if not dry_run:
            fs.rm(entry)
        removed.append(f"datasets/{name}")
    return removed


@contextlib.contextmanager
def _fetch_staged(digest: str, store_uri: str, max_bytes: int) -> Iterator[Path]:
    fs, root = _store_fs(store_uri)
    source = f"{root}/datasets/{digest}"
    try:
        size = int(fs.size(source))
    except FileNotFoundError:
        raise DataError(
            f"datasets/{digest} is not staged in store {store_uri}; upload the dataset again"
        ) from None
    if size > max_bytes:
        raise DataError(f"datasets/{digest} is {size} bytes, above the limit of {max_bytes}")
    with tempfile.TemporaryDirectory(prefix="janus-staged-") as tmp:
        raw = Path(tmp) / "raw"
        h = hashlib.sha256()
        with fs.open(source, "rb") as src, open(raw, "wb") as dst:  # a chunk at a time
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != digest:
            raise DataError(f"datasets/{digest} in store {store_uri} does not match its digest")
        with open(raw, "rb") as fh:
            head = fh.read(512)
        path = raw.with_name(f"{digest}{_archive_suffix(head, raw)}")
        raw.rename(path)
        yield path


def under_roots(path: Path, roots: Sequence[Path]) -> bool:
    """Whether a resolved path is one of `roots` or inside one."""
    return any(path == root or root in path.parents for root in roots)


@contextlib.contextmanager
def open_dataset(
    ref: str, *, roots: Sequence[Path], store_uri: str, max_bytes: int
) -> Iterator[Path]:
    """The local path of a dataset reference (fetched to a temporary file if staged)."""
    match = STAGED.fullmatch(ref)
    if match:
        with _fetch_staged(match.group(1), store_uri, max_bytes) as path:
            yield path
        return
    raw = ref.removeprefix("file://") if ref.startswith("file://") else ref
    if "://" in raw:
        raise DataError(
            f"dataset {ref!r}: only local paths, file:// URIs and staged datasets "
            "(datasets/<sha256>) are accepted; stage it with `janus learn PATH`"
        )
    path = Path(os.path.realpath(raw))
    if not under_roots(path, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise DataError(
            f"dataset {ref!r} is outside the allowed dataset roots ({allowed}); move it there, "
            "add its folder to JANUS_DATASET_ROOTS, or let `janus learn` stage it in the store"
        )
    yield path


@contextlib.contextmanager
def open_new_classes(
    path: Path,
    known: Sequence[str],
    *,
    image_size: int,
    min_per_class: int,
    max_bytes: int,
    shown: str = "",
) -> Iterator[Batch]:
    """Opens a batch to stream at the model's side (`learner.data.open_batch`: every image's
    header checked, pixels decoded when read) and checks it brings only new classes, each with
    enough images."""
    where = shown or str(path)
    try:
        with open_batch(path, image_size=image_size, max_bytes=max_bytes) as batch:
            _check_classes(batch, known, min_per_class)
            yield batch
    except DataError as err:
        raise DataError(f"dataset {where}: {err}") from None


def _check_classes(batch: Batch, known: Sequence[str], min_per_class: int) -> None:
    for name in batch.class_names:
        try:
            plain_text(name)
        except ValueError as err:
            raise DataError(f"class name {name!r}: {err}; rename it") from None
        if len(name) > 200:
            raise DataError(f"class name {name[:40]!r}… is over 200 characters")
    repeated = sorted(set(batch.class_names) & set(known))
    if repeated:
        raise DataError(
            f"classes {repeated} are already learned by the parent version; "
            "a task must bring only new classes (class-incremental): rename or drop those folders"
        )
    few = {name: n for name, n in batch.counts().items() if n < min_per_class}
    if few:
        raise DataError(
            f"classes {few} have fewer than {min_per_class} images "
            "(some are held out to check the new version); add images to them"
        )
