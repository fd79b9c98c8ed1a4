"""Aborting requests by id: Xinference's `abort_request`, and a client that gives up waiting.

A request carries an id (the client's `request_id`, else one inferd makes); the model process
running it can cancel it by that id. An abort that arrives before its request (or races it)
blocks the id for a while, so the request is refused when it does arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import httpx
from starlette.requests import Request

if TYPE_CHECKING:  # the model process imports this module too, and needs no catalogue
    from inferd.runtime.instance import ModelInstance

T = TypeVar("T")


class Aborts:
    def __init__(self) -> None:
        self._blocked: dict[tuple[str, str], float] = {}

    async def abort(self, instance: ModelInstance, request_id: str, block_seconds: float) -> bool:
        """Cancel the request wherever it runs; True if a model process had it in progress."""
        if block_seconds > 0:
            self._blocked[(instance.uid, request_id)] = time.monotonic() + block_seconds
        processes = [r.process for r in instance.replicas if r.process and r.process.alive]
        results = await asyncio.gather(*(cancel(p.client, request_id) for p in processes))
        return any(results)

    def blocked(self, uid: str, request_id: str) -> bool:
        now = time.monotonic()
        for key in [key for key, until in self._blocked.items() if until <= now]:
            del self._blocked[key]
        return (uid, request_id) in self._blocked


async def cancel(client: httpx.AsyncClient, request_id: str) -> bool:
    """Ask one model process to cancel a request; False if it was not running there."""
    try:
        response = await client.post(f"/abort/{quote(request_id, safe='')}", timeout=5.0)
        return bool(response.json().get("aborted"))
    except (httpx.HTTPError, ValueError):
        return False  # a process that is gone has nothing left to cancel


async def client_left(request: Request) -> None:
    """Returns once the client that sent `request` hangs up; its body must have been read,
    so the next ASGI message can only be the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(
    work: Awaitable[T], client: Request | None, deadline: float | None
) -> T:
    """`work`'s result, unless the client disconnects first (ClientLeft) or the deadline
    passes (TimeoutError); either way `work` is cancelled and has ended when this returns."""
    if client is None:
        # Nothing to race but the clock: run `work` in this task under a timeout, with no
        # task and wait to make per request (the whole answers of embeddings and rerank).
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        async with asyncio.timeout(timeout):
            return await work
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(client_left(client))
    timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
    try:
        await asyncio.wait({task, left}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task  # a queued request that was just handed a slot gives it back
        raise ClientLeft if left.done() else TimeoutError
    finally:
        left.cancel()
        if not task.done():
            task.cancel()


class ClientLeft(Exception):
    """The client hung up before its answer was ready."""
