"""Version ids and idempotency keys: who publishes which id, and cleaning up after the dead.

    ids/<id>     a reservation (`_owner.Reservation`): kept forever, so an id is never reused;
                 marked `abandoned` when its publish died
    keys/<key>   a claim (`_owner.KeyClaim`): the id published (or being published) under the key

Reserving takes the store's `publish` lock only to look up the key and create the next id
exclusively, so two publishers never get the same id and one key never gets two versions.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from adapters_store import paths
from adapters_store._backend import STAGING, Backend
from adapters_store._owner import KeyClaim, Owner, Reservation, parse
from adapters_store.errors import StoreBusy
from adapters_store.settings import StoreSettings

IDS = "ids"
KEYS = "keys"


def is_id(name: str) -> bool:
    return paths.VERSION_ID.fullmatch(name) is not None


class Reservations:
    """The `ids/` and `keys/` records of one store; `is_committed(id)` asks the store whether a
    version is complete (one manifest read, cached), rather than listing every version."""

    def __init__(
        self, backend: Backend, settings: StoreSettings, is_committed: Callable[[str], bool]
    ) -> None:
        self._backend, self.settings, self._is_committed = backend, settings, is_committed

    def claim(self, key: str) -> KeyClaim | None:
        """The claim on an idempotency key, if any (a torn record reads as None)."""
        try:
            return parse(KeyClaim, self._backend.read(paths.rel(KEYS, key)))
        except FileNotFoundError:
            return None

    def reserve(self, owner: Owner, key: str | None) -> tuple[str, bool]:
        """Reserves the next id and claims `key` for it: (id, False). If `key` already names a
        committed version: (that id, True). Waits up to `settings.wait_s` while another live
        process publishes under the same key, then raises `StoreBusy`."""
        deadline = time.monotonic() + self.settings.wait_s
        while True:
            with self._backend.lock("publish", self.settings):
                claim = self.claim(key) if key else None
                if claim is not None and self._is_committed(claim.id):
                    return claim.id, True
                if claim is None or not claim.owner.alive(self.settings.stale_after_s):
                    version_id = self._next_id(owner)
                    if key:
                        record = KeyClaim(id=version_id, owner=owner)
                        self._backend.write(paths.rel(KEYS, key), record.model_dump_json().encode())
                    return version_id, False
            if time.monotonic() > deadline:
                raise StoreBusy(
                    f"idempotency key {key!r} is being published as {claim.id} by pid "
                    f"{claim.owner.pid} on {claim.owner.host}; retry when it has finished"
                )
            time.sleep(0.1)

    def _next_id(self, owner: Owner) -> str:
        taken = [paths.version_number(n) for n in self._backend.listdir(IDS) if is_id(n)]
        taken += [paths.version_number(n) for n in self._backend.committed()]
        number = max(taken, default=0) + 1
        record = Reservation(owner=owner).model_dump_json().encode()
        while not self._backend.create(paths.rel(IDS, paths.format_version_id(number)), record):
            number += 1
        return paths.format_version_id(number)

    def abandon(self, version_id: str, key: str | None) -> list[str]:
        """Removes an unfinished publish: its files, its key claim; marks its id abandoned.
        The caller holds the `publish` lock."""
        removed = self._backend.abandon(version_id)
        if key:
            claim = self.claim(key)
            if claim is not None and claim.id == version_id:
                self._backend.delete(paths.rel(KEYS, key))
                removed.append(paths.rel(KEYS, key))
        record = Reservation(owner=Owner.me(), abandoned=True).model_dump_json().encode()
        self._backend.write(paths.rel(IDS, version_id), record)
        return removed

    def clean(self, max_age: float) -> list[str]:
        """Removes what abandoned publishes left behind; returns the removed paths.

        A publish is abandoned when its process is gone (same host) or, for a process on another
        host, when it started more than `max_age` seconds ago. Cheap when there is nothing to
        clean: the lock is taken only if something is found.
        """
        removed = self._backend.sweep(max_age)
        if not self._leftovers(max_age):
            return removed
        with self._backend.lock("publish", self.settings):  # no id is reserved meanwhile
            dead, live = self._reservations(max_age)
            if dead:
                claims = {}
                for key in self._backend.listdir(KEYS):
                    claim = self.claim(key)
                    if claim is not None and claim.id in dead:
                        claims[claim.id] = key
                for version_id in dead:
                    removed += self.abandon(version_id, claims.get(version_id))
            for name in self._staged(live):
                self._backend.delete(paths.rel(STAGING, name))
                removed.append(paths.rel(STAGING, name))
        return removed

    def _reservations(self, max_age: float) -> tuple[list[str], set[str]]:
        """Uncommitted reserved ids: those of dead publishers, and those still being published."""
        committed = set(self._backend.committed())
        dead, live = [], set()
        for name in self._backend.listdir(IDS):
            if not is_id(name) or name in committed:
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
