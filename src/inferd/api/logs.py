"""Reading a model's log file: the last lines, and following it as it grows."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

_CHUNK = 64 * 1024


def read_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a file, reading only as much of its end as needed."""
    if lines == 0:
        return ""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            position, data = end, b""
            while position > 0 and data.count(b"\n") <= lines:
                step = min(_CHUNK, position)
                position -= step
                f.seek(position)
                data = f.read(step) + data
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", "replace")
    kept = text.splitlines(keepends=True)[-lines:]
    return "".join(kept)


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
