"""What one service worker process holds: settings, the store, the hot-swapped model, the batcher,
and (on first use) the Celery app that queues learn jobs. The HTTP layer (`service.api`) and the
BentoML service (`service.service`) are thin shells around it.
"""

from __future__ import annotations

import threading
from functools import partial
from typing import TYPE_CHECKING

from anyio import CapacityLimiter

from adapters_store import VersionStore, open_store
from learner.jobs.redis_embedded import current_url
from learner.jobs.settings import JobSettings
from service.batching import Batcher
from service.config import ServiceSettings
from service.metrics import ServiceMetrics, service_metrics
from service.pinned import PinnedVersions
from service.runtime import LoadedModel, load_version
from service.shadow import Shadower
from service.swap import HotSwapper, load_recorded

if TYPE_CHECKING:
    from celery import Celery


class NoQueue(RuntimeError):
    """No Redis is configured or running, so learn jobs cannot be queued."""


class Serving:
    """A worker's serving state; `start()` begins hot-swapping, `stop()` ends it."""

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        jobs: JobSettings | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.settings = settings or ServiceSettings.from_env()
        self.jobs = jobs or JobSettings.from_env()
        self.metrics = metrics or service_metrics()
        self.store = self._open_store()
        swap_store = self._open_store()  # the swap thread's own store object
        self.swapper = HotSwapper(
            swap_store,
            partial(self._load, swap_store),
            self.metrics,
            poll_s=self.settings.poll_s,
            safety_poll_s=self.settings.safety_poll_s,
            retry_failed_s=self.settings.retry_failed_s,
            redis_url=self.redis_url,
        )
        self.batcher = Batcher(self.metrics, self.settings.max_batch, self.settings.batch_wait_ms)
        pinned_store = self._open_store()  # its own store object, like the swap thread's
        self.pinned = PinnedVersions(
            pinned_store,
            partial(load_recorded, pinned_store, partial(self._load, pinned_store)),
            self.settings.pinned_versions,
            self.settings.poll_s,
        )
        self.shadow = Shadower(self.pinned, self.batcher, self.metrics, self.redis_url)
        self._app: Celery | None = None
        self._lock = threading.Lock()
        self.inflight = 0  # classify requests this worker holds (its event loop counts them)
        self._decode_slots: CapacityLimiter | None = None

    def decode_slots(self) -> CapacityLimiter:
        """Threads that may decode images at once (`JANUS_DECODE_SLOTS`); made on first use, in
        the event loop."""
        if self._decode_slots is None:
            self._decode_slots = CapacityLimiter(self.settings.decode_slots)
        return self._decode_slots

    def _open_store(self) -> VersionStore:
        return open_store(self.jobs.store_uri, clean=False)

    def _load(self, store: VersionStore, version: str) -> LoadedModel:
        return load_version(
            store, version, engine=self.settings.engine, threads=self.settings.intra_op_threads
        )

    @property
    def model(self) -> LoadedModel | None:
        return self.swapper.current

    def redis_url(self) -> str | None:
        return current_url(self.jobs.redis_url, self.jobs.data_dir)

    def celery(self) -> Celery:
        """The Celery app of learn jobs (created on first use)."""
        with self._lock:
            if self._app is None:
                url = self.redis_url()
                if url is None:
                    raise NoQueue(
                        "no Redis for learn jobs: set JANUS_REDIS_URL, or start `janus worker` "
                        f"(it starts the embedded Redis of {self.jobs.data_dir})"
                    )
                from learner.jobs.app import create_app

                self._app = create_app(self.jobs, url)
            return self._app

    def start(self) -> None:
        self.swapper.check()  # serve at once if a version exists
        self.swapper.start()

    def stop(self) -> None:
        self.swapper.stop()
        self.batcher.close()
        if self._app is not None:
            self._app.close()
