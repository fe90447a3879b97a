"""Storage backends: local disk (POSIX calls) and object stores (fsspec, S3 semantics).

Both expose the same small set of operations on store-relative paths (built by `paths.rel`):
read, atomic write, exclusive create, append, list, delete, a lock, and the two-step publish of a
version (stage files, then commit). Paths are confined under the root on every call.

Local disk: a version is staged in `staging/<id>-<token>/`, fsynced, then renamed to
`versions/<id>/`; locks are `flock`s (released by the kernel when a process dies).

Object stores: there is no rename, so files are written straight to `versions/<id>/` and the
manifest is written last, with a create-if-absent condition; readers ignore folders without a
manifest. Locks are lease objects created with `If-None-Match: *`; an expired lease is taken
over with `If-Match: <etag>`, so exactly one process wins.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import os
import secrets
import time
from collections.abc import Iterator
from typing import Any

from adapters_store import paths
from adapters_store._crash import crash_point
from adapters_store._owner import Owner, parse, pid_alive, process_space
from adapters_store.errors import InvalidName, StoreBusy
from adapters_store.settings import StoreSettings

VERSIONS = "versions"
STAGING = "staging"
LOCKS = "locks"
_TMP_PREFIX = ".tmp-"


def _busy(what: str, holder: str, uri: str) -> StoreBusy:
    return StoreBusy(
        f"the {what} lock of store {uri} is held by {holder}; wait for it to finish and retry. "
        "If that process is gone, `janus clean-staging` releases abandoned work."
    )


class Backend(abc.ABC):
    """Operations on store-relative paths. Missing files raise FileNotFoundError."""

    uri: str
    local: bool

    @abc.abstractmethod
    def read(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def write(self, path: str, data: bytes) -> None:
        """Replaces `path` atomically: readers see the old or the new content, never a mix."""

    @abc.abstractmethod
    def create(self, path: str, data: bytes) -> bool:
        """Creates `path` with `data` only if absent; returns False if it exists."""

    @abc.abstractmethod
    def append(self, path: str, data: bytes) -> None:
        """Appends to `path`; the caller holds the lock that serialises writers of `path`."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names (not hidden ones) directly under `path`; empty if it does not exist."""

    @abc.abstractmethod
    def delete(self, path: str) -> None:
        """Deletes a file, or a folder with everything under it; no error if missing."""

    @abc.abstractmethod
    def committed(self) -> list[str]:
        """Ids of complete versions (those with a manifest)."""

    @abc.abstractmethod
    def lock(self, name: str, settings: StoreSettings) -> contextlib.AbstractContextManager[None]:
        """An exclusive, store-wide lock held for a few metadata operations."""

    @abc.abstractmethod
    def staging_dir(self, version_id: str, token: str) -> str:
        """Where the files of a version being published are written before the commit."""

    @abc.abstractmethod
    def commit(self, staging: str, version_id: str, manifest: bytes) -> None:
        """Makes a staged version visible, complete, in one step."""

    @abc.abstractmethod
    def abandon(self, version_id: str) -> list[str]:
        """Removes the partial files of an unfinished publish of `version_id`."""

    def sweep(self, max_age_s: float) -> list[str]:
        """Removes leftovers of dead processes outside versions (temporary files): of this
        process space's dead pids, and any older than `max_age_s` (`adapters_store._owner`)."""
        return []


class LocalBackend(Backend):
    """A store in a local (or POSIX network) folder."""

    local = True

    def __init__(self, root: str, uri: str) -> None:
        self.root = os.path.realpath(root)
        self.uri = uri

    def _abs(self, path: str) -> str:
        return paths.confine_local(self.root, path)

    def _tmp_name(self, full: str) -> str:
        name = f"{_TMP_PREFIX}{process_space()}-{os.getpid()}-{secrets.token_hex(6)}"
        return os.path.join(os.path.dirname(full), name)

    @staticmethod
    def _fsync_dir(folder: str) -> None:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _write_tmp(self, full: str, data: bytes) -> str:
        os.makedirs(os.path.dirname(full), exist_ok=True)
        tmp = self._tmp_name(full)
        with open(tmp, "xb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return tmp

    def read(self, path: str) -> bytes:
        with open(self._abs(path), "rb") as file:
            return file.read()

    def write(self, path: str, data: bytes) -> None:
        full = self._abs(path)
        os.replace(self._write_tmp(full, data), full)
        self._fsync_dir(os.path.dirname(full))

    def create(self, path: str, data: bytes) -> bool:
        full = self._abs(path)
        tmp = self._write_tmp(full, data)
        try:
            os.link(tmp, full)  # fails if `full` exists; never exposes a half-written file
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        self._fsync_dir(os.path.dirname(full))
        return True

    def append(self, path: str, data: bytes) -> None:
        full = self._abs(path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd = os.open(full, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    def listdir(self, path: str) -> list[str]:
        try:
            names = os.listdir(self._abs(path))
        except FileNotFoundError:
            return []
        return sorted(name for name in names if not name.startswith("."))

    def delete(self, path: str) -> None:
        full = self._abs(path)
        if os.path.isdir(full) and not os.path.islink(full):
            for sub in os.listdir(full):
                self.delete(f"{path}/{sub}")
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(full)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(full)

    def committed(self) -> list[str]:
        found = []
        for name in self.listdir(VERSIONS):
            if paths.VERSION_ID.fullmatch(name) is None:
                continue
            try:
                manifest = self._abs(paths.rel(VERSIONS, name, paths.MANIFEST))
            except InvalidName:  # a link out of the store: never listed, never read
                continue
            if os.path.isfile(manifest):
                found.append(name)
        return found

    @contextlib.contextmanager
    def lock(self, name: str, settings: StoreSettings) -> Iterator[None]:
        full = self._abs(paths.rel(LOCKS, f"{name}.lock"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        fd = os.open(full, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + settings.wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _busy(name, "another process", self.uri) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def staging_dir(self, version_id: str, token: str) -> str:
        staging = paths.rel(STAGING, f"{version_id}-{token}")
        os.makedirs(self._abs(staging))
        return staging

    def commit(self, staging: str, version_id: str, manifest: bytes) -> None:
        folder = self._abs(staging)
        with open(os.path.join(folder, paths.MANIFEST), "xb") as file:
            file.write(manifest)
            file.flush()
            os.fsync(file.fileno())
        self._fsync_dir(folder)
        crash_point("after_manifest")
        target = self._abs(paths.rel(VERSIONS, version_id))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        crash_point("before_rename")
        if os.path.exists(target):  # the id is reserved exclusively; this is a broken store
            raise FileExistsError(errno.EEXIST, "version folder already exists", target)
        os.rename(folder, target)
        self._fsync_dir(os.path.dirname(target))

    def abandon(self, version_id: str) -> list[str]:
        removed = []
        for name in self.listdir(STAGING):
            if name.startswith(f"{version_id}-"):
                self.delete(paths.rel(STAGING, name))
                removed.append(paths.rel(STAGING, name))
        return removed

    def sweep(self, max_age_s: float) -> list[str]:
        removed = []
        mine, now = process_space(), time.time()
        for folder, _dirs, files in os.walk(self.root):
            if os.path.relpath(folder, self.root).split(os.sep)[0] in {VERSIONS, STAGING}:
                continue
            for name in files:
                if not name.startswith(_TMP_PREFIX):
                    continue
                full = os.path.join(folder, name)
                space, _, rest = name[len(_TMP_PREFIX) :].partition("-")
                pid = rest.split("-", 1)[0]
                if space == mine and pid.isdigit():
                    gone = not pid_alive(int(pid))
                else:  # another host, container or boot: its pids are not ours to check
                    try:
                        gone = now - os.stat(full).st_mtime > max_age_s
                    except FileNotFoundError:
                        continue
                if gone:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(full)
                    removed.append(os.path.relpath(full, self.root))
        return removed


class ObjectBackend(Backend):
    """A store under a bucket prefix of an fsspec object store (S3, MinIO, memory)."""

    local = False

    def __init__(self, fs: Any, root: str, uri: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri

    def _abs(self, path: str) -> str:
        return paths.confine_object(self.root, path)

    def read(self, path: str) -> bytes:
        # from byte 0: one (ranged) GET; without a range s3fs first asks for the size (a HEAD),
        # and a missing key then costs a listing too, on every poll of the serving pointer
        data: bytes = self.fs.cat_file(self._abs(path), start=0)
        return data

    def write(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(self._abs(path), data)

    def create(self, path: str, data: bytes) -> bool:
        try:
            self.fs.pipe_file(self._abs(path), data, mode="create")
        except FileExistsError:
            return False
        return True

    def append(self, path: str, data: bytes) -> None:
        try:
            old = self.read(path)
        except FileNotFoundError:
            old = b""
        self.write(path, old + data)

    def listdir(self, path: str) -> list[str]:
        full = self._abs(path)
        self.fs.invalidate_cache(full)
        try:
            entries = self.fs.ls(full, detail=False)
        except FileNotFoundError:
            return []
        names = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in entries}
        return sorted(name for name in names if name and not name.startswith("."))

    def delete(self, path: str) -> None:
        full = self._abs(path)
        self.fs.invalidate_cache(full)
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(full, recursive=True)
        self.fs.invalidate_cache(full)

    def committed(self) -> list[str]:
        self.fs.invalidate_cache()
        found = self.fs.glob(self._abs(paths.rel(VERSIONS)) + "/*/" + paths.MANIFEST)
        names = (entry.rstrip("/").split("/")[-2] for entry in found)
        return sorted(name for name in names if paths.VERSION_ID.fullmatch(name))

    def _etag(self, full: str) -> str | None:
        self.fs.invalidate_cache(full)
        etag = self.fs.info(full).get("ETag")
        return etag if isinstance(etag, str) else None

    @contextlib.contextmanager
    def lock(self, name: str, settings: StoreSettings) -> Iterator[None]:
        path = paths.rel(LOCKS, name)
        full = self._abs(path)
        me = Owner.me()
        record = me.model_dump_json().encode()
        deadline = time.monotonic() + settings.wait_s
        while not self.create(path, record):
            try:
                etag = self._etag(full)
                holder = parse(Owner, self.read(path))
            except FileNotFoundError:
                continue
            if holder is not None and holder.alive(settings.lock_ttl_s):
                if time.monotonic() > deadline:
                    raise _busy(name, f"pid {holder.pid} on {holder.host}", self.uri)
                time.sleep(0.05)
                continue
            try:  # take over the expired lease; If-Match lets exactly one process win
                if etag is None:
                    self.write(path, record)
                else:
                    self.fs.pipe_file(full, record, IfMatch=etag)
                break
            except (FileExistsError, FileNotFoundError):
                continue
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                current = parse(Owner, self.read(path))
                if current is not None and current.token == me.token:
                    self.fs.rm_file(full)

    def staging_dir(self, version_id: str, token: str) -> str:
        return paths.rel(VERSIONS, version_id)

    def commit(self, staging: str, version_id: str, manifest: bytes) -> None:
        crash_point("before_rename")
        path = paths.rel(VERSIONS, version_id, paths.MANIFEST)
        if not self.create(path, manifest) and not self._is_ours(path, manifest):
            raise FileExistsError(errno.EEXIST, "version already has a manifest", version_id)
        crash_point("after_manifest")

    def _is_ours(self, path: str, manifest: bytes) -> bool:
        """Whether the manifest a conditional create found is the one it was writing: a retried
        PUT whose first answer was lost is refused (412) although its first try succeeded."""
        try:
            return self.read(path) == manifest
        except FileNotFoundError:
            return False

    def abandon(self, version_id: str) -> list[str]:
        folder = paths.rel(VERSIONS, version_id)
        if version_id in self.committed() or not self.listdir(folder):
            return []
        self.delete(folder)
        return [folder]
