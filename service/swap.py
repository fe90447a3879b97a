"""Hot swap in every worker process (DESIGN.md §5).

A background thread compares the loaded version with the store's serving pointer (and reads the
shadow ref) when Redis announces a change (`janus:serving`), and otherwise on a poll: every
`safety_poll_s` while it is subscribed to the announcements (the poll is then only the safety net
for a missed one), every `poll_s` while it is not (no Redis, or the subscription broke: it tries
again every 10 s), and every `poll_s` while it has nothing to serve or a failed version to retry.
On an object store each check is two small GETs, so the announcements, not the poll, carry a swap
to every replica, and a worker process costs the store 4 requests a minute when nothing changes.
A different version is loaded (the manifest and the ONNX model only, verified), and warmed off the
request path, then published by replacing one reference; requests hold the reference they started
with, so none fails or mixes versions. A version that fails to load is remembered (readiness
detail, metrics) and retried after `retry_failed_s`, while the old one keeps serving.

A worker with nothing to serve (it just started) whose serving version does not load falls back:
it serves the most recent version that served before and loads (`readiness()["fallback_for"]`
names the version it stands in for, the `janus_serving_fallback` gauge too), and keeps trying the
pointer. A version that fails for a reason that will not pass (a digest mismatch, a model that
does not parse) is quarantined in the store, so every worker skips it; so is a version whose load
ended two worker processes (each load is recorded in the store while it runs, and a record whose
process died is a crashed load), so a load that kills its process cannot become a restart loop.
`janus activate ID --force` serves a quarantined version anyway and clears its quarantine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from adapters_store import AuditEntry, StoreBusy, StoreError, VersionStore
from adapters_store.store import Shadow
from learner.jobs.client import SERVING_CHANNEL, announce
from learner.jobs.redis_url import redis_from_url
from service.metrics import ServiceMetrics
from service.runtime import EngineMissing, LoadedModel

log = logging.getLogger("janus.swap")

Loader = Callable[[str], LoadedModel]

CRASHED_LOADS = 2
"""Loads of one version that ended their process before the version is quarantined."""
TRANSIENT = (OSError, StoreBusy, TimeoutError)
"""Load failures that may pass by themselves: retried, never quarantined (nor is `EngineMissing`,
a limit of this process, not of the version)."""


def load_recorded(store: VersionStore, loader: Loader, version: str) -> LoadedModel:
    """Loads a version unless it is quarantined, recording the load in the store while it runs;
    quarantines it when the failure will not pass, or when its loads killed `CRASHED_LOADS`
    processes. Every load of a worker goes through here: the swap's, and a pinned request's."""
    reason = store.quarantined().get(version)
    if reason is not None:
        raise RuntimeError(f"quarantined: {reason}")
    crashed = store.crashed_loads(version)
    if crashed >= CRASHED_LOADS:
        reason = f"its load ended {crashed} service worker processes"
        store.quarantine(version, reason)
        raise RuntimeError(f"quarantined: {reason}")
    token = store.begin_load(version)
    try:
        model = loader(version)
        with contextlib.suppress(StoreError, OSError):  # it loads: earlier deaths were not its
            store.crashed_loads(version, forget=True)
        return model
    except (*TRANSIENT, EngineMissing):
        raise
    except Exception as err:
        with contextlib.suppress(StoreError, OSError):
            store.quarantine(version, f"it does not load: {err}")
        raise
    finally:
        with contextlib.suppress(StoreError, OSError):
            store.end_load(version, token)


def announce_change(url: str | None, message: dict[str, Any]) -> None:
    """Publishes a change of the serving pointer or the shadow ref on the channel every hot-swap
    thread listens to; without Redis, or when it does not answer, the workers' poll finds it."""
    if url is None:
        return
    try:
        with redis_from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            announce(client, message)
    except (redis.RedisError, OSError) as err:
        log.info("could not announce %s (the workers' poll will find it): %s", message, err)


def announce_move(url: str | None, entry: AuditEntry) -> None:
    """`announce_change` for a move of the serving pointer (`entry`, its audit entry)."""
    announce_change(url, {"event": "serving-changed", "version": entry.to, "previous": entry.from_})


@dataclass
class SwapState:
    """What readiness reports: the serving model, and the last failure if any."""

    model: LoadedModel | None = None
    loaded_at: float | None = None
    target: str | None = None
    failed_version: str | None = None
    last_error: str | None = None
    retry_at: float = 0.0
    swaps: int = 0
    last_swap_s: float | None = None
    fallback_for: str | None = None
    shadow: Shadow | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class HotSwapper:
    """Keeps `current` equal to the serving version; `start()` runs it in a daemon thread."""

    def __init__(
        self,
        store: VersionStore,
        loader: Loader,
        metrics: ServiceMetrics,
        *,
        poll_s: float = 1.0,
        safety_poll_s: float = 30.0,
        retry_failed_s: float = 15.0,
        redis_url: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.store, self.loader, self.metrics = store, loader, metrics
        self.poll_s, self.safety_poll_s = poll_s, max(poll_s, safety_poll_s)
        self.retry_failed_s = retry_failed_s
        self.redis_url = redis_url
        self.state = SwapState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: Any = None
        self._next_subscribe = 0.0

    @property
    def current(self) -> LoadedModel | None:
        return self.state.model

    def readiness(self) -> dict[str, Any]:
        s = self.state
        return {
            "ready": s.model is not None,
            "version": s.model.version if s.model else None,
            "engine": s.model.engine if s.model else None,
            "serving_pointer": s.target,
            "fallback_for": s.fallback_for,
            "failed_version": s.failed_version,
            "last_error": s.last_error,
            "swaps": s.swaps,
            "last_swap_s": s.last_swap_s,
            "pid": os.getpid(),
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="janus-hot-swap", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_pubsub()

    def check(self, cause: str = "poll") -> None:
        """One comparison of the loaded version with the pointer (and a swap if they differ);
        `cause` (announced or poll) labels the read in the metrics."""
        self.metrics.pointer_checks.labels(cause=cause).inc()
        try:
            target = self.store.serving()
        except (StoreError, OSError) as err:
            self.state.last_error = f"cannot read the serving pointer: {err}"
            return
        self.state.target = target
        with contextlib.suppress(StoreError, OSError):  # a damaged ref only stops the shadow
            self.state.shadow = self.store.shadow()
        loaded = self.state.model.version if self.state.model else None
        if target is None or target == loaded:
            return
        if target == self.state.failed_version and time.monotonic() < self.state.retry_at:
            return
        self._swap(target, loaded)

    def _swap(self, target: str, loaded: str | None) -> None:
        start = time.monotonic()
        try:
            model = self._load(target)
        except Exception as err:  # any failure keeps the old version serving
            self.state.failed_version, self.state.last_error = target, f"{target}: {err}"
            self.state.retry_at = time.monotonic() + self.retry_failed_s
            self.metrics.swap_failures.labels(version=target).inc()
            log.warning("could not load version %s (still serving %s): %s", target, loaded, err)
            if self.state.model is None:
                self._fall_back(target)
            return
        self._install(target, model, time.monotonic() - start)

    def _load(self, version: str) -> LoadedModel:
        return load_recorded(self.store, self.loader, version)

    def _fall_back(self, target: str) -> None:
        """Nothing serves and `target` does not load: serve the most recent version that served
        before it (the audit log, newest first) and loads."""
        try:
            history = self.store.history()
        except (StoreError, OSError):
            return
        seen = {target}
        for entry in reversed([e for e in history if e.moved]):
            for candidate in (entry.to, entry.from_):
                if candidate is None or candidate in seen:
                    continue
                seen.add(candidate)
                start = time.monotonic()
                try:
                    model = self._load(candidate)
                except Exception as err:
                    log.warning("fallback %s does not load either: %s", candidate, err)
                    continue
                self._install(candidate, model, time.monotonic() - start, fallback_for=target)
                return

    def _install(
        self, target: str, model: LoadedModel, elapsed: float, fallback_for: str | None = None
    ) -> None:
        """The swap itself: one reference, then the bookkeeping."""
        loaded = self.state.model.version if self.state.model else None
        previous = self.state.model
        self.state.model = model  # the swap: one reference
        self.state.loaded_at = time.time()
        if self.state.fallback_for is not None:
            self.metrics.fallback.labels(version=self.state.fallback_for).set(0)
        self.state.fallback_for = fallback_for
        if fallback_for is not None:
            self.metrics.fallback.labels(version=fallback_for).set(1)
            log.warning("serving %s in place of %s, which does not load", target, fallback_for)
        self.state.swaps += 1
        self.state.last_swap_s = elapsed
        if fallback_for is None and self.state.failed_version in (target, None):
            self.state.failed_version, self.state.last_error = None, None
        self.metrics.swaps.labels(version=target).inc()
        self.metrics.swap_seconds.observe(elapsed)
        self.metrics.set_serving(
            (target, model.engine), (previous.version, previous.engine) if previous else None
        )
        log.info("serving %s (was %s), loaded in %.2f s", target, loaded, elapsed)

    def _subscribe(self) -> None:
        if self._pubsub is not None or time.monotonic() < self._next_subscribe:
            return
        self._next_subscribe = time.monotonic() + 10.0
        url = self.redis_url()
        if not url:
            return
        try:
            # keepalive and a health-check PING: a dead subscription is found and polling resumes
            client = redis_from_url(
                url, socket_timeout=10, socket_keepalive=True, health_check_interval=10
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(SERVING_CHANNEL)
            self._pubsub = pubsub
            self.metrics.announcements.set(1)
        except (redis.RedisError, OSError) as err:
            log.info("no Redis announcements (polling every %g s): %s", self.poll_s, err)

    def _close_pubsub(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None
            self.metrics.announcements.set(0)

    def _poll_every(self) -> float:
        """The poll interval: the slow safety net only while announcements reach this worker and
        it serves its pointer's version with nothing to retry."""
        s = self.state
        settled = s.model is not None and s.failed_version is None and s.fallback_for is None
        return self.safety_poll_s if self._pubsub is not None and settled else self.poll_s

    def _wait(self) -> str:
        """Until an announcement arrives (returns "announced") or the poll interval passes
        ("poll"). Messages are read at most `poll_s` at a time, so the health-check PING runs."""
        deadline = time.monotonic() + self._poll_every()
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return "poll"
            if self._pubsub is None:
                self._stop.wait(left)
                continue
            try:
                if self._pubsub.get_message(timeout=min(left, self.poll_s)) is not None:
                    return "announced"
            except (redis.RedisError, OSError, ValueError) as err:
                log.info("Redis announcements lost (polling every %g s): %s", self.poll_s, err)
                self._close_pubsub()
                deadline = min(deadline, time.monotonic() + self.poll_s)
        return "poll"

    def _run(self) -> None:
        cause = "poll"
        while not self._stop.is_set():
            self._subscribe()
            try:
                self.check(cause)
            except Exception as err:  # the thread must outlive any surprise
                self.state.last_error = f"hot-swap check failed: {err}"
                log.exception("hot-swap check failed")
            cause = self._wait()
