"""Aborting requests: Xinference's `abort_request`, and clients that stop waiting.

Each case checks that llama.cpp itself cancelled the generation (its log says so, and the
replica has nothing in flight), not only that the client got an answer early.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from tests.conftest import LLM, InferdServer

pytestmark = pytest.mark.slow

# Long enough that it cannot finish during a test: ~40 s of generation on a 2-core machine.
LONG = {"max_tokens": 2000, "ignore_eos": True, "temperature": 0}
MESSAGES = [{"role": "user", "content": "Tell me a very long story."}]


def cancelled_tasks(server: InferdServer) -> int:
    log = httpx.get(f"{server.url}/v1/models/{LLM}/logs", params={"tail": 5000}, timeout=10).text
    return log.count("cancel task")


def wait_idle(server: InferdServer, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(r["inflight"] == 0 for r in server.models()[LLM]["replicas"]):
            return
        time.sleep(0.1)
    raise AssertionError("the model still has requests in flight")


def wait_for(condition, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_abort_a_whole_answer_with_xinference_client(launched: InferdServer) -> None:
    xclient = RESTfulClient(launched.url)
    model = xclient.get_model(LLM)
    before = cancelled_tasks(launched)
    outcome: dict[str, object] = {}

    def chat() -> None:
        try:
            outcome["reply"] = model.chat(
                messages=MESSAGES, generate_config={**LONG, "request_id": "story-1"}
            )
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=chat)
    thread.start()
    wait_for(lambda: launched.models()[LLM]["replicas"][0]["inflight"] == 1)
    time.sleep(0.5)  # let it generate a little
    assert xclient.abort_request(LLM, "story-1")["aborted"] is True
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "was aborted" in str(outcome.get("error")), outcome
    wait_idle(launched)
    wait_for(lambda: cancelled_tasks(launched) > before)


def test_abort_a_stream(launched: InferdServer) -> None:
    client = launched.openai()
    stream = client.chat.completions.create(
        model=LLM,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_body=LONG,
        extra_headers={"X-Request-Id": "story-2"},
    )
    assert stream.response.headers["x-request-id"] == "story-2"
    received = 0
    with pytest.raises(openai.APIError, match="was aborted"):
        for _ in stream:
            received += 1
            if received == 3:
                answer = httpx.post(
                    f"{launched.url}/v1/models/{LLM}/requests/story-2/abort",
                    json={"block_duration": 0},
                    timeout=10,
                )
                assert answer.json()["aborted"] is True
    assert received < 100
    wait_idle(launched)


def test_abort_before_the_request_blocks_its_id(launched: InferdServer) -> None:
    xclient = RESTfulClient(launched.url)
    assert xclient.abort_request(LLM, "not-yet", block_duration=30)["aborted"] is False
    client = launched.openai()
    with pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(
            model=LLM,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=3,
            extra_body={"request_id": "not-yet"},
        )
    assert caught.value.body["code"] == "request_aborted"  # type: ignore[index]
    # Other ids are untouched.
    reply = client.chat.completions.create(
        model=LLM,
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=3,
        extra_body={"request_id": "another"},
    )
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_abort_names_an_unknown_model(launched: InferdServer) -> None:
    answer = httpx.post(f"{launched.url}/v1/models/nope/requests/x/abort", timeout=10)
    assert answer.status_code == 404
    assert answer.json()["error"]["param"] == "model_uid"


def test_a_client_that_gives_up_frees_the_slot(launched: InferdServer) -> None:
    before = cancelled_tasks(launched)
    body = {"model": LLM, "messages": MESSAGES, **LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{launched.url}/v1/chat/completions", json=body, timeout=2)
    wait_idle(launched)
    wait_for(lambda: cancelled_tasks(launched) > before)


def test_a_model_process_ends_a_whole_answer_whose_connection_closes(
    launched: InferdServer,
) -> None:
    """The server's relay closes its connection to the model process when its client leaves or
    the request runs out of time; the process must end the generation then by itself, not only
    when the abort that follows reaches it (that one can be lost, or overtake the request)."""
    uid = "abort-one-slot"
    launched.cli("launch", "-n", LLM, "-u", uid, "--n_parallel", "1")
    try:
        pid = launched.models()[uid]["replicas"][0]["pid"]
        # `python -m inferd.runtime.worker CONFIG SOCKET`: talk to the process as the server does.
        socket = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[-2].decode()
        transport = httpx.HTTPTransport(uds=socket)
        story = {"model": uid, "messages": MESSAGES, **LONG}
        process = httpx.Client(transport=transport, base_url="http://model")
        with process, pytest.raises(httpx.ReadTimeout):
            process.post("/chat/completions", json=story, timeout=2)
        log = f"{launched.url}/v1/models/{uid}/logs"
        wait_for(lambda: "cancel task" in httpx.get(log, params={"tail": 200}, timeout=10).text)
        # The only slot is free: a short answer comes at once, not after the story.
        reply = httpx.post(
            f"{launched.url}/v1/chat/completions",
            json={**story, "max_tokens": 2},
            timeout=30,
        )
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
    finally:
        launched.cli("terminate", uid)
