"""Server-sent events on their way through the server: cut into whole events, and written to a
client that must keep reading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send


async def events(chunks: AsyncIterable[bytes | str]) -> AsyncIterator[bytes]:
    """Whole events (without their blank-line ending) from a byte stream cut anywhere."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk if isinstance(chunk, bytes) else chunk.encode()
        while (end := buffer.find(b"\n\n")) >= 0:
            yield buffer[:end]
            buffer = buffer[end + 2 :]
    if buffer.strip():
        yield buffer


class StallGuardedResponse(StreamingResponse):
    """A stream that gives up on a client which stops reading: if one write waits longer than
    `stall_timeout` (the socket's buffers are full), the stream ends as if the client had
    left, so a stalled or vanished reader never keeps a model's slot."""

    def __init__(self, content: AsyncIterable[bytes], stall_timeout: float, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.stall_timeout = stall_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def guarded_send(message: Message) -> None:
            try:
                async with asyncio.timeout(self.stall_timeout):
                    await send(message)
            except TimeoutError:
                raise _Stalled from None

        try:
            await super().__call__(scope, receive, guarded_send)
        except _Stalled:
            # The body's `finally` frees the model's slot; the connection is simply dropped.
            if isinstance(self.body_iterator, AsyncIterator):
                with contextlib.suppress(Exception):
                    await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self.background is not None:
                await self.background()


class _Stalled(Exception):
    pass
