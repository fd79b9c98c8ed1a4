"""A model process's whole answer (not a stream) to a JSON body, as the relays send for it."""

from __future__ import annotations

from typing import NamedTuple

import aiohttp


class Whole(NamedTuple):
    """A model process's whole answer: status, content type, body."""

    status: int
    content_type: str
    body: bytes


async def post_whole(
    session: aiohttp.ClientSession, url: str, content: bytes, headers: dict[str, str]
) -> Whole:
    """The model process's whole answer to the JSON `content` (the server's relay, a front's)."""
    async with session.post(
        url, data=content, headers={**headers, "Content-Type": "application/json"}
    ) as answer:
        body = await answer.read()
        return Whole(answer.status, answer.headers.get("Content-Type", "application/json"), body)
