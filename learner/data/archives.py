"""Safe extraction of zip and tar archives of a class-folder tree.

Every member header is checked before anything is written: no absolute paths, no `..`, no links
that leave the folder, no special files, at most `max_members` members and `max_bytes` unpacked
(also enforced while writing, in case a header lies). Links inside the folder become copies.
"""

from __future__ import annotations

import posixpath
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from learner.data.batch import DataError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")
IGNORED_NAMES = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:(/|$)")  # "C:/x" in a member name is absolute on Windows


def visible(name: str) -> bool:
    """Whether a file or folder name counts (not hidden, not an OS's litter)."""
    return not name.startswith(".") and name not in IGNORED_NAMES


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


def extract_archive(archive: Path, dest: Path, *, max_bytes: int, max_members: int) -> None:
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


def archive_root(dest: Path) -> Path:
    """Descends through one wrapping top-level folder, if the archive has one."""
    entries = [p for p in dest.iterdir() if visible(p.name)]
    if len(entries) == 1 and entries[0].is_dir():
        inner = [p for p in entries[0].iterdir() if visible(p.name)]
        if any(p.is_dir() for p in inner):
            return entries[0]
    return dest
