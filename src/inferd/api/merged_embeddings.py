"""Embedding requests bound for one model process, sent to it together when they would
otherwise pile up: the relay's side of the model's dynamic batching.

A model process spends about as much of its interpreter on receiving and answering one request
as on a short text's share of a forward pass, and that interpreter also drives the GPU. So
past `IN_FLIGHT` requests on their way to one process, a relay (the server, or each API
process) holds the next ones back and, as an answer comes in, sends everything held with the
same options as one request, then splits the answer into each client's own: its vectors,
indexed from 0, and its own token counts (which the model process lists per input when asked,
`usage_per_input`). Nothing waits on a timer: a request that finds fewer than `IN_FLIGHT` on
their way goes at once, untouched, and one client sending one request at a time never waits
for another's.

A merged request the model refuses is sent again request by request, so one bad input fails
only its own request; a connection that breaks fails each request as it would have alone, and
the relay's own retry goes on from there."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from inferd.api.whole_answers import Whole, post_whole

# One request being computed while the next is on its way, per relaying process: two kept the
# model process busy on an H200 (benchmarks/results/embeddings_h200.txt, run 5).
IN_FLIGHT = 2
# Texts a merged request carries at most: the model's forward passes take up to 64.
MAX_TEXTS = 64


@dataclass
class _Held:
    body: dict[str, Any]
    content: bytes  # the body as JSON, as it goes when sent alone
    headers: dict[str, str]
    options: bytes  # what else than the texts must match for requests to merge
    answer: asyncio.Future[Whole]


@dataclass
class _Target:
    """One model process as this relay sees it."""

    in_flight: int = 0
    held: deque[_Held] = field(default_factory=deque)


class MergedEmbeddings:
    def __init__(self, in_flight: int = IN_FLIGHT, max_texts: int = MAX_TEXTS):
        self.in_flight = in_flight
        self.max_texts = max_texts
        # Keyed by the session for the model's socket: one per model process (the server's)
        # or per socket (a front's); dropped when nothing is on its way or held.
        self._targets: dict[aiohttp.ClientSession, _Target] = {}
        self._sending: set[asyncio.Task[None]] = set()

    async def post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        body: dict[str, Any],
        content: bytes,
        headers: dict[str, str],
    ) -> Whole:
        """The model's answer to the embeddings `body` (its `input` a list of texts; `content`
        is it as JSON), as if it had been sent alone."""
        target = self._targets.get(session)
        if target is None:
            target = self._targets[session] = _Target()
        if target.in_flight < self.in_flight and not target.held:
            target.in_flight += 1
            try:
                return await post_whole(session, url, content, headers)
            finally:
                self._sent(session, url, target)
        options = orjson.dumps({k: v for k, v in body.items() if k != "input"}, option=_SORTED)
        held = _Held(body, content, headers, options, asyncio.get_running_loop().create_future())
        target.held.append(held)
        try:
            return await held.answer
        except asyncio.CancelledError:
            # The client left or ran out of time: still held, it is never sent; already sent,
            # its part of the answer is dropped when it comes.
            if held in target.held:
                target.held.remove(held)
            raise

    def _sent(self, session: aiohttp.ClientSession, url: str, target: _Target) -> None:
        """One request's answer is in: what is held goes on, merged by options."""
        target.in_flight -= 1
        while target.held and target.in_flight < self.in_flight:
            target.in_flight += 1
            task = asyncio.create_task(self._send(session, url, target, self._take(target)))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)
        if not target.in_flight and not target.held:
            del self._targets[session]

    def _take(self, target: _Target) -> list[_Held]:
        """The oldest held request and those after it with the same options, up to
        `max_texts` texts (the oldest goes even if it alone holds more)."""
        first = target.held.popleft()
        taken, texts = [first], len(first.body["input"])
        for held in list(target.held):
            size = len(held.body["input"])
            if held.options == first.options and texts + size <= self.max_texts:
                target.held.remove(held)
                taken.append(held)
                texts += size
        return [held for held in taken if not held.answer.done()]

    async def _send(
        self, session: aiohttp.ClientSession, url: str, target: _Target, taken: list[_Held]
    ) -> None:
        try:
            if len(taken) == 1:
                await _alone(taken[0], session, url)
            elif taken:
                await self._send_merged(session, url, taken)
        finally:
            self._sent(session, url, target)

    async def _send_merged(
        self, session: aiohttp.ClientSession, url: str, taken: list[_Held]
    ) -> None:
        merged = {
            **taken[0].body,
            "input": [text for held in taken for text in held.body["input"]],
            "usage_per_input": True,
        }
        try:
            content = orjson.dumps(merged)  # each one's alone went through json_text already
            whole = await post_whole(session, url, content, {"X-Request-Id": uuid.uuid4().hex})
        except Exception as exc:
            for held in taken:
                _fail(held, exc)
            return
        answers = _split(whole, [len(held.body["input"]) for held in taken])
        if answers is None:
            # Refused (one input may be at fault) or not understood: each goes on its own, so
            # only a request at fault fails.
            await asyncio.gather(*(_alone(held, session, url) for held in taken))
            return
        for held, answer in zip(taken, answers, strict=True):
            if not held.answer.done():
                held.answer.set_result(answer)


def _split(whole: Whole, sizes: list[int]) -> list[Whole] | None:
    """A merged request's answer as the answers to its parts (`sizes` texts each, in order),
    each with its own vectors indexed from 0 and its own token counts; None unless the model
    answered all of them."""
    if whole.status != 200:
        return None
    try:
        answer = orjson.loads(whole.body)
        counts: list[int] = answer.pop("usage_per_input")
        data: list[dict[str, Any]] = answer["data"]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None
    if len(data) != sum(sizes) or len(counts) != len(data):
        return None
    answers, start = [], 0
    for size in sizes:
        end = start + size
        tokens = sum(counts[start:end])
        own = {
            **answer,
            "data": [{**item, "index": i} for i, item in enumerate(data[start:end])],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        answers.append(Whole(200, whole.content_type, orjson.dumps(own)))
        start = end
    return answers


async def _alone(held: _Held, session: aiohttp.ClientSession, url: str) -> None:
    """`held` sent as it came, its answer or failure handed to whoever waits on it."""
    try:
        whole = await post_whole(session, url, held.content, held.headers)
    except Exception as exc:
        _fail(held, exc)
        return
    if not held.answer.done():
        held.answer.set_result(whole)


def _fail(held: _Held, exc: Exception) -> None:
    if not held.answer.done():
        held.answer.set_exception(exc)


_SORTED = orjson.OPT_SORT_KEYS
# Every relay in a process (the server's, a front's) sends its embeddings through this one.
EMBEDDINGS = MergedEmbeddings()
