"""One request's way through a worker, shared by `/classify` and the Open Inference Protocol
(`service.v2`): the in-flight bound, the version that answers (the serving one, or one the request
names), the images' checks and decoding within the request's budget, the batched model call, the
shadow mirror and the metrics. The two protocols only parse requests and shape answers.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial

import numpy as np
from anyio import to_thread
from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool

from adapters_store import InvalidName, NotFound
from service.core import Serving
from service.images import ImageError, decode_images, open_images
from service.pinned import Busy, Unservable
from service.runtime import LoadedModel


@contextlib.asynccontextmanager
async def admitted(serving: Serving) -> AsyncIterator[float]:
    """Holds one of the worker's in-flight slots (503 with Retry-After beyond
    `JANUS_MAX_INFLIGHT`, before the body is read); yields the request's start time."""
    start = time.perf_counter()
    if serving.inflight >= serving.settings.max_inflight:
        serving.metrics.requests.labels(version="none", status="503").inc()
        raise HTTPException(
            503,
            f"this worker holds {serving.inflight} requests, its limit (JANUS_MAX_INFLIGHT); "
            "retry in a second",
            headers={"Retry-After": "1"},
        )
    serving.inflight += 1
    try:
        yield start
    finally:
        serving.inflight -= 1


async def model_for(
    serving: Serving, version: str | None = None, alias: str | None = None
) -> LoadedModel:
    """The model that answers: the serving version's (as it is now, whatever swaps later), or
    the version the request names by id or alias, loaded if need be."""
    if version is None and alias is None:
        model = serving.model
        if model is None:
            raise HTTPException(503, "no version loaded yet; see GET /readyz")
        return model
    try:
        wanted = await run_in_threadpool(serving.pinned.resolve, version, alias)
    except NotFound as err:
        raise HTTPException(404, str(err)) from None
    except (InvalidName, ValueError) as err:
        raise HTTPException(422, str(err)) from None
    current = serving.model
    if current is not None and current.version == wanted:
        return current
    try:
        return await run_in_threadpool(serving.pinned.get, wanted)
    except Unservable as err:
        raise HTTPException(409, f"{err}; ask for another version") from None
    except Busy as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "2"}) from None


def check_count(serving: Serving, count: int, what: str) -> None:
    """At least one image, at most `JANUS_MAX_IMAGES`."""
    if count == 0:
        raise HTTPException(400, f"no images: {what}")
    if count > serving.settings.max_images:
        raise HTTPException(
            413, f"{count} images in one request; the limit is {serving.settings.max_images}"
        )


async def decode(serving: Serving, data: list[bytes], model: LoadedModel) -> np.ndarray:
    """Encoded images → model input (N, 3, S, S): every header checked against the limits and the
    request's decode budget first, then decoded, a large request in one of the decode slots."""
    s = serving.settings
    opened = await run_in_threadpool(
        partial(
            open_images,
            data,
            model.size,
            formats=s.image_formats,
            max_pixels=s.max_pixels,
            max_request_pixels=s.max_request_pixels,
            max_frames=s.max_frames,
        )
    )
    # large requests take turns in the decode slots; small ones never wait behind them
    slots = serving.decode_slots() if opened.pixels > s.small_request_pixels else None
    return await to_thread.run_sync(decode_images, opened, model.size, limiter=slots)


async def run(serving: Serving, model: LoadedModel, x: np.ndarray, pinned: bool) -> np.ndarray:
    """Logits (N, C) from the batcher; a request to the serving version may then be mirrored to
    the shadowed one, off the request path."""
    logits = await serving.batcher.logits(model, x)
    shadow = serving.swapper.state.shadow
    if shadow is not None and not pinned:
        answered = [model.class_names[int(i)] for i in np.argmax(logits, axis=1)]
        serving.shadow.mirror(shadow.version, shadow.fraction, model, x, answered)
    return logits


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)  # (B, C)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def count_failure(serving: Serving, err: Exception) -> None:
    code = err.status_code if isinstance(err, HTTPException) else getattr(err, "status", 500)
    serving.metrics.requests.labels(version="none", status=str(code)).inc()


def count_success(serving: Serving, version: str, images: int, start: float) -> None:
    serving.metrics.requests.labels(version=version, status="200").inc()
    serving.metrics.images.labels(version=version).inc(images)
    serving.metrics.latency.labels(version=version).observe(time.perf_counter() - start)


FAILURES = (HTTPException, ImageError)
"""What a request's failure is raised as (counted, then answered in the protocol's shape)."""
