"""Relays a validated request to a model process and its answer back, bytes untouched."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from inferd.api import json_text
from inferd.api.auth import check_model
from inferd.api.metrics import (
    FIRST_TOKEN,
    INTER_TOKEN,
    LATENCY,
    RELAYED_BY,
    REQUESTS,
    TOKENS,
)
from inferd.api.sse import StallGuardedResponse, events
from inferd.errors import (
    InferdError,
    InvalidRequest,
    ModelUnavailable,
    RequestAborted,
    RequestTimedOut,
    TooManyRequests,
    UpstreamError,
)
from inferd.runtime.aborts import ClientLeft, cancel, unless_client_leaves
from inferd.runtime.frames import FRAMED, ChannelError, ChannelRefused, Whole
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager
from inferd.runtime.process import ModelProcess
from inferd.runtime.replica import Replica

log = logging.getLogger("inferd.proxy")

# A request that failed before any answer because its model process is gone (refused
# connection, or a pooled connection the dead process left) produced nothing for the client,
# so it is sent again to another replica, or to the restarted process.
ATTEMPTS = 5
# No connection to the model process (a sole timeout set on whole answers is the connect's).
NOT_CONNECTED = (
    ChannelRefused,
    httpx.ConnectError,
    httpx.ConnectTimeout,
    aiohttp.ClientConnectorError,
    aiohttp.ServerTimeoutError,
)


async def whole_answer(
    manager: ModelManager,
    instance: ModelInstance,
    path: str,
    body: dict,
    client: Request | None = None,
) -> Any:
    """A whole answer's JSON, for the APIs that rewrite it; a refusal is raised again."""
    response = await relay(manager, instance, path, body, stream=False, client=client)
    data = orjson.loads(bytes(response.body)) if response.body else {}
    if response.status_code != 200:
        raise upstream_error(response.status_code, data)
    return data


def upstream_error(status: int, data: Any) -> UpstreamError:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        error = {"message": str(data or "the client left")}
    return UpstreamError(status, error)


async def opened_stream(
    manager: ModelManager,
    instance: ModelInstance,
    path: str,
    body: dict,
    client: Request | None = None,
) -> StreamingResponse:
    """A streamed answer, begun; a refusal before its first event is raised again."""
    response = await relay(manager, instance, path, body, stream=True, client=client)
    if not isinstance(response, StreamingResponse):
        raise upstream_error(response.status_code, orjson.loads(bytes(response.body) or b"{}"))
    return response


def _check_length(instance: ModelInstance, body: dict) -> None:
    """A max_tokens the model's context cannot hold is refused, as vLLM does, rather than run
    until the context fills."""
    limit = instance.context_window()
    wanted = body.get("max_tokens")
    if limit and isinstance(wanted, int) and wanted > limit:
        raise InvalidRequest(
            f"max_tokens is {wanted}, but {instance.uid!r} holds {limit} tokens in one request, "
            f"prompt and answer together; ask for at most {limit}",
            param="max_tokens",
        )


def request_id_of(body: dict, client: Request | None) -> str:
    """The id a client gave its request (Xinference's `request_id` field, or the
    `X-Request-Id` header), else a new one; it is what abort names."""
    given = body.pop("request_id", None) or (client.headers.get("x-request-id") if client else None)
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not 0 < len(given) <= 128 or "/" in given:
        raise InvalidRequest(
            "request_id must be a string of 1 to 128 characters without '/'", param="request_id"
        )
    return given


async def relay(
    manager: ModelManager,
    instance: ModelInstance,
    path: str,
    body: dict,
    stream: bool,
    client: Request | None = None,
) -> Response:
    check_model(instance.uid)
    if path in ("/chat/completions", "/completions"):
        _check_length(instance, body)
    request_id = request_id_of(body, client)
    if manager.aborts.blocked(instance.uid, request_id):
        raise RequestAborted(request_id)
    started = time.perf_counter()
    limit = manager.settings.request_timeout or None
    deadline = started + limit if limit else None
    wants_usage = _count_stream_usage(path, body, stream)
    content = json_text.dumps(body, "")
    headers = {"X-Request-Id": request_id}
    for attempt in range(ATTEMPTS):
        replica = manager.try_acquire(instance)  # no tasks to make when a slot is free
        try:
            if replica is None:
                replica = await unless_client_leaves(manager.acquire(instance), client, None)
        except ClientLeft:
            _record(instance.uid, path, CLIENT_LEFT, started)
            return Response(status_code=CLIENT_LEFT)  # left while queued; nobody reads this
        except TooManyRequests:
            REQUESTS.labels(instance.uid, path, "429").inc()
            raise
        if manager.aborts.blocked(instance.uid, request_id):  # aborted while it waited
            manager.release(instance, replica)
            raise RequestAborted(request_id)
        process = replica.process
        assert process is not None
        sending: Awaitable[aiohttp.ClientResponse | Whole] = (
            _opened(process, path, content, headers)
            if stream
            else _whole(process, path, content, headers)
        )
        try:
            upstream = await unless_client_leaves(sending, None if stream else client, deadline)
        except (httpx.HTTPError, aiohttp.ClientError, ChannelError) as exc:
            manager.release(instance, replica)
            await asyncio.sleep(0.05 * (attempt + 1))  # time for the supervisor to notice
            refused = isinstance(exc, NOT_CONNECTED)
            if refused:
                process.mark_unreachable()
            if refused or not process.alive:
                continue
            raise stopped(instance.uid, exc) from exc
        except (ClientLeft, TimeoutError) as exc:
            # A generation nobody will read, or one past its time, should not keep its slot.
            cancelled = await cancel(process.client, request_id)
            manager.release(instance, replica)
            log.info(
                "%s: request %s %s; the model process %s",
                instance.uid,
                request_id,
                "left by its client" if isinstance(exc, ClientLeft) else "out of time",
                "cancelled it" if cancelled else "had ended it (or had not begun it)",
            )
            if isinstance(exc, ClientLeft):
                _record(instance.uid, path, CLIENT_LEFT, started)
                return Response(status_code=CLIENT_LEFT)
            _record(instance.uid, path, 504, started)
            raise timed_out(limit) from None
        except BaseException:
            manager.release(instance, replica)
            raise
        break
    else:
        raise ModelUnavailable(f"model {instance.uid!r} is not answering", param="model")

    if isinstance(upstream, Whole):
        manager.release(instance, replica, time.perf_counter() - started)
        whole: Whole | None = upstream
    else:
        whole = await _refusal(
            instance,
            upstream,
            lambda: manager.release(instance, replica, time.perf_counter() - started),
        )
    if whole is not None:
        status, content_type, data = whole
        _record(instance.uid, path, status, started, data, content_type)
        return Response(data, status_code=status, media_type=content_type, headers=headers)
    assert isinstance(upstream, aiohttp.ClientResponse)
    lease = _Lease(manager, instance, replica, upstream, path, started)
    return StallGuardedResponse(
        _forward(instance, lease, deadline, limit, wants_usage),
        stall_timeout=manager.settings.send_timeout,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **headers},
        # If the client leaves before the stream starts, the generator never runs its
        # `finally`; the background task still frees the replica and stops the model's work.
        background=BackgroundTask(lease.closed),
    )


async def _opened(
    process: ModelProcess, path: str, content: bytes, headers: dict[str, str]
) -> aiohttp.ClientResponse:
    """A streamed answer with its headers read and its events still to come. aiohttp, as for
    whole answers: relaying an event costs a third of the CPU httpx takes, which is what
    limits a server streaming to a hundred clients at once."""
    return await process.session().post(
        process.base_url + path,
        data=content,
        headers={**headers, "Content-Type": "application/json"},
    )


async def _whole(
    process: ModelProcess, path: str, content: bytes, headers: dict[str, str]
) -> Whole:
    """A model process's whole answer: in frames where the route and the process take them."""
    channel = process.frames() if path in FRAMED else None
    if channel is not None:
        return await channel.post(path, content, headers["X-Request-Id"])
    return await post_whole(process.session(), process.base_url + path, content, headers)


async def post_whole(
    session: aiohttp.ClientSession, url: str, content: bytes, headers: dict[str, str]
) -> Whole:
    """A model process's whole answer to a JSON body, over HTTP."""
    async with session.post(
        url, data=content, headers={**headers, "Content-Type": "application/json"}
    ) as answer:
        body = await answer.read()
        return Whole(answer.status, answer.headers.get("Content-Type", "application/json"), body)


async def _refusal(
    instance: ModelInstance, upstream: aiohttp.ClientResponse, release: Callable[[], None]
) -> Whole | None:
    """A stream the model process refused before it began (an error body, not events), read
    whole; None when events are coming."""
    content_type = upstream.headers.get("Content-Type", "application/json")
    if content_type.startswith("text/event-stream"):
        return None
    try:
        return Whole(upstream.status, content_type, await upstream.read())
    except aiohttp.ClientError as exc:
        raise stopped(instance.uid, exc) from exc
    finally:
        upstream.release()
        release()


def _count_stream_usage(path: str, body: dict, stream: bool) -> bool:
    """Ask a streamed generation for its token counts, so they reach the metrics; whether the
    client itself asked for them (if not, the usage event is not passed on)."""
    if not stream or path not in _COUNTS_TOKENS:
        return False
    options = body.get("stream_options") or {}
    wanted = bool(options.get("include_usage"))
    body["stream_options"] = {**options, "include_usage": True}
    return wanted


class _Lease:
    """One streamed answer's hold on a replica, released exactly once."""

    def __init__(
        self,
        manager: ModelManager,
        instance: ModelInstance,
        replica: Replica,
        upstream: aiohttp.ClientResponse,
        path: str,
        started: float,
    ):
        self.manager, self.instance, self.replica, self.upstream = (
            manager,
            instance,
            replica,
            upstream,
        )
        self.path, self.started = path, started
        self._closing: asyncio.Task[None] | None = None

    def close(self) -> Awaitable[None]:
        """Ends the upstream answer (the model process sees the disconnect and stops) and frees
        the replica, once. The work runs as a task of its own: when a client hangs up, this is
        called from a task Starlette keeps cancelling, and a close cut short would leave the
        model generating for nobody; the close goes on even if the wait for it is cancelled."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
            _CLOSING.add(self._closing)  # the loop holds tasks only weakly
            self._closing.add_done_callback(_closed)
        return asyncio.shield(self._closing)

    async def closed(self) -> None:
        """`close` for Starlette's background task, which wants a coroutine function."""
        await self.close()

    async def _close(self) -> None:
        try:
            if self.upstream.content.at_eof():
                self.upstream.release()  # the connection goes back to the pool
            else:
                self.upstream.close()  # the model process sees the hang-up and stops
        finally:
            held = time.perf_counter() - self.started
            self.manager.release(self.instance, self.replica, held)


_CLOSING: set[asyncio.Task[None]] = set()


def _closed(task: asyncio.Task[None]) -> None:
    _CLOSING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        # Whoever waited may have been cancelled; the replica is free either way.
        log.debug("closing a relayed stream failed: %r", task.exception())


def stopped(uid: str, exc: Exception) -> ModelUnavailable:
    return ModelUnavailable(
        f"model {uid!r} stopped while answering ({type(exc).__name__}); it is being restarted",
        param="model",
    )


def timed_out(limit: float | None) -> RequestTimedOut:
    return RequestTimedOut(
        f"the answer took longer than this server allows one request ({limit:.0f}s, "
        "INFERD_REQUEST_TIMEOUT); ask for fewer max_tokens or raise the limit",
        param="max_tokens",
    )


def _error_event(error: InferdError) -> bytes:
    body = {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }
    return b"data: " + orjson.dumps(body) + b"\n\ndata: [DONE]\n\n"


async def _forward(
    instance: ModelInstance,
    lease: _Lease,
    deadline: float | None,
    limit: float | None,
    wants_usage: bool,
) -> AsyncIterator[bytes]:
    """The model's events, passed on whole as they come, timing the first one and the gaps
    between the rest; the usage event inferd asked for is read, and dropped unless the client
    asked for it too."""
    uid, status = instance.uid, lease.upstream.status
    last: float | None = None
    gaps = INTER_TOKEN.labels(uid, lease.path)
    recorded = False

    def record(code: int) -> None:
        nonlocal recorded
        if not recorded:
            recorded = True
            _record(uid, lease.path, code, lease.started)

    try:
        async with asyncio.timeout_at(_loop_time(deadline)):
            async for event in events(lease.upstream.content.iter_any()):
                now = time.perf_counter()
                usage = _usage_of(event) if b'"usage":{' in event else None
                if usage is not None:
                    TOKENS.labels(uid, "prompt").inc(usage.get("prompt_tokens") or 0)
                    TOKENS.labels(uid, "completion").inc(usage.get("completion_tokens") or 0)
                    if not wants_usage:
                        continue
                elif last is None:
                    FIRST_TOKEN.labels(uid, lease.path).observe(now - lease.started)
                    last = now
                elif event != b"data: [DONE]":
                    gaps.observe(now - last)
                    last = now
                else:
                    # Counted before the client has it: a client may hang up (OpenAI's SDK
                    # does) or ask for /metrics the moment it reads the end.
                    record(status)
                yield event + b"\n\n"
        record(status)
    except aiohttp.ClientError as exc:
        # Headers are gone already: end the stream with an error event the client can read.
        record(503)
        yield _error_event(stopped(instance.uid, exc))
    except TimeoutError:
        record(504)
        yield _error_event(timed_out(limit))
    finally:
        # Nothing here may wait before the close has started: a client that left cancels
        # every wait in this task.
        record(CLIENT_LEFT)
        await lease.close()


# nginx's "client closed request": an answer cut short because its client hung up.
CLIENT_LEFT = 499


def _usage_of(event: bytes) -> dict[str, Any] | None:
    """The token counts of a stream's usage-only event; None for any other event."""
    try:
        chunk = orjson.loads(event.removeprefix(b"data: "))
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict) or chunk.get("choices"):
        return None
    usage = chunk.get("usage")
    return usage if isinstance(usage, dict) else None


def _loop_time(deadline: float | None) -> float | None:
    """A perf_counter deadline on the event loop's clock."""
    if deadline is None:
        return None
    return asyncio.get_running_loop().time() + (deadline - time.perf_counter())


def _record(
    uid: str,
    path: str,
    status: int,
    started: float,
    body: bytes = b"",
    content_type: str = "",
) -> None:
    count(uid, path, status, time.perf_counter() - started, "server")
    if status == 200 and path in _COUNTS_TOKENS and content_type.startswith("application/json"):
        usage = orjson.loads(body).get("usage") or {}
        TOKENS.labels(uid, "prompt").inc(usage.get("prompt_tokens") or 0)
        TOKENS.labels(uid, "completion").inc(usage.get("completion_tokens") or 0)


def count(uid: str, path: str, status: int, seconds: float | None, by: str) -> None:
    """One relayed request in the metrics: its status, its time, who relayed it (the server,
    or a front)."""
    REQUESTS.labels(uid, path, str(status)).inc()
    RELAYED_BY.labels(by).inc()
    if seconds is not None:
        LATENCY.labels(uid, path).observe(seconds)


# Generation answers are small to parse; an embeddings body can be megabytes of floats.
_COUNTS_TOKENS = ("/chat/completions", "/completions")
