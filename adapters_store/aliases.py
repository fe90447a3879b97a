"""Aliases: names that point at versions (`champion` → v0007), like a model registry's.

    refs/aliases/<name>    the version id the alias names, replaced atomically
    log/aliases.jsonl      every change: when, who, why, which alias, from which version, to which
                           (`to` null: the alias was removed)

`serving` is the reserved alias of the serving pointer (`refs/serving`, moved by activate and
rollback, with its own log); an alias never moves what serves. Changes take the store's `aliases`
lock and write the log entry first.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from adapters_store import paths
from adapters_store._backend import Backend
from adapters_store.audit import Reason, append_line, decode_lines
from adapters_store.errors import IntegrityError, InvalidName, NotFound
from adapters_store.manifest import Text, VersionId
from adapters_store.settings import StoreSettings

ALIASES = "refs/aliases"
LOG = "log/aliases.jsonl"
SERVING = "serving"
NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}", re.ASCII)
"""Alias names: lowercase letters, digits, `_` and `-`, starting with a letter."""


def check_alias(name: object) -> str:
    """Returns `name` if it is a well-formed alias, else raises `InvalidName`."""
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise InvalidName(
            f"invalid alias {name!r}: lowercase letters, digits, '_' and '-', starting with a "
            "letter, at most 63 characters (e.g. 'champion')"
        )
    return name


class AliasEntry(BaseModel):
    """One change of an alias."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    time: AwareDatetime
    alias: str
    actor: Text
    reason: Reason = ""
    from_: VersionId | None = Field(validation_alias="from", serialization_alias="from")
    to: VersionId | None


class Aliases:
    """One store's aliases."""

    def __init__(self, backend: Backend, settings: StoreSettings) -> None:
        self._backend, self.settings = backend, settings

    def get(self, name: str) -> str | None:
        """The version an alias names, or None if it names none."""
        try:
            raw = self._backend.read(paths.rel("refs", "aliases", check_alias(name)))
        except FileNotFoundError:
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if paths.VERSION_ID.fullmatch(text) is None:
            raise IntegrityError(None, f"{ALIASES}/{name}", f"holds {text[:40]!r}, not a version")
        return text

    def all(self) -> dict[str, str]:
        """Every alias and the version it names."""
        out = {}
        for name in self._backend.listdir(ALIASES):
            if NAME.fullmatch(name) is not None:
                version = self.get(name)
                if version is not None:
                    out[name] = version
        return out

    def move(self, name: str, version_id: str | None, actor: str, reason: str) -> AliasEntry:
        """Points `name` at `version_id` (already checked by the caller), or removes it (None)."""
        if check_alias(name) == SERVING:
            raise InvalidName(
                "'serving' is the serving pointer: move it with `janus activate` or "
                "`janus rollback`"
            )
        path = paths.rel("refs", "aliases", name)
        with self._backend.lock("aliases", self.settings):
            current = self.get(name)
            if version_id is None and current is None:
                raise NotFound(f"there is no alias {name!r}; list them with `janus alias list`")
            entry = AliasEntry(
                time=datetime.now(UTC),
                alias=name,
                actor=actor,
                reason=reason,
                from_=current,
                to=version_id,
            )
            append_line(self._backend, LOG, entry.model_dump_json(by_alias=True).encode() + b"\n")
            if version_id is None:
                self._backend.delete(path)
            else:
                self._backend.write(path, f"{version_id}\n".encode())
            return entry

    def history(self) -> list[AliasEntry]:
        """Every alias change, oldest first."""
        try:
            return decode_lines(self._backend.read(LOG), AliasEntry, LOG)
        except FileNotFoundError:
            return []
