"""Relays a validated request to a model process and its answer back, bytes untouched."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import orjson
from fastapi.responses import Response, StreamingResponse

from inferd.errors import ModelUnavailable
from inferd.runtime.manager import ModelInstance


async def relay(instance: ModelInstance, path: str, body: dict, stream: bool) -> Response:
    assert instance.process is not None
    client = instance.process.client
    request = client.build_request("POST", path, content=orjson.dumps(body))
    try:
        upstream = await client.send(request, stream=stream)
    except httpx.HTTPError as exc:
        raise ModelUnavailable(
            f"model {instance.uid!r} did not answer ({type(exc).__name__}); its process may have "
            "stopped",
            param="model",
        ) from exc
    content_type = upstream.headers.get("content-type", "application/json")
    if not stream or not content_type.startswith("text/event-stream"):
        content = upstream.content if not stream else await upstream.aread()
        await upstream.aclose()
        return Response(content, status_code=upstream.status_code, media_type=content_type)
    return StreamingResponse(
        _forward(instance.uid, upstream),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _forward(uid: str, upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    except httpx.HTTPError:
        # The model process died mid-answer: end the stream with an error the client can read.
        error = {
            "error": {
                "message": f"model {uid!r} stopped while answering",
                "type": "service_unavailable",
                "param": None,
                "code": "model_unavailable",
            }
        }
        yield b"data: " + orjson.dumps(error) + b"\n\ndata: [DONE]\n\n"
    finally:
        await upstream.aclose()
