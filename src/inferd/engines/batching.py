"""Dynamic batching: concurrent requests to one model share a forward pass.

Nothing waits on a timer. A request that finds the model idle runs at once; requests that arrive
while a pass runs are queued and go together in the next one, up to `max_items` texts. A failing
batch is retried request by request, so one bad input fails only its own request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import Histogram

Item = TypeVar("Item")
# run(items) -> one result per item, in order
RunBatch = Callable[[list[Any]], Sequence[Any]]

# In the model process's own registry, which the server scrapes and labels with the model.
BATCH_ITEMS = Histogram(
    "inferd_engine_batch_items",
    "Inputs computed together in one forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@dataclass
class _Pending(Generic[Item]):
    items: list[Item]
    future: asyncio.Future[list[Any]]


class DynamicBatcher(Generic[Item]):
    def __init__(self, run: RunBatch, executor: Executor, max_items: int = 64):
        self._run = run
        self._executor = executor
        self._max_items = max_items
        self._queue: asyncio.Queue[_Pending[Item]] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: list[Item]) -> list[Any]:
        """The results for `items`, computed together with whatever else is waiting."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve(self._queue))
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(items, future))
        return await future

    async def _serve(self, queue: asyncio.Queue[_Pending[Item]]) -> None:
        while True:
            batch = [await queue.get()]
            count = len(batch[0].items)
            while count < self._max_items and not queue.empty():
                pending = queue.get_nowait()
                batch.append(pending)
                count += len(pending.items)
            batch = [p for p in batch if not p.future.cancelled()]  # clients that left
            if batch:
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending[Item]]) -> None:
        items = [item for pending in batch for item in pending.items]
        BATCH_ITEMS.observe(len(items))
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._executor, self._run, items)
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            for pending in batch:  # find the request at fault; the others still succeed
                await self._run_batch([pending])
            return
        start = 0
        for pending in batch:
            end = start + len(pending.items)
            if not pending.future.done():
                pending.future.set_result(list(results[start:end]))
            start = end

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
