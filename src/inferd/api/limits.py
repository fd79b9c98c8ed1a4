"""A ceiling on request bodies: a client cannot make the server hold more than it allows.

A body whose `Content-Length` is over the limit is refused before a byte is read; a body sent
without one (chunked) is counted as it arrives and refused when it passes the limit. Either way
the answer is a 413 in OpenAI's error shape.
"""

from __future__ import annotations

from typing import Any

from inferd.api.errors import refuse
from inferd.errors import RequestTooLarge


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No length given (chunked): read the body here, refusing it once it passes the limit,
        # then hand it to the app as if it had just arrived.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending it all
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return dict(await receive())  # later reads: the client's disconnect
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: dict, receive: Any, send: Any) -> None:
        message = (
            f"the request body is larger than this server accepts "
            f"({self.max_bytes // (1 << 20)} MiB; INFERD_MAX_REQUEST_MB sets it)"
        )
        await refuse(scope, receive, send, RequestTooLarge(message))
