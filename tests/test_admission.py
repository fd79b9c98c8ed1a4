"""A busy model queues requests in a bounded line: past it, 429 with Retry-After; a client that
leaves the line or stops reading gives its place up; no request outlives the server's timeout.

The server here allows 2 waiting requests and 15 s per request, and the demo LLM is launched
with `request_limits=1` (Xinference's launch argument): one request at a time."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import uvicorn
from starlette.background import BackgroundTask

from inferd.api.sse import StallGuardedResponse
from tests.conftest import LLM, InferdServer, scrape

UID = "one-at-a-time"
STORY = [{"role": "user", "content": "Tell me a very long story."}]
TIMEOUT = 15


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    srv = InferdServer(
        tmp_path_factory.mktemp("inferd-queue"),
        env={
            "INFERD_MAX_QUEUE": "2",
            "INFERD_REQUEST_TIMEOUT": str(TIMEOUT),
            "INFERD_SEND_TIMEOUT": "2",
        },
    )
    response = httpx.post(
        f"{srv.url}/v1/models",
        json={"model_name": LLM, "model_uid": UID, "request_limits": 1},
        timeout=300,
    )
    assert response.status_code == 200, response.text
    yield srv
    srv.stop()


def queued(server: InferdServer) -> float:
    return scrape(server).get(("inferd_model_requests_queued", frozenset({("model", UID)})), 0)


def wait_for(condition: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def short_chat(server: InferdServer, results: list[int], **extra: object) -> None:
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": UID, "messages": STORY, "max_tokens": 2, **extra},
        timeout=60,
    )
    results.append(response.status_code)


class HeldSlot:
    """A streamed story that holds the model's one slot until closed."""

    def __init__(self, server: InferdServer):
        self.client = httpx.Client(timeout=60)
        body = {"model": UID, "messages": STORY, "max_tokens": 4000, "stream": True}
        self.stream = self.client.stream("POST", f"{server.url}/v1/chat/completions", json=body)
        self.response = self.stream.__enter__()
        self.lines = self.response.iter_lines()
        assert next(line for line in self.lines if line.startswith("data: "))

    def close(self) -> None:
        self.stream.__exit__(None, None, None)
        self.client.close()


@pytest.mark.slow
def test_a_full_queue_is_429_with_retry_after(busy: InferdServer) -> None:
    held = HeldSlot(busy)
    results: list[int] = []
    waiting = [threading.Thread(target=short_chat, args=(busy, results)) for _ in range(2)]
    for thread in waiting:
        thread.start()
    wait_for(lambda: queued(busy) == 2)

    refused = httpx.post(
        f"{busy.url}/v1/chat/completions",
        json={"model": UID, "messages": STORY, "max_tokens": 2},
        timeout=10,
    )
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["param"] == "model"
    assert "queue is full" in error["message"]

    held.close()  # the slot frees; the two in line are answered in turn
    for thread in waiting:
        thread.join(30)
    assert results == [200, 200]
    samples = scrape(busy)
    refusals = ("inferd_requests_total", "/chat/completions", "429")
    assert any(
        name == refusals[0] and ("endpoint", refusals[1]) in labels and ("status", "429") in labels
        for name, labels in samples
    )
    assert queued(busy) == 0


@pytest.mark.slow
def test_a_client_that_leaves_the_queue_gives_up_its_place(busy: InferdServer) -> None:
    held = HeldSlot(busy)
    try:
        # Three clients that give up after half a second, one after the other: each leaves
        # the line, so the next finds room (the line holds two).
        for _ in range(3):
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    f"{busy.url}/v1/chat/completions",
                    json={"model": UID, "messages": STORY, "max_tokens": 2},
                    timeout=httpx.Timeout(10, read=0.5),
                )
        wait_for(lambda: queued(busy) == 0)
    finally:
        held.close()
    results: list[int] = []
    short_chat(busy, results)
    assert results == [200]


@pytest.mark.slow
def test_no_answer_outlives_the_request_timeout(busy: InferdServer) -> None:
    started = time.monotonic()
    whole = httpx.post(
        f"{busy.url}/v1/chat/completions",
        json={"model": UID, "messages": STORY, "max_tokens": 4000},
        timeout=60,
    )
    assert whole.status_code == 504, whole.text
    error = whole.json()["error"]
    assert error["code"] == "request_timeout" and error["param"] == "max_tokens"
    assert TIMEOUT - 1 < time.monotonic() - started < TIMEOUT + 10

    # A stream ends with an error event the SDKs raise, then [DONE].
    body = {"model": UID, "messages": STORY, "max_tokens": 4000, "stream": True}
    with httpx.stream("POST", f"{busy.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert "request_timeout" in lines[-2] and lines[-1] == "data: [DONE]"

    # The model's one slot is free again at once.
    results: list[int] = []
    short_chat(busy, results)
    assert results == [200]


def test_a_client_that_stops_reading_is_dropped() -> None:
    """The response class every relayed stream uses, served by a real uvicorn to a reader that
    never reads. The listening socket's small send buffer stands in for buffers that have
    filled up (on loopback the kernel would otherwise absorb megabytes first)."""
    ended = threading.Event()
    released = threading.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"data: " + b"x" * 1024 + b"\n\n"
                await asyncio.sleep(0)
        finally:
            ended.set()

    async def app(scope: dict, receive: object, send: object) -> None:
        if scope["type"] != "http":
            return
        response = StallGuardedResponse(
            endless(),
            stall_timeout=1.0,
            media_type="text/event-stream",
            background=BackgroundTask(released.set),
        )
        await response(scope, receive, send)  # type: ignore[arg-type]

    listening = socket.socket()
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    reader.connect(listening.getsockname())
    reader.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    try:
        assert ended.wait(15) and released.wait(5), "the stalled stream was never dropped"
        assert time.monotonic() - started < 10
    finally:
        reader.close()
        server.should_exit = True
        thread.join(10)
