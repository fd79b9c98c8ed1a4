"""Following a model's log file as it grows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from inferd.runtime.process import read_tail


async def follow_log(path: Path, lines: int) -> AsyncIterator[bytes]:
    """`tail -f`: what is there, then whatever is appended, until the client leaves."""
    yield read_tail(path, lines).encode()
    try:
        position = path.stat().st_size
    except FileNotFoundError:
        position = 0
    while True:
        await asyncio.sleep(0.25)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size < position:  # rotated: start over on the new file
            position = 0
        if size > position:
            with open(path, "rb") as f:
                f.seek(position)
                chunk = f.read(size - position)
            position = size
            yield chunk
