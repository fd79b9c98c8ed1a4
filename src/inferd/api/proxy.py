"""Relays a validated request to a model process and its answer back, bytes untouched."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from inferd.api.auth import check_model
from inferd.api.metrics import FIRST_TOKEN, LATENCY, REQUESTS, TOKENS
from inferd.errors import InvalidRequest, ModelUnavailable, RequestAborted
from inferd.runtime.aborts import cancel
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager
from inferd.runtime.replica import Replica

# A request that failed before any answer because its model process is gone (refused
# connection, or a pooled connection the dead process left) produced nothing for the client,
# so it is sent again to another replica, or to the restarted process.
_ATTEMPTS = 5


def request_id_of(body: dict, client: Request | None) -> str:
    """The id a client gave its request (Xinference's `request_id` field, or the
    `X-Request-Id` header), else a new one; it is what abort names."""
    given = body.pop("request_id", None) or (client.headers.get("x-request-id") if client else None)
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not 0 < len(given) <= 128 or "/" in given:
        raise InvalidRequest(
            "request_id must be a string of 1 to 128 characters without '/'", param="request_id"
        )
    return given


async def relay(
    manager: ModelManager,
    instance: ModelInstance,
    path: str,
    body: dict,
    stream: bool,
    client: Request | None = None,
) -> Response:
    check_model(instance.uid)
    request_id = request_id_of(body, client)
    if manager.aborts.blocked(instance.uid, request_id):
        raise RequestAborted(request_id)
    content = orjson.dumps(body)
    headers = {"X-Request-Id": request_id}
    started = time.perf_counter()
    for attempt in range(_ATTEMPTS):
        replica = await manager.acquire(instance)
        process = replica.process
        assert process is not None
        sending = process.client.send(
            process.client.build_request("POST", path, content=content, headers=headers),
            stream=stream,
        )
        try:
            if stream or client is None:
                upstream = await sending
            else:
                upstream = await _unless_client_leaves(sending, client, process.client, request_id)
        except httpx.HTTPError as exc:
            manager.release(instance, replica)
            await asyncio.sleep(0.05 * (attempt + 1))  # time for the supervisor to notice
            if isinstance(exc, httpx.ConnectError) or not process.alive:
                continue
            raise _stopped(instance, exc) from exc
        except _ClientLeft:
            manager.release(instance, replica)
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
        except BaseException:
            manager.release(instance, replica)
            raise
        break
    else:
        raise ModelUnavailable(f"model {instance.uid!r} is not answering", param="model")

    content_type = upstream.headers.get("content-type", "application/json")
    if not stream or not content_type.startswith("text/event-stream"):
        try:
            data = await upstream.aread() if stream else upstream.content
        except httpx.HTTPError as exc:
            raise _stopped(instance, exc) from exc
        finally:
            await upstream.aclose()
            manager.release(instance, replica)
        _record(instance.uid, path, upstream.status_code, started, data, content_type)
        return Response(
            data, status_code=upstream.status_code, media_type=content_type, headers=headers
        )
    lease = _Lease(manager, instance, replica, upstream, path, started)
    return StreamingResponse(
        _forward(instance, lease),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        # If the client leaves before the stream starts, the generator never runs its
        # `finally`; the background task still frees the replica and stops the model's work.
        background=BackgroundTask(lease.close),
    )


async def _unless_client_leaves(
    sending: Any, client: Request, process_client: httpx.AsyncClient, request_id: str
) -> httpx.Response:
    """Await a whole answer, cancelling it in the model process if the client disconnects
    first: a generation nobody will read should not keep its slot."""
    answer = asyncio.ensure_future(sending)
    left = asyncio.ensure_future(_disconnected(client))
    try:
        await asyncio.wait({answer, left}, return_when=asyncio.FIRST_COMPLETED)
        if answer.done():
            return answer.result()
        await cancel(process_client, request_id)
        answer.cancel()
        raise _ClientLeft
    finally:
        left.cancel()


class _ClientLeft(Exception):
    pass


async def _disconnected(client: Request) -> None:
    # The body has been read, so the next ASGI message can only be the disconnect.
    while (await client.receive())["type"] != "http.disconnect":
        pass


class _Lease:
    """One streamed answer's hold on a replica, released exactly once."""

    def __init__(
        self,
        manager: ModelManager,
        instance: ModelInstance,
        replica: Replica,
        upstream: httpx.Response,
        path: str,
        started: float,
    ):
        self.manager, self.instance, self.replica, self.upstream = (
            manager,
            instance,
            replica,
            upstream,
        )
        self.path, self.started = path, started
        self._closed = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.upstream.aclose()  # the model process sees the disconnect and stops
        finally:
            self.manager.release(self.instance, self.replica)


def _stopped(instance: ModelInstance, exc: Exception) -> ModelUnavailable:
    return ModelUnavailable(
        f"model {instance.uid!r} stopped while answering ({type(exc).__name__}); it is being "
        "restarted",
        param="model",
    )


async def _forward(instance: ModelInstance, lease: _Lease) -> AsyncIterator[bytes]:
    first = True
    try:
        async for chunk in lease.upstream.aiter_raw():
            if first:
                FIRST_TOKEN.labels(instance.uid, lease.path).observe(
                    time.perf_counter() - lease.started
                )
                first = False
            yield chunk
    except httpx.HTTPError as exc:
        # Headers are gone already: end the stream with an error event the client can read.
        error = _stopped(instance, exc)
        body = {
            "error": {
                "message": error.message,
                "type": error.error_type,
                "param": None,
                "code": error.code,
            }
        }
        yield b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"
    finally:
        await lease.close()
        _record(instance.uid, lease.path, lease.upstream.status_code, lease.started)


def _record(
    uid: str,
    path: str,
    status: int,
    started: float,
    body: bytes = b"",
    content_type: str = "",
) -> None:
    REQUESTS.labels(uid, path, str(status)).inc()
    LATENCY.labels(uid, path).observe(time.perf_counter() - started)
    if status == 200 and path in _COUNTS_TOKENS and content_type.startswith("application/json"):
        usage = orjson.loads(body).get("usage") or {}
        TOKENS.labels(uid, "prompt").inc(usage.get("prompt_tokens") or 0)
        TOKENS.labels(uid, "completion").inc(usage.get("completion_tokens") or 0)


# Generation answers are small to parse; an embeddings body can be megabytes of floats.
_COUNTS_TOKENS = ("/chat/completions", "/completions")
