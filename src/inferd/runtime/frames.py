"""Whole answers (embeddings, rerank) between a relay and its model process, in frames on a
Unix socket of their own: many requests at once on one connection, each answer matched to its
request by id.

HTTP costs more than the work on this hop for short texts: with 32 requests at once on a 2-core
host, uvicorn and Starlette spent 50-76 µs a request in the answering process and aiohttp 81 µs
in the asking one, against 18-29 and 11-14 µs in frames. At thousands of requests a second that
is the model process's interpreter lock, which its model thread also needs. Streams, and every
other route, stay on HTTP; so do model processes on other nodes.

A frame is two big-endian 32-bit lengths, a JSON head of the first length, a body of the second.

    relay:  {"id": 7, "path": "/embeddings", "request_id": "..."}   the request's JSON body
    model:  {"id": 7, "status": 200, "type": "application/json"}     the answer's body
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, cast

import orjson

log = logging.getLogger("inferd.frames")

# The routes whose whole answers travel in frames, and the engine's call answering each.
FRAMED = {"/embeddings": "embed", "/rerank": "rerank"}

_LENGTHS = struct.Struct("!II")


class Whole(NamedTuple):
    """A model process's whole answer: status, content type, body."""

    status: int
    content_type: str
    body: bytes


class ChannelError(ConnectionError):
    """No answer came: the model process could not be reached, or went away meanwhile."""


class ChannelRefused(ChannelError):
    """Nothing listens on the model process's frames socket (not up yet, or gone): the request
    was not sent."""


def frames_path(socket: str | Path) -> str:
    """Where a model process listening on `socket` (its HTTP socket) takes frames."""
    return f"{socket}.frames"


def tokenizer_path(frames: str | Path) -> Path:
    """Where a model process taking frames on `frames` offers the relays its tokenizer
    (`Engine.relay_tokenizer`)."""
    return Path(f"{frames}.tokenizer")


def _frame(head: dict[str, Any], body: bytes) -> bytes:
    encoded = orjson.dumps(head)
    return _LENGTHS.pack(len(encoded), len(body)) + encoded + body


class _Frames(asyncio.Protocol):
    """Cuts the bytes received into frames and hands each to `received(head, body)`."""

    def __init__(self, received: Callable[[dict[str, Any], bytes], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._received = received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= _LENGTHS.size:
            head_length, body_length = _LENGTHS.unpack_from(buffer, start)
            end = start + _LENGTHS.size + head_length + body_length
            if len(buffer) < end:
                break
            at = start + _LENGTHS.size
            head = orjson.loads(buffer[at : at + head_length])
            body = bytes(buffer[at + head_length : end])
            start = end
            self._received(head, body)
        del buffer[:start]


class _Asking(_Frames):
    def __init__(self) -> None:
        super().__init__(self._answered)
        self.waiting: dict[int, asyncio.Future[Whole]] = {}
        self.closed = False
        self._ids = 0

    def ask(self, path: str, content: bytes, request_id: str) -> asyncio.Future[Whole]:
        assert self.transport is not None
        self._ids += 1
        future: asyncio.Future[Whole] = asyncio.get_running_loop().create_future()
        self.waiting[self._ids] = future
        head = {"id": self._ids, "path": path, "request_id": request_id}
        self.transport.write(_frame(head, content))
        return future

    def _answered(self, head: dict[str, Any], body: bytes) -> None:
        future = self.waiting.pop(head["id"], None)
        if future is not None and not future.done():  # not given up meanwhile
            future.set_result(Whole(head["status"], head["type"], body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(ChannelError("the model process closed the connection"))
        self.waiting.clear()


class FrameChannel:
    """One connection to a model process's frames socket, opened when first needed and again
    after it closes (a restarted process listens at the same path)."""

    def __init__(self, path: str):
        self.path = path
        self._asking: _Asking | None = None
        self._opening = asyncio.Lock()  # one connection opened at a time

    async def post(self, path: str, content: bytes, request_id: str) -> Whole:
        """The model process's whole answer to `content` (a JSON body) on `path`."""
        asking = self._asking
        if asking is None or asking.closed:
            asking = await self._open()
        # A caller that gives up cancels its future; the answer is dropped when it comes.
        return await asking.ask(path, content, request_id)

    async def _open(self) -> _Asking:
        async with self._opening:
            if self._asking is None or self._asking.closed:
                loop = asyncio.get_running_loop()
                try:
                    _, self._asking = await loop.create_unix_connection(_Asking, self.path)
                except OSError as exc:  # no socket, or nobody listening on it
                    raise ChannelRefused(f"{self.path}: {exc}") from exc
            return self._asking

    def close(self) -> None:
        if self._asking is not None and self._asking.transport is not None:
            self._asking.transport.close()
        self._asking = None


# What answers a frame: its path, its body and its request id -> the whole answer.
Answer = Callable[[str, bytes, str], Awaitable[Whole]]


class _Answering(_Frames):
    def __init__(self, answer: Answer):
        super().__init__(self._asked)
        self._answer = answer
        self._running: set[asyncio.Task[None]] = set()  # the loop holds tasks only weakly

    def _asked(self, head: dict[str, Any], body: bytes) -> None:
        task = asyncio.ensure_future(self._reply(head["id"], head["path"], body, head))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _reply(self, n: int, path: str, body: bytes, head: dict[str, Any]) -> None:
        try:
            whole = await self._answer(path, body, str(head.get("request_id") or ""))
        except Exception as exc:  # a bug in `answer`: the relay still hears of it
            log.exception("answering a frame failed")
            error = {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}
            whole = Whole(500, "application/json", orjson.dumps({"error": error}))
        if self.transport is not None and not self.transport.is_closing():
            reply = {"id": n, "status": whole.status, "type": whole.content_type}
            self.transport.write(_frame(reply, whole.body))


async def serve_frames(path: str, answer: Answer) -> asyncio.Server:
    """Takes frames on `path` (a Unix socket, made anew), each answered by `answer` (whose
    errors are answers: what it raises is a bug, answered as a 500)."""
    Path(path).unlink(missing_ok=True)
    loop = asyncio.get_running_loop()
    return await loop.create_unix_server(lambda: _Answering(answer), path)
