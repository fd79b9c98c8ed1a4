"""Relays a validated request to a model process and its answer back, bytes untouched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import orjson
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from inferd.errors import ModelUnavailable
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager
from inferd.runtime.replica import Replica

# A request that failed before any answer because its model process is gone (refused
# connection, or a pooled connection the dead process left) produced nothing for the client,
# so it is sent again to another replica, or to the restarted process.
_ATTEMPTS = 5


async def relay(
    manager: ModelManager, instance: ModelInstance, path: str, body: dict, stream: bool
) -> Response:
    content = orjson.dumps(body)
    for attempt in range(_ATTEMPTS):
        replica = await manager.acquire(instance)
        process = replica.process
        assert process is not None
        try:
            upstream = await process.client.send(
                process.client.build_request("POST", path, content=content), stream=stream
            )
        except httpx.HTTPError as exc:
            manager.release(instance, replica)
            await asyncio.sleep(0.05 * (attempt + 1))  # time for the supervisor to notice
            if isinstance(exc, httpx.ConnectError) or not process.alive:
                continue
            raise _stopped(instance, exc) from exc
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
        return Response(data, status_code=upstream.status_code, media_type=content_type)
    lease = _Lease(manager, instance, replica, upstream)
    return StreamingResponse(
        _forward(instance, lease),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # If the client leaves before the stream starts, the generator never runs its
        # `finally`; the background task still frees the replica and stops the model's work.
        background=BackgroundTask(lease.close),
    )


class _Lease:
    """One streamed answer's hold on a replica, released exactly once."""

    def __init__(
        self,
        manager: ModelManager,
        instance: ModelInstance,
        replica: Replica,
        upstream: httpx.Response,
    ):
        self.manager, self.instance, self.replica, self.upstream = (
            manager,
            instance,
            replica,
            upstream,
        )
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
    try:
        async for chunk in lease.upstream.aiter_raw():
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
