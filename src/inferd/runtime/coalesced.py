"""Writes to one connection made in one turn of the event loop, sent as one.

A model process answering a pass of 15 requests wrote 15 frames, each a system call that wakes
the reader; a front sent each request's grant, frame and release as writes of their own. Held
until the loop has run the callbacks ready in this turn, they go as one write: the reader
wakes once and reads them all. Nothing waits for a timer: a lone write goes at the end of the
turn it was made in.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class _Writable(Protocol):
    def write(self, data: bytes) -> None: ...

    def is_closing(self) -> bool: ...


class Coalesced:
    """Stands for `transport.write` (an asyncio transport or stream writer): every write to it
    goes through here, so they stay in order."""

    def __init__(self, transport: _Writable):
        self._transport = transport
        self._loop = asyncio.get_running_loop()  # made on the loop that writes to it
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._parts:
            self._loop.call_soon(self._flush)
        self._parts.append(data)

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if self._transport.is_closing():  # what was written to a closing transport is dropped
            return
        with contextlib.suppress(ConnectionError, RuntimeError):  # gone meanwhile: as above
            self._transport.write(parts[0] if len(parts) == 1 else b"".join(parts))
