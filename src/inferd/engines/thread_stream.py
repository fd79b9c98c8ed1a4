"""Items a blocking call produces on a worker thread, read on the event loop as they come.

Engines whose libraries generate in a blocking call with a callback (llama.cpp's server,
transformers' `generate` with a streamer) hand each piece over here; closing the reader early
tells the call to stop through the event it is given."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import Executor
from typing import Any

Put = Callable[[Any], None]


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: Exception):
        self.error = error


async def from_thread(
    work: Callable[[Put, threading.Event], None], executor: Executor | None = None
) -> AsyncGenerator[Any, None]:
    """What `work(put, stop)` puts, in order, until it returns; its exception is raised here.
    `stop` is set once the reader stops reading (or the loop has closed), for `work` to end."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    stop = threading.Event()
    done = object()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop closed under us: the process is exiting
            stop.set()

    def run() -> None:
        try:
            work(put, stop)
        except Exception as exc:
            put(_Failed(exc))
        finally:
            put(done)

    loop.run_in_executor(executor, run)
    try:
        while True:
            item = await queue.get()
            if item is done:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
