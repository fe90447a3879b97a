"""Shadow traffic: a candidate answers a share of live classify requests beside the serving
version, off the request path, and the service counts how often the two agree.

The shadowed version and its share are `refs/shadow` in the store (`janus shadow ID --fraction
F`), read by every worker's hot-swap loop. After a request is answered, with probability F its
images go, in a background task, to the candidate (loaded in the worker's cache of pinned
versions, `service.pinned`) through the same batcher; each image counts once for the class the
serving version predicted, and agrees when the candidate's top class is the same. Counts go to
Prometheus (`janus_shadow_images_total`, `janus_shadow_agreed_total`, by version and serving
version) and to Redis, summed over every worker:

    janus:shadow:<candidate>:<serving>   hash: n:<class> images, agree:<class> agreements

A request never waits for its shadow: at most `MAX_PENDING` shadow tasks run per worker, and the
images of a request that finds them all busy, or the candidate not yet loaded, are counted as
skipped (`janus_shadow_skipped_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import redis
from anyio import to_thread

from learner.jobs.client import REDIS_TIMEOUTS
from learner.jobs.redis_url import redis_from_url
from service.batching import Batcher
from service.metrics import ServiceMetrics
from service.pinned import PinnedVersions
from service.runtime import LoadedModel

log = logging.getLogger("janus.shadow")

MAX_PENDING = 4
PREFIX = "janus:shadow:"


def counts_key(candidate: str, serving: str) -> str:
    return f"{PREFIX}{candidate}:{serving}"


def read_counts(client: redis.Redis, candidate: str) -> dict[str, dict[str, Any]]:
    """Shadow counts of a candidate, by the serving version it was compared with:
    {serving: {images, agreed, agreement, per_class: {class: {images, agreed}}}}."""
    out: dict[str, dict[str, Any]] = {}
    for raw_key in client.scan_iter(match=f"{PREFIX}{candidate}:*", count=100):
        key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
        serving = key.rsplit(":", 1)[-1]
        per_class: dict[str, dict[str, int]] = {}
        for field, value in client.hgetall(key).items():
            kind, _, name = (field.decode() if isinstance(field, bytes) else field).partition(":")
            per_class.setdefault(name, {"images": 0, "agreed": 0})
            per_class[name]["images" if kind == "n" else "agreed"] = int(value)
        images = sum(c["images"] for c in per_class.values())
        agreed = sum(c["agreed"] for c in per_class.values())
        out[serving] = {
            "images": images,
            "agreed": agreed,
            "agreement": agreed / images if images else None,
            "per_class": dict(sorted(per_class.items())),
        }
    return out


def counts_at(url: str | None, candidate: str) -> dict[str, dict[str, Any]] | None:
    """`read_counts` from the Redis at `url`; None without Redis or when it does not answer."""
    if url is None:
        return None
    try:
        with redis_from_url(url, **REDIS_TIMEOUTS) as client:
            return read_counts(client, candidate)
    except (redis.RedisError, OSError):
        return None


def clear_counts(client: redis.Redis, candidate: str) -> None:
    for key in list(client.scan_iter(match=f"{PREFIX}{candidate}:*", count=100)):
        client.delete(key)


class Shadower:
    """Mirrors a share of a worker's classify traffic to the shadowed version."""

    def __init__(
        self,
        pinned: PinnedVersions,
        batcher: Batcher,
        metrics: ServiceMetrics,
        redis_url: Callable[[], str | None],
    ) -> None:
        self.pinned, self.batcher, self.metrics, self.redis_url = (
            pinned,
            batcher,
            metrics,
            redis_url,
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._loading: set[str] = set()
        self._client: redis.Redis | None = None

    def mirror(
        self,
        version: str,
        fraction: float,
        serving: LoadedModel,
        x: np.ndarray,
        answered: Sequence[str],
    ) -> None:
        """With probability `fraction`, compare `version`'s answers on `x` (N, 3, S, S) with the
        serving version's top classes `answered`, in a background task."""
        if version == serving.version or random.random() >= fraction:
            return
        if len(self._pending) >= MAX_PENDING:
            self.metrics.shadow_skipped.labels(version=version).inc(len(x))
            return
        task = asyncio.get_running_loop().create_task(self._run(version, serving, x, answered))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _run(
        self, version: str, serving: LoadedModel, x: np.ndarray, answered: Sequence[str]
    ) -> None:
        model = self.pinned.cached(version)
        if model is None:
            self.metrics.shadow_skipped.labels(version=version).inc(len(x))
            if version not in self._loading:  # load once, in the background
                self._loading.add(version)
                try:
                    await to_thread.run_sync(partial(self.pinned.get, version, wait=True))
                except Exception as err:
                    log.warning("shadow version %s does not load: %s", version, err)
                finally:
                    self._loading.discard(version)
            return
        if model.size != serving.size:  # another backbone: the images must be prepared again
            self.metrics.shadow_skipped.labels(version=version).inc(len(x))
            return
        try:
            logits = await self.batcher.logits(model, x)
        except Exception as err:
            log.warning("shadow version %s failed: %s", version, err)
            return
        theirs = [model.class_names[int(i)] for i in np.argmax(logits, axis=1)]
        agreed = [a == b for a, b in zip(answered, theirs, strict=True)]
        labels = {"version": version, "serving": serving.version}
        self.metrics.shadow_images.labels(**labels).inc(len(agreed))
        self.metrics.shadow_agreed.labels(**labels).inc(sum(agreed))
        await to_thread.run_sync(self._count, version, serving.version, answered, agreed)

    def _count(
        self, version: str, serving: str, answered: Sequence[str], agreed: Sequence[bool]
    ) -> None:
        url = self.redis_url()
        if url is None:
            return
        try:
            if self._client is None:
                self._client = redis_from_url(url, **REDIS_TIMEOUTS)
            with self._client.pipeline(transaction=False) as pipe:
                key = counts_key(version, serving)
                for name, ok in zip(answered, agreed, strict=True):
                    pipe.hincrby(key, f"n:{name}", 1)
                    if ok:
                        pipe.hincrby(key, f"agree:{name}", 1)
                pipe.execute()
        except (redis.RedisError, OSError) as err:
            log.info("shadow counts not stored in Redis: %s", err)
            with contextlib.suppress(Exception):
                if self._client is not None:
                    self._client.close()
            self._client = None
