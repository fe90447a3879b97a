"""The version store of DESIGN.md §4: immutable, verified versions, a serving pointer, an audit log.

Layout under the root (local folder, `file://`, `s3://bucket/prefix`, `memory://`):

    store.json                   marks the folder as a store (layout version)
    versions/<id>/manifest.json  the manifest, written last; a folder without one is invisible
    versions/<id>/<file>         the version's files (safetensors, model.onnx)
    refs/serving                 the serving version id, replaced atomically
    log/serving.jsonl            append-only audit of serving changes
    ids/<id>                     id reservations (who publishes it); ids are never reused
    keys/<key>                   idempotency key -> version id
    staging/<id>-<token>/        local disk only: versions being written
    locks/                       short metadata locks (`publish`, `serving`)

Publishing takes the `publish` lock only to look up the idempotency key and reserve the next id
(`v0001`, `v0002`, …, created exclusively, so two publishers never get the same id); the files
are written and verified outside the lock and committed in one step (rename on disk, manifest
last on object stores). A publish killed at any point leaves no visible version; its leftovers
are removed the next time any process opens the store (owner dead on this host), or once older
than `StoreSettings.stale_after_s` (owner on another host).

Serving changes take the `serving` lock, append the audit entry, then replace the pointer: the
log is written ahead, so every pointer value the store ever held is in it.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pydantic import TypeAdapter, ValidationError

from adapters_store import paths
from adapters_store._backend import STAGING, VERSIONS, Backend, LocalBackend, ObjectBackend
from adapters_store._crash import crash_point
from adapters_store._owner import KeyClaim, Owner, Reservation, parse
from adapters_store.audit import LOG, SERVING, AuditEntry, Reason, complete_prefix, decode_log
from adapters_store.config import StoreSettings, default_store_uri
from adapters_store.errors import (
    IntegrityError,
    InvalidManifest,
    InvalidName,
    NotFound,
    NothingToRollBack,
    StoreBusy,
    StoreError,
    StoreNotFound,
)
from adapters_store.manifest import (
    FileEntry,
    Manifest,
    ManifestDraft,
    Text,
    decode_manifest,
    encode_manifest,
)
from adapters_store.tensors import FileContent, decode_tensors, encode_file
from adapters_store.verify import VerifyReport, verify_store

MARKER = "store.json"

IDS = "ids"
KEYS = "keys"
_LAYOUT = {"layout": "janus-version-store", "schema_version": 1}
_ACTOR: TypeAdapter[str] = TypeAdapter(Text)
_REASON: TypeAdapter[str] = TypeAdapter(Reason)


def default_actor() -> str:
    """`user@host` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class VersionStore:
    """A version store; open one with `open_store(uri)`."""

    def __init__(self, backend: Backend, settings: StoreSettings | None = None) -> None:
        self._backend = backend
        self.settings = settings or StoreSettings()
        self._manifests: dict[str, Manifest] = {}  # versions are immutable: safe to cache

    @property
    def uri(self) -> str:
        return self._backend.uri

    def __repr__(self) -> str:
        return f"VersionStore({self.uri!r})"

    # -- reading -------------------------------------------------------------------------

    def version_ids(self) -> list[str]:
        """Ids of all complete versions, oldest first."""
        return sorted(self._backend.committed(), key=paths.version_number)

    def versions(self) -> list[Manifest]:
        """Manifests of all complete versions, oldest first."""
        return [self.get(version_id) for version_id in self.version_ids()]

    def get(self, version_id: str) -> Manifest:
        """The manifest of a version (its self-digest checked); `NotFound` if there is none."""
        paths.check_version_id(version_id)
        if version_id not in self._manifests:
            try:
                raw = self._backend.read(paths.rel(VERSIONS, version_id, paths.MANIFEST))
            except FileNotFoundError:
                raise NotFound(
                    f"version {version_id} does not exist in store {self.uri}; "
                    "list versions with `janus versions`"
                ) from None
            self._manifests[version_id] = decode_manifest(raw, version_id)
        return self._manifests[version_id]

    def _is_committed(self, version_id: str) -> bool:
        try:
            self.get(version_id)
        except NotFound:
            return False
        return True

    def lineage(self, version_id: str) -> list[Manifest]:
        """The version, its parent, its parent's parent, … up to the root."""
        chain = [self.get(version_id)]
        while chain[-1].parent is not None:
            if any(m.id == chain[-1].parent for m in chain):
                raise IntegrityError(chain[-1].id, paths.MANIFEST, "the lineage has a cycle")
            chain.append(self.get(chain[-1].parent))
        return chain

    def find_by_key(self, key: str) -> Manifest | None:
        """The version published under an idempotency key, if it is complete."""
        claim = self._read_claim(paths.check_key(key))
        if claim is None or not self._is_committed(claim.id):
            return None
        manifest = self.get(claim.id)
        return manifest if manifest.idempotency_key == key else None

    def read_bytes(self, version_id: str, name: str) -> bytes:
        """A file of a version, checked against the size and sha256 in its manifest."""
        manifest = self.get(version_id)
        paths.check_file_name(name)
        entry = manifest.files.get(name)
        if entry is None:
            raise NotFound(
                f"version {version_id} has no file {name!r}; it has {sorted(manifest.files)}"
            )
        try:
            data = self._backend.read(paths.rel(VERSIONS, version_id, name))
        except FileNotFoundError:
            raise IntegrityError(version_id, name, "the file is missing") from None
        if len(data) != entry.size:
            raise IntegrityError(version_id, name, f"size {len(data)}, manifest says {entry.size}")
        digest = _sha256(data)
        if digest != entry.sha256:
            raise IntegrityError(version_id, name, f"sha256 {digest}, manifest says {entry.sha256}")
        return data

    def read_tensors(self, version_id: str, name: str) -> dict[str, np.ndarray]:
        """The named arrays of a version's `.safetensors` file, verified first."""
        if not name.endswith(".safetensors"):
            raise InvalidName(f"{name!r} is not a safetensors file; read it with `read_bytes`")
        return decode_tensors(version_id, name, self.read_bytes(version_id, name))

    def verify_version(self, version_id: str) -> Manifest:
        """Reads and checks every file of a version; `IntegrityError` names the first bad one."""
        manifest = self.get(version_id)
        for name in manifest.files:
            self.read_bytes(version_id, name)
        return manifest

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self,
        files: Mapping[str, FileContent],
        draft: ManifestDraft | Mapping[str, Any],
        *,
        activate: bool = False,
        actor: str | None = None,
        reason: str = "",
    ) -> Manifest:
        """Publishes a new immutable version and returns its manifest.

        Args:
            files: File name -> bytes, or -> dict of numpy arrays for a `.safetensors` file.
            draft: The manifest fields (a `ManifestDraft` or a dict of its fields).
            activate: Also make the new version the serving one.
            actor: Who activates (default `user@host`); reason: why.

        If `draft.idempotency_key` names a version already published, that version is returned
        and nothing is written (with `activate`, it is activated unless it served before, so a
        retry finishes an interrupted job without undoing a later rollback); if another live
        process is publishing under the same key, this call waits for it (up to
        `settings.wait_s`) and returns its version.
        """
        try:
            draft = ManifestDraft.model_validate(draft)
        except ValidationError as err:
            raise InvalidManifest(f"manifest fields rejected: {err}") from None
        if not files:
            raise InvalidManifest("publish needs at least one file (e.g. adapter.safetensors)")
        blobs = {paths.check_file_name(name): encode_file(name, c) for name, c in files.items()}
        entries = {n: FileEntry(sha256=_sha256(b), size=len(b)) for n, b in blobs.items()}
        self._check_parent(draft)
        try:  # everything but the id can be checked before anything is written
            Manifest.build(draft, "v0000", datetime.now(UTC), entries)
        except ValueError as err:
            raise InvalidManifest(f"manifest fields rejected: {err}") from None
        who = self._check_actor(actor, reason) if activate else None
        key = draft.idempotency_key
        owner = Owner.me()
        existing = self.find_by_key(key) if key else None
        if existing is None:
            version_id, existing = self._reserve(owner, key)
        if existing is not None:  # a retry: finish what the first attempt may not have done
            if who is not None:
                self._activate_unless_served(existing.id, *who)
            return existing
        try:
            staging = self._backend.staging_dir(version_id, owner.token)
            for name, data in blobs.items():
                self._backend.write(f"{staging}/{name}", data)
            crash_point("after_tensors")
            for name in blobs:
                if _sha256(self._backend.read(f"{staging}/{name}")) != entries[name].sha256:
                    raise IntegrityError(
                        version_id, name, "read-back differs from what was written"
                    )
            manifest = Manifest.build(draft, version_id, datetime.now(UTC), entries)
            self._backend.commit(staging, version_id, encode_manifest(manifest))
        except BaseException:
            with contextlib.suppress(Exception), self._backend.lock("publish", self.settings):
                self._abandon(version_id, key)
            raise
        self._manifests[version_id] = manifest
        if who is not None:  # a retry under the same key may have activated it already
            self._activate_unless_served(version_id, *who)
        return manifest

    def _check_parent(self, draft: ManifestDraft) -> None:
        if draft.parent is None:
            return
        try:
            parent = self.get(draft.parent)
        except NotFound:
            raise InvalidManifest(
                f"parent {draft.parent} does not exist in store {self.uri}; "
                "pick one from `janus versions`"
            ) from None
        if parent.backbone != draft.backbone:
            raise InvalidManifest(
                f"backbone {draft.backbone.name} ({draft.backbone.weights_sha256[:12]}…) differs "
                f"from parent {parent.id}'s {parent.backbone.name} "
                f"({parent.backbone.weights_sha256[:12]}…); an adapter only fits its backbone"
            )

    def _read_claim(self, key: str) -> KeyClaim | None:
        try:
            return parse(KeyClaim, self._backend.read(paths.rel(KEYS, key)))
        except FileNotFoundError:
            return None

    def _reserve(self, owner: Owner, key: str | None) -> tuple[str, Manifest | None]:
        """Reserves the next id (and claims `key`), or returns the version `key` already names."""
        deadline = time.monotonic() + self.settings.wait_s
        while True:
            with self._backend.lock("publish", self.settings):
                claim = self._read_claim(key) if key else None
                if claim is not None and self._is_committed(claim.id):
                    return "", self.get(claim.id)
                if claim is None or not claim.owner.alive(self.settings.stale_after_s):
                    version_id = self._next_id(owner)
                    if key:
                        record = KeyClaim(id=version_id, owner=owner)
                        self._backend.write(paths.rel(KEYS, key), record.model_dump_json().encode())
                    return version_id, None
            if time.monotonic() > deadline:
                raise StoreBusy(
                    f"idempotency key {key!r} is being published as {claim.id} by pid "
                    f"{claim.owner.pid} on {claim.owner.host}; retry when it has finished"
                )
            time.sleep(0.1)

    def _next_id(self, owner: Owner) -> str:
        taken = [paths.version_number(n) for n in self._backend.listdir(IDS) if _is_id(n)]
        taken += [paths.version_number(n) for n in self._backend.committed()]
        number = max(taken, default=0) + 1
        record = Reservation(owner=owner).model_dump_json().encode()
        while not self._backend.create(paths.rel(IDS, paths.format_version_id(number)), record):
            number += 1
        return paths.format_version_id(number)

    def _abandon(self, version_id: str, key: str | None) -> list[str]:
        """Removes an unfinished publish: its files, its key claim; marks its id abandoned."""
        removed = self._backend.abandon(version_id)
        if key:
            claim = self._read_claim(key)
            if claim is not None and claim.id == version_id:
                self._backend.delete(paths.rel(KEYS, key))
                removed.append(paths.rel(KEYS, key))
        record = Reservation(owner=Owner.me(), abandoned=True).model_dump_json().encode()
        self._backend.write(paths.rel(IDS, version_id), record)
        return removed

    # -- serving -------------------------------------------------------------------------

    def serving(self) -> str | None:
        """The id of the serving version, or None before the first activation."""
        try:
            raw = self._backend.read(SERVING)
        except FileNotFoundError:
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if paths.VERSION_ID.fullmatch(text) is None:
            raise IntegrityError(None, SERVING, f"does not hold a version id ({text[:40]!r})")
        return text

    def activate(
        self, version_id: str, *, actor: str | None = None, reason: str = ""
    ) -> AuditEntry:
        """Makes a (verified) version the serving one; moves the pointer, copies nothing."""
        actor, reason = self._check_actor(actor, reason)
        return self._set_serving(paths.check_version_id(version_id), "activate", actor, reason)

    def rollback(
        self, to: str | None = None, *, actor: str | None = None, reason: str = ""
    ) -> AuditEntry:
        """Serves `to`, or else the version that served before the current one.

        Without `to`, the previous version is the `from` of the last audit entry that made the
        current version serve, so two rollbacks in a row swap back (like `kubectl rollout undo`).
        """
        actor, reason = self._check_actor(actor, reason)
        if to is None:
            to = self._previous()
        return self._set_serving(paths.check_version_id(to), "rollback", actor, reason)

    def _previous(self) -> str:
        current = self.serving()
        for entry in reversed(self.history()):
            if entry.to == current and entry.from_ is not None and entry.from_ != current:
                return entry.from_
        raise NothingToRollBack(
            f"no version served before {current or '(none)'} according to the audit log of "
            f"{self.uri}; name one with `janus rollback --to ID` (see `janus versions`)"
        )

    def activate_unless_served(
        self, version_id: str, *, actor: str | None = None, reason: str = ""
    ) -> AuditEntry | None:
        """Activates `version_id` unless the pointer ever named it; None when it did.

        For a retried job: it finishes an activation the first attempt did not make, but does not
        undo a rollback made since. Checked and done under the serving lock, so two retries at once
        activate once.
        """
        actor, reason = self._check_actor(actor, reason)
        return self._activate_unless_served(paths.check_version_id(version_id), actor, reason)

    def history(self) -> list[AuditEntry]:
        """Every change of the serving version, oldest first."""
        try:
            return decode_log(self._backend.read(LOG))
        except FileNotFoundError:
            return []

    @staticmethod
    def _check_actor(actor: str | None, reason: str) -> tuple[str, str]:
        try:
            return _ACTOR.validate_python(actor or default_actor()), _REASON.validate_python(reason)
        except ValidationError as err:
            raise InvalidManifest(f"actor or reason rejected: {err}") from None

    def _set_serving(
        self, version_id: str, action: Literal["activate", "rollback"], actor: str, reason: str
    ) -> AuditEntry:
        self.verify_version(version_id)
        with self._backend.lock("serving", self.settings):
            current, log = self._serving_record()
            return self._move_pointer(version_id, action, actor, reason, current, log)

    def _activate_unless_served(
        self, version_id: str, actor: str, reason: str
    ) -> AuditEntry | None:
        """`_set_serving(activate)`, or None if the pointer ever named `version_id`, decided
        under the same lock so that two retries at once activate once."""
        self.verify_version(version_id)
        with self._backend.lock("serving", self.settings):
            current, log = self._serving_record()
            if _was_served(decode_log(log), current, version_id):
                return None
            return self._move_pointer(version_id, "activate", actor, reason, current, log)

    def _serving_record(self) -> tuple[str | None, bytes]:
        """The pointer (None if unset or damaged) and the raw audit log; under the serving lock."""
        try:
            current = self.serving()
        except IntegrityError:  # a damaged pointer: activating is how it gets repaired
            current = None
        try:
            log = self._backend.read(LOG)
        except FileNotFoundError:
            log = b""
        return current, log

    def _move_pointer(
        self,
        version_id: str,
        action: Literal["activate", "rollback"],
        actor: str,
        reason: str,
        current: str | None,
        log: bytes,
    ) -> AuditEntry:
        """Appends the audit entry, then moves the pointer (write-ahead); under the serving lock."""
        entry = AuditEntry(
            time=datetime.now(UTC),
            action=action,
            actor=actor,
            reason=reason,
            from_=current,
            to=version_id,
        )
        if not log.endswith(b"\n") and log:  # a crash tore the last append: drop it
            self._backend.write(LOG, complete_prefix(log))
        self._backend.append(LOG, entry.to_line())
        crash_point("before_pointer")
        self._backend.write(SERVING, f"{version_id}\n".encode())
        return entry

    # -- maintenance ---------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Checks every version's manifest and files, the serving pointer and the audit log."""
        return verify_store(self, self._backend)

    def clean_staging(self, stale_after_s: float | None = None) -> list[str]:
        """Removes what abandoned publishes left behind; returns the removed paths.

        A publish is abandoned when its process is gone (same host) or, for a process on another
        host, when it started more than `stale_after_s` ago (default `settings.stale_after_s`).
        Cheap when there is nothing to clean: the lock is taken only if something is found.
        """
        max_age = self.settings.stale_after_s if stale_after_s is None else stale_after_s
        removed = self._backend.sweep()
        if not self._leftovers(max_age):
            return removed
        with self._backend.lock("publish", self.settings):  # no id is reserved meanwhile
            dead, live = self._reservations(max_age)
            if dead:
                claims = {}
                for key in self._backend.listdir(KEYS):
                    claim = self._read_claim(key)
                    if claim is not None and claim.id in dead:
                        claims[claim.id] = key
                for version_id in dead:
                    removed += self._abandon(version_id, claims.get(version_id))
            for name in self._staged(live):
                self._backend.delete(paths.rel(STAGING, name))
                removed.append(paths.rel(STAGING, name))
        return removed

    def _reservations(self, max_age: float) -> tuple[list[str], set[str]]:
        """Uncommitted reserved ids: those of dead publishers, and those still being published."""
        committed = set(self._backend.committed())
        dead, live = [], set()
        for name in self._backend.listdir(IDS):
            if not _is_id(name) or name in committed:
                continue
            try:
                reservation = parse(Reservation, self._backend.read(paths.rel(IDS, name)))
            except FileNotFoundError:
                continue
            if reservation is None or not reservation.owner.alive(max_age):
                if reservation is None or not reservation.abandoned:
                    dead.append(name)
            elif not reservation.abandoned:
                live.add(name)
        return dead, live

    def _staged(self, live: set[str]) -> list[str]:
        """Local staging folders that belong to no publish in progress."""
        if not self._backend.local:
            return []
        return [n for n in self._backend.listdir(STAGING) if n.split("-", 1)[0] not in live]

    def _leftovers(self, max_age: float) -> bool:
        dead, live = self._reservations(max_age)
        return bool(dead or self._staged(live))


def _is_id(name: str) -> bool:
    return paths.VERSION_ID.fullmatch(name) is not None


def open_store(
    uri: str | os.PathLike[str] | None = None,
    *,
    create: bool = True,
    clean: bool = True,
    settings: StoreSettings | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> VersionStore:
    """Opens the store at `uri` (a path, `file://…`, `s3://bucket/prefix`, `memory://…`).

    Args:
        uri: Default `$JANUS_STORE`, else `$JANUS_DATA_DIR/store`. `memory://` lives in this
            process only (tests). Object stores must support conditional writes
            (`If-None-Match`/`If-Match`: AWS S3, MinIO, moto).
        create: Create an empty store if there is none; else raise `StoreNotFound`.
        clean: Remove leftovers of abandoned publishes (best effort).
        storage_options: Passed to the fsspec filesystem (e.g. `endpoint_url` for S3; the
            `AWS_*` environment variables work too).
    """
    text = default_store_uri() if uri is None else os.fspath(uri)
    backend: Backend
    if "://" not in text:
        backend = _local(os.path.abspath(os.path.expanduser(text)), text, create)
    else:
        fs, root = url_to_fs(text, **dict(storage_options or {}))
        if isinstance(fs, LocalFileSystem):
            backend = _local(root, text, create)
        else:
            backend = ObjectBackend(fs, root, text)
    try:
        marker = json.loads(backend.read(MARKER))
    except FileNotFoundError:
        if not create:
            raise StoreNotFound(
                f"no version store at {text}; check --store or JANUS_STORE, or publish a "
                "first version (publishing creates the store)"
            ) from None
        try:
            backend.create(MARKER, json.dumps(_LAYOUT).encode())
        except FileNotFoundError as err:
            raise StoreNotFound(
                f"cannot create a store at {text} ({err}); create the bucket first"
            ) from None
        marker = _LAYOUT
    except ValueError:
        marker = None
    if marker != _LAYOUT:
        raise StoreError(f"{text}/{MARKER} is not a janus version store marker; check --store")
    store = VersionStore(backend, settings)
    if clean:  # best effort: with read-only access or a busy lock, the next open cleans
        with contextlib.suppress(PermissionError, StoreBusy):
            store.clean_staging()
    return store


def _local(root: str, uri: str, create: bool) -> LocalBackend:
    if not os.path.isdir(root):
        if not create:
            raise StoreNotFound(
                f"no version store at {uri} (folder missing); check --store or JANUS_STORE"
            )
        os.makedirs(root, exist_ok=True)
    return LocalBackend(root, uri)


def _was_served(entries: list[AuditEntry], pointer: str | None, version_id: str) -> bool:
    """Whether the pointer ever named `version_id` (an interrupted activation does not count).

    The log is written ahead of the pointer, so an entry took effect if the next entry starts from
    its target, or, for the last entry, if the pointer holds its target.
    """
    ends = [e.from_ for e in entries[1:]] + [pointer]
    return any(e.to == version_id == end for e, end in zip(entries, ends, strict=False))
