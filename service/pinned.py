"""Versions a request asks for (`?version=ID`, `?alias=NAME`) or that shadow the serving one.

Each worker keeps a few of them loaded beside the serving version (`JANUS_PINNED_VERSIONS`,
least recently used dropped first); a version is loaded on first use, verified, recorded and
warmed as a swap loads one (`service.swap.load_recorded`: a quarantined version is refused, and
one whose loads kill workers is quarantined). A worker loads one such version at a time: a request
that would start a second load meanwhile is answered 503 with `Retry-After`, so requests naming
many versions in turn cost at most one load at a time per worker. Aliases are read from the store
and remembered for `JANUS_POLL_S`, like the serving pointer.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from adapters_store import NotFound, VersionStore
from service.runtime import LoadedModel
from service.swap import TRANSIENT

Loader = Callable[[str], LoadedModel]


class Unservable(RuntimeError):
    """A version that cannot answer requests here (quarantined, or it does not load)."""


class Busy(RuntimeError):
    """The worker is loading another version; the request may come back in a moment."""


class PinnedVersions:
    """A worker's small cache of loaded versions other than the serving one."""

    def __init__(self, store: VersionStore, loader: Loader, size: int, alias_ttl_s: float) -> None:
        self.store, self.loader, self.size, self.alias_ttl_s = store, loader, size, alias_ttl_s
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time per worker
        self._aliases: dict[str, tuple[float, str]] = {}

    def resolve(self, version: str | None, alias: str | None) -> str:
        """The version id a request names (`NotFound` if there is none)."""
        if version is not None and alias is not None:
            raise ValueError("ask for a version or an alias, not both")
        if version is not None:
            return self.store.get(version).id
        assert alias is not None
        now = time.monotonic()
        with self._lock:
            known = self._aliases.get(alias)
        if known is not None and now - known[0] < self.alias_ttl_s:
            return known[1]
        resolved = self.store.resolve(alias)
        with self._lock:
            self._aliases[alias] = (now, resolved)
        return resolved

    def cached(self, version: str) -> LoadedModel | None:
        with self._lock:
            model = self._models.get(version)
            if model is not None:
                self._models.move_to_end(version)
            return model

    def get(self, version: str, *, wait: bool = False) -> LoadedModel:
        """The loaded version, loading it first if needed (blocking: call it in a thread).
        Without `wait`, `Busy` if the worker is loading another version."""
        model = self.cached(version)
        if model is not None:
            return model
        if not self._loading.acquire(blocking=wait):
            raise Busy("this worker is loading another version; retry in a moment")
        try:
            model = self.cached(version)  # loaded while this request waited
            if model is not None:
                return model
            try:
                model = self.loader(version)
            except NotFound:
                raise
            except TRANSIENT as err:
                raise Busy(f"{version} could not be read now ({err}); retry") from None
            except Exception as err:
                raise Unservable(f"{version} does not serve: {err}") from None
            with self._lock:
                self._models[version] = model
                while len(self._models) > self.size:
                    self._models.popitem(last=False)
            return model
        finally:
            self._loading.release()
