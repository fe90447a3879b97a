"""The serving pointer (`refs/serving`) and its audit log (`log/serving.jsonl`).

Every change takes the store's `serving` lock, appends the audit entry, then replaces the pointer:
the log is written ahead, so every value the pointer ever held is in it. A crash between the two
leaves an entry whose target never served; `was_served` tells the two apart.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from adapters_store import paths
from adapters_store._backend import Backend
from adapters_store._crash import crash_point
from adapters_store.audit import LOG, SERVING, AuditEntry, append_line, decode_log
from adapters_store.errors import IntegrityError, NothingToRollBack
from adapters_store.settings import StoreSettings

Action = Literal["activate", "rollback"]
"""The entries that move the pointer; `record_rejection` writes the one that does not."""


class ServingPointer:
    """Reads and moves one store's serving pointer."""

    def __init__(self, backend: Backend, settings: StoreSettings) -> None:
        self._backend, self.settings = backend, settings

    def current(self) -> str | None:
        """The serving version id, or None before the first activation."""
        try:
            raw = self._backend.read(SERVING)
        except FileNotFoundError:
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if paths.VERSION_ID.fullmatch(text) is None:
            raise IntegrityError(None, SERVING, f"does not hold a version id ({text[:40]!r})")
        return text

    def history(self) -> list[AuditEntry]:
        """Every change of the serving version, oldest first."""
        try:
            return decode_log(self._backend.read(LOG))
        except FileNotFoundError:
            return []

    def previous(self) -> str:
        """The version that served before the current one (the `from` of the last entry that made
        the current version serve), so two rollbacks in a row swap back."""
        current = self.current()
        for entry in reversed(moves(self.history())):
            if entry.to == current and entry.from_ is not None and entry.from_ != current:
                return entry.from_
        raise NothingToRollBack(
            f"no version served before {current or '(none)'} according to the audit log of "
            f"{self._backend.uri}; name one with `janus rollback --to ID` (see `janus versions`)"
        )

    def move(
        self, version_id: str, action: Action, actor: str, reason: str, forced: bool = False
    ) -> AuditEntry:
        """Serves `version_id` (already verified by the caller)."""
        with self._backend.lock("serving", self.settings):
            current, log = self._record()
            return self._move(version_id, action, actor, reason, current, log, forced)

    def record_rejection(self, version_id: str, actor: str, reason: str) -> AuditEntry:
        """Appends a `reject` entry (the gate kept `version_id` from serving); the pointer stays."""
        with self._backend.lock("serving", self.settings):
            current, log = self._record()
            entry = AuditEntry(
                time=datetime.now(UTC),
                action="reject",
                actor=actor,
                reason=reason,
                from_=current,
                to=version_id,
            )
            append_line(self._backend, LOG, entry.to_line(), log)
            return entry

    def move_unless_served(self, version_id: str, actor: str, reason: str) -> AuditEntry | None:
        """`move(activate)`, or None if the pointer ever named `version_id`; decided under the
        same lock, so that two retries at once activate once."""
        with self._backend.lock("serving", self.settings):
            current, log = self._record()
            if was_served(decode_log(log), current, version_id):
                return None
            return self._move(version_id, "activate", actor, reason, current, log)

    def _record(self) -> tuple[str | None, bytes]:
        """The pointer (None if unset or damaged) and the raw audit log; under the serving lock."""
        try:
            current = self.current()
        except IntegrityError:  # a damaged pointer: activating is how it gets repaired
            current = None
        try:
            log = self._backend.read(LOG)
        except FileNotFoundError:
            log = b""
        return current, log

    def _move(
        self,
        version_id: str,
        action: Action,
        actor: str,
        reason: str,
        current: str | None,
        log: bytes,
        forced: bool = False,
    ) -> AuditEntry:
        """Appends the audit entry, then moves the pointer (write-ahead); under the serving lock."""
        entry = AuditEntry(
            time=datetime.now(UTC),
            action=action,
            actor=actor,
            reason=reason,
            from_=current,
            to=version_id,
            forced=forced,
        )
        append_line(self._backend, LOG, entry.to_line(), log)
        crash_point("before_pointer")
        self._backend.write(SERVING, f"{version_id}\n".encode())
        return entry


def moves(entries: list[AuditEntry]) -> list[AuditEntry]:
    """The entries that moved the pointer (every one but the gate's rejections)."""
    return [e for e in entries if e.moved]


def was_served(entries: list[AuditEntry], pointer: str | None, version_id: str) -> bool:
    """Whether the pointer ever named `version_id` (an interrupted activation does not count).

    The log is written ahead of the pointer, so an entry took effect if the next entry starts from
    its target, or, for the last entry, if the pointer holds its target.
    """
    entries = moves(entries)
    ends = [e.from_ for e in entries[1:]] + [pointer]
    return any(e.to == version_id == end for e, end in zip(entries, ends, strict=False))
