"""Server-sent events on their way through the server: cut into whole events, and written to a
client that must keep reading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import orjson
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


async def json_events(chunks: AsyncIterable[bytes | str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON events of an OpenAI stream, without its closing [DONE]."""
    async for event in events(chunks):
        if event.startswith(b"data: ") and event[6:] != b"[DONE]":
            yield orjson.loads(event[6:])


def translated(
    upstream: StreamingResponse,
    translate: Callable[[AsyncIterator[dict[str, Any]]], AsyncIterator[bytes]],
    stall_timeout: float,
    media_type: str,
) -> StallGuardedResponse:
    """A model's OpenAI stream rewritten for another API's clients (Ollama's, Anthropic's,
    the Responses API's) by `translate`, which reads its JSON events and yields the bytes to
    send."""

    async def body() -> AsyncIterator[bytes]:
        try:
            chunks: Any = upstream.body_iterator
            async for piece in translate(json_events(chunks)):
                yield piece
        finally:
            # The relayed stream records the answer and starts closing it before its first
            # wait, so this finishes even when a client that left has this task cancelled.
            await upstream.body_iterator.aclose()  # type: ignore[attr-defined]

    # The relay's background frees the replica even if this stream never starts.
    return StallGuardedResponse(
        body(), stall_timeout=stall_timeout, media_type=media_type, background=upstream.background
    )
