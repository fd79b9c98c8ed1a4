"""Model lifecycles inside one server: cancelled launches, freed slots."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, pid_alive, run_together

pytestmark = pytest.mark.slow


def test_terminate_during_launch_cancels_it(launched: InferdServer) -> None:
    result: dict[str, httpx.Response] = {}

    def launch() -> None:
        result["response"] = httpx.post(
            f"{launched.url}/v1/models",
            json={"model_name": EMBEDDING, "model_type": "embedding", "model_uid": "cancel-me"},
            timeout=300,
        )

    thread = threading.Thread(target=launch)
    thread.start()
    deadline = time.monotonic() + 60
    pid = None
    while time.monotonic() < deadline:
        model = launched.models().get("cancel-me")
        if model and model["status"] == "loading" and model["pid"]:
            pid = model["pid"]
            break
        time.sleep(0.05)
    assert pid is not None, "the launch never reached its loading stage"

    assert httpx.delete(f"{launched.url}/v1/models/cancel-me", timeout=60).status_code == 200
    thread.join(60)
    response = result["response"]
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "launch_cancelled"
    assert "cancel-me" not in launched.models()
    assert not pid_alive(pid)


def test_client_disconnect_frees_the_slot(launched: InferdServer) -> None:
    """With one slot, a stream abandoned mid-way must not keep the next request waiting."""
    launched.cli("launch", "-n", LLM, "-u", "one-slot", "--n_parallel", "1")
    try:
        body = {
            "model": "one-slot",
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
            "max_tokens": 8000,  # minutes of generation if nobody stops it
            "stream": True,
        }
        with httpx.stream(
            "POST", f"{launched.url}/v1/chat/completions", json=body, timeout=60
        ) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in received)

        # The one slot is free again: this answers long before the abandoned story would end.
        reply = httpx.post(
            f"{launched.url}/v1/chat/completions",
            json={"model": "one-slot", "messages": body["messages"], "max_tokens": 2},
            timeout=30,
        )
        assert reply.status_code == 200
    finally:
        launched.cli("terminate", "one-slot")


def test_terminate_lets_inflight_requests_finish(launched: InferdServer) -> None:
    launched.cli("launch", "-n", LLM, "-u", "graceful")
    pid = launched.models()["graceful"]["pid"]
    body = {
        "model": "graceful",
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": 60,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    terminated = threading.Thread(
        target=lambda: httpx.delete(f"{launched.url}/v1/models/graceful", timeout=60)
    )
    received = []
    with httpx.stream(
        "POST", f"{launched.url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and not terminated.is_alive() and not received:
                terminated.start()  # while the answer is being written
            if line:
                received.append(line)
    terminated.join(60)
    assert received[-1] == "data: [DONE]"
    assert any('"completion_tokens":60' in line for line in received)
    assert "graceful" not in launched.models()
    assert not pid_alive(pid)


def test_concurrent_launches_of_one_uid_start_one_model(launched: InferdServer) -> None:
    codes: list[int] = []

    def launch() -> None:
        r = httpx.post(
            f"{launched.url}/v1/models",
            json={"model_name": LLM, "model_uid": "only-once"},
            timeout=120,
        )
        codes.append(r.status_code)

    run_together(launch, launch, launch)
    try:
        assert sorted(codes) == [200, 409, 409]
        assert len(launched.models()["only-once"]["replicas"]) == 1
    finally:
        launched.cli("terminate", "only-once")
