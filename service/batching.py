"""Adaptive batching: requests that arrive while the model is busy share its next call.

Requests queue (model, inputs, future). One consumer takes everything queued (up to `max_batch`
images, waiting at most `wait_ms` for more once the model is idle), groups it by model so a batch
never mixes versions, runs each group in one inference thread and hands each request its rows.
Under light load a request runs alone at once; under heavy load batches grow by themselves.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.metrics import ServiceMetrics
from service.runtime import LoadedModel


@dataclass
class _Item:
    model: LoadedModel
    x: np.ndarray  # (n, 3, S, S)
    future: asyncio.Future[np.ndarray]


class Batcher:
    """`await batcher.logits(model, x)` → (n, C), batched with concurrent requests."""

    def __init__(self, metrics: ServiceMetrics, max_batch: int = 32, wait_ms: float = 2.0) -> None:
        self.metrics, self.max_batch, self.wait_s = metrics, max_batch, wait_ms / 1000
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="janus-infer")

    async def logits(self, model: LoadedModel, x: np.ndarray) -> np.ndarray:
        if self._queue is None or self._task is None or self._task.done():
            self._queue = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._consume(self._queue))
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(model, x, future))
        return await future

    async def _gather(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        items = [await queue.get()]
        size = len(items[0].x)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while size < self.max_batch:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    break
            items.append(item)
            size += len(item.x)
        return items

    async def _consume(self, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._gather(queue)
            for model in {id(i.model): i.model for i in items}.values():
                group = [i for i in items if i.model is model]
                x = np.concatenate([i.x for i in group])  # (N, 3, S, S)
                self.metrics.batch_size.observe(len(x))
                try:
                    out = await loop.run_in_executor(self._executor, model.logits, x)
                except Exception as err:
                    for i in group:
                        if not i.future.done():
                            i.future.set_exception(err)
                    continue
                start = 0
                for i in group:
                    if not i.future.done():
                        i.future.set_result(out[start : start + len(i.x)])
                    start += len(i.x)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
