"""The version store of DESIGN.md §4: immutable, verified versions, a serving pointer, an audit log.

Layout under the root (local folder, `file://`, `s3://bucket/prefix`, `memory://`):

    store.json                   marks the folder as a store (layout version)
    versions/<id>/manifest.json  the manifest, written last; a folder without one is invisible
    versions/<id>/<file>         the version's files (safetensors, model.onnx)
    refs/serving                 the serving version id, replaced atomically
    log/serving.jsonl            append-only audit of serving changes
    ids/<id>                     id reservations (who publishes it); ids are never reused
    keys/<key>                   idempotency key -> version id
    refs/shadow                  the version shadowing the serving one, and on what share of traffic
    refs/aliases/<name>          a name for a version (`aliases.py`), log/aliases.jsonl its changes
    evalsets/<sha256>.*          evaluation sets: images kept to evaluate candidates (`evalsets.py`)
    quarantine/<id>              a version set aside because it failed to load, and why
    loading/<id>/<token>         a service process loading that version (its owner), while it does
    staging/<id>-<token>/        local disk only: versions being written
    locks/                       short metadata locks (`publish`, `serving`)

Publishing reserves the next id (`v0001`, `v0002`, …) and claims the idempotency key under the
`publish` lock (`_reservation`); the files are written and verified outside the lock and committed
in one step (rename on disk, manifest last on object stores). A publish killed at any point leaves
no visible version; its leftovers are removed the next time any process opens the store (owner
dead on this host), or once older than `StoreSettings.stale_after_s` (owner on another host).

Serving changes (`_pointer`) take the `serving` lock, append the audit entry, then replace the
pointer: the log is written ahead, so every pointer value the store ever held is in it.

This module is the façade: reading, publishing, and the serving changes, with their checks.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from adapters_store import paths
from adapters_store._backend import VERSIONS, Backend, LocalBackend, ObjectBackend
from adapters_store._crash import crash_point
from adapters_store._owner import Owner, parse
from adapters_store._pointer import Action, ServingPointer, was_served
from adapters_store._reservation import Reservations
from adapters_store.aliases import SERVING, AliasEntry, Aliases, check_alias
from adapters_store.audit import AuditEntry, Reason
from adapters_store.errors import (
    IntegrityError,
    InvalidManifest,
    InvalidName,
    NotFound,
    Quarantined,
    Rejected,
    StoreBusy,
    StoreError,
    StoreNotFound,
)
from adapters_store.evalsets import EvalSets
from adapters_store.manifest import (
    FileEntry,
    Manifest,
    ManifestDraft,
    Text,
    VersionId,
    decode_manifest,
    encode_manifest,
)
from adapters_store.settings import StoreSettings, default_store_uri
from adapters_store.tensors import FileContent, decode_tensors, encode_file

MARKER = "store.json"

_LAYOUT = {"layout": "janus-version-store", "schema_version": 1}
_ACTOR: TypeAdapter[str] = TypeAdapter(Text)
_REASON: TypeAdapter[str] = TypeAdapter(Reason)


QUARANTINE = "quarantine"
LOADING = "loading"
SHADOW = "refs/shadow"


class Shadow(BaseModel):
    """`refs/shadow`: which version shadows the serving one, on what share of classify traffic."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: VersionId
    fraction: float = Field(gt=0, le=1, description="share of classify requests mirrored")
    actor: Text
    reason: Reason = ""
    since: AwareDatetime


LoadCheck = Callable[[str, str], "str | None"]
"""(store uri, version) → why the version does not load, or None (`service.runtime`)."""


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
        self.settings = settings or StoreSettings.from_env()
        self._ids = Reservations(backend, self.settings, self._is_committed)
        self._pointer = ServingPointer(backend, self.settings)
        self.aliases = Aliases(backend, self.settings)
        self.evalsets = EvalSets(backend)
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
        claim = self._ids.claim(paths.check_key(key))
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

    def stored_files(self, version_id: str) -> list[str]:
        """Names of the files stored in a version's folder (for `verify`: strays show here)."""
        return self._backend.listdir(paths.rel(VERSIONS, paths.check_version_id(version_id)))

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
            version_id, taken = self._ids.reserve(owner, key)
            existing = self.get(version_id) if taken else None
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
                self._ids.abandon(version_id, key)
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

    # -- serving -------------------------------------------------------------------------

    def serving(self) -> str | None:
        """The id of the serving version, or None before the first activation."""
        return self._pointer.current()

    def activate(
        self,
        version_id: str,
        *,
        actor: str | None = None,
        reason: str = "",
        force: bool = False,
        test_load: LoadCheck | None = None,
    ) -> AuditEntry:
        """Makes a (verified) version the serving one; moves the pointer, copies nothing.

        A quarantined version is refused unless `force`, which also clears its quarantine. With
        `test_load` (the caller's: the store knows no model code), a version that does not load
        is quarantined and refused before the pointer moves; `force` skips the test.
        """
        actor, reason = self._check_actor(actor, reason)
        self.verify_version(paths.check_version_id(version_id))
        return self._serve(version_id, "activate", actor, reason, force, test_load)

    def rollback(
        self,
        to: str | None = None,
        *,
        actor: str | None = None,
        reason: str = "",
        force: bool = False,
    ) -> AuditEntry:
        """Serves `to`, or else the version that served before the current one.

        Without `to`, the previous version is the `from` of the last audit entry that made the
        current version serve, so two rollbacks in a row swap back (like `kubectl rollout undo`).
        """
        actor, reason = self._check_actor(actor, reason)
        target = self._pointer.previous() if to is None else paths.check_version_id(to)
        self.verify_version(target)
        return self._serve(target, "rollback", actor, reason, force, None)

    def _serve(
        self,
        version_id: str,
        action: Action,
        actor: str,
        reason: str,
        force: bool,
        test_load: LoadCheck | None,
    ) -> AuditEntry:
        """Moves the pointer to a verified version: refused if the gate rejected it (and it never
        served; then `force` needs a reason), if quarantined or (with `test_load`) if it does not
        load, unless `force`, which also clears its quarantine."""
        fix = f"`janus activate {version_id} --force --reason WHY` (API: `force`) serves it anyway"
        rejected = self.get(version_id).rejected
        if rejected is not None and self.was_served(version_id):
            rejected = None  # someone already chose to serve it
        if force and rejected is not None and not reason.strip():
            raise InvalidManifest(
                f"forcing {version_id} past the promotion gate needs a reason (--reason WHY) for "
                "the audit log"
            )
        if not force and rejected is not None:
            raise Rejected(f"{version_id} was rejected by the promotion gate: {rejected}; {fix}")
        if not force:
            quarantined = self.quarantined().get(version_id)
            if quarantined is not None:
                raise Quarantined(f"{version_id} is quarantined: {quarantined}; {fix}")
            problem = None if test_load is None else test_load(self.uri, version_id)
            if problem is not None:
                self.quarantine(version_id, problem)
                raise Quarantined(f"{problem}; it is quarantined and nothing changed; {fix}")
        entry = self._pointer.move(version_id, action, actor, reason, forced=force)
        if force:
            self.release(version_id)
        return entry

    def was_served(self, version_id: str) -> bool:
        """Whether the serving pointer ever named `version_id`."""
        return was_served(self.history(), self.serving(), version_id)

    def record_rejection(self, version_id: str, *, actor: str | None = None, reason: str) -> None:
        """Writes the gate's rejection of a version to the serving log (once; nothing moves)."""
        actor, reason = self._check_actor(actor, reason)
        version_id = paths.check_version_id(version_id)
        if any(e.action == "reject" and e.to == version_id for e in self.history()):
            return
        self._pointer.record_rejection(version_id, actor, reason)

    # -- shadow ------------------------------------------------------------------------------

    def shadow(self) -> Shadow | None:
        """The version that shadows the serving one, if any (`refs/shadow`)."""
        try:
            raw = self._backend.read(SHADOW)
        except FileNotFoundError:
            return None
        try:
            return Shadow.model_validate_json(raw)
        except ValidationError as err:
            raise IntegrityError(
                None, SHADOW, f"does not parse ({err.error_count()} errors)"
            ) from None

    def set_shadow(
        self,
        version_id: str | None,
        fraction: float = 0.1,
        *,
        actor: str | None = None,
        reason: str = "",
    ) -> Shadow | None:
        """Mirrors `fraction` of live classify traffic to a (verified) version, off the request
        path, to count how often it agrees with the serving one; None stops shadowing."""
        actor, reason = self._check_actor(actor, reason)
        if version_id is None:
            self._backend.delete(SHADOW)
            return None
        self.verify_version(paths.check_version_id(version_id))
        try:
            shadow = Shadow(
                version=version_id,
                fraction=fraction,
                actor=actor,
                reason=reason,
                since=datetime.now(UTC),
            )
        except ValidationError as err:
            raise InvalidManifest(f"shadow rejected: {err}") from None
        self._backend.write(SHADOW, shadow.model_dump_json().encode())
        return shadow

    # -- aliases -----------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """The version id a reference names: an id, `serving`, or an alias."""
        if paths.VERSION_ID.fullmatch(ref) is not None:
            return self.get(ref).id
        if check_alias(ref) == SERVING:
            current = self.serving()
            if current is None:
                raise NotFound(f"nothing serves in store {self.uri} yet")
            return current
        version = self.aliases.get(ref)
        if version is None:
            raise NotFound(f"there is no alias {ref!r}; set one with `janus alias set {ref} ID`")
        return version

    def set_alias(
        self, name: str, version_id: str | None, *, actor: str | None = None, reason: str = ""
    ) -> AliasEntry:
        """Points alias `name` at a (verified) version, or removes it (`version_id` None)."""
        actor, reason = self._check_actor(actor, reason)
        if version_id is not None:
            self.verify_version(paths.check_version_id(version_id))
        return self.aliases.move(name, version_id, actor, reason)

    # -- quarantine and loads --------------------------------------------------------------

    def quarantine(self, version_id: str, reason: str) -> None:
        """Sets a version aside: it failed to load (corrupt, unloadable, or its load ended the
        processes that tried). Services skip it when they fall back; `activate --force` clears."""
        record = {
            "reason": reason[:2000],
            "time": datetime.now(UTC).isoformat(),
            "host": socket.gethostname(),
        }
        path = paths.rel(QUARANTINE, paths.check_version_id(version_id))
        self._backend.write(path, json.dumps(record).encode())

    def quarantined(self) -> dict[str, str]:
        """Quarantined version ids and why."""
        out = {}
        for name in self._backend.listdir(QUARANTINE):
            if paths.VERSION_ID.fullmatch(name):
                try:
                    out[name] = str(
                        json.loads(self._backend.read(paths.rel(QUARANTINE, name)))["reason"]
                    )
                except (FileNotFoundError, ValueError, KeyError, TypeError):
                    out[name] = "unreadable quarantine record"
        return out

    def release(self, version_id: str) -> None:
        """Clears a version's quarantine (no error if it has none)."""
        self._backend.delete(paths.rel(QUARANTINE, paths.check_version_id(version_id)))

    def begin_load(self, version_id: str) -> str:
        """Records that this process starts loading a version; returns the record's token."""
        owner = Owner.me()
        path = paths.rel(LOADING, paths.check_version_id(version_id), owner.token)
        self._backend.write(path, owner.model_dump_json().encode())
        return owner.token

    def end_load(self, version_id: str, token: str) -> None:
        """The load that `begin_load` recorded ended, well or not (its process lives on)."""
        self._backend.delete(paths.rel(LOADING, paths.check_version_id(version_id), token))

    def crashed_loads(self, version_id: str, *, forget: bool = False) -> int:
        """Loads of a version whose process died while loading (their records remain, owner
        gone: same process space and pid dead, or older than `settings.stale_after_s`);
        `forget` removes those records (the version has since loaded: they were not its fault)."""
        version_id = paths.check_version_id(version_id)
        crashed = 0
        for name in self._backend.listdir(paths.rel(LOADING, version_id)):
            path = paths.rel(LOADING, version_id, name)
            try:
                owner = parse(Owner, self._backend.read(path))
            except FileNotFoundError:
                continue
            if owner is None or not owner.alive(self.settings.stale_after_s):
                crashed += 1
                if forget:
                    self._backend.delete(path)
        return crashed

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

    def _activate_unless_served(
        self, version_id: str, actor: str, reason: str
    ) -> AuditEntry | None:
        self.verify_version(version_id)
        return self._pointer.move_unless_served(version_id, actor, reason)

    def history(self) -> list[AuditEntry]:
        """Every change of the serving version, oldest first."""
        return self._pointer.history()

    @staticmethod
    def _check_actor(actor: str | None, reason: str) -> tuple[str, str]:
        try:
            return _ACTOR.validate_python(actor or default_actor()), _REASON.validate_python(reason)
        except ValidationError as err:
            raise InvalidManifest(f"actor or reason rejected: {err}") from None

    # -- maintenance ---------------------------------------------------------------------

    def clean_staging(self, stale_after_s: float | None = None) -> list[str]:
        """Removes what abandoned publishes left behind; returns the removed paths.

        A publish is abandoned when its process is gone (same host) or, for a process on another
        host, when it started more than `stale_after_s` ago (default `settings.stale_after_s`).
        Cheap when there is nothing to clean: the lock is taken only if something is found.
        """
        max_age = self.settings.stale_after_s if stale_after_s is None else stale_after_s
        return self._ids.clean(max_age)


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
