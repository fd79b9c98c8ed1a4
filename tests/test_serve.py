"""`inferd serve` as a whole: start-up launches, clean shutdown, crashes that stay contained."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, pid_alive

pytestmark = pytest.mark.slow


def _wait_ready(server: InferdServer, uids: set[str], timeout: float = 120) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = server.models()
        if uids <= {uid for uid, m in models.items() if m["status"] == "ready"}:
            return models
        time.sleep(0.2)
    raise AssertionError(f"models not ready: {server.models()}\n{server.log()}")


def _wait_gone(pids: list[int], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(p) for p in pids)


def test_serve_launches_models_and_sigterm_stops_them(tmp_path: Path) -> None:
    server = InferdServer(tmp_path, "--launch", LLM, "--launch", EMBEDDING)
    try:
        # The API answers before the models are loaded; they join as they become ready.
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        models = _wait_ready(server, {LLM, EMBEDDING})
        client = server.openai()
        assert (
            client.chat.completions.create(
                model=LLM, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            .choices[0]
            .message.content
            is not None
        )
        assert len(client.embeddings.create(model=EMBEDDING, input="hi").data[0].embedding) == 384
        pids = [models[LLM]["pid"], models[EMBEDDING]["pid"]]
        assert all(pid_alive(p) for p in pids)
    finally:
        code = server.stop(signal.SIGTERM)
    # uvicorn re-raises the signal once its shutdown is complete, as a daemon should.
    assert code in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()
    _wait_gone(pids, timeout=1)  # stopped before the server exited


def test_unknown_launch_name_stops_serve_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no model named 'nope'"):
        InferdServer(tmp_path, "--launch", "nope")


def test_model_crash_is_contained_and_server_sigkill_takes_models_down(tmp_path: Path) -> None:
    server = InferdServer(tmp_path, "--launch", LLM)
    try:
        pid = _wait_ready(server, {LLM})[LLM]["pid"]
        os.kill(pid, signal.SIGKILL)
        _wait_gone([pid])
        response = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": LLM, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "model_unavailable"
        assert response.headers["Retry-After"]
        assert httpx.get(f"{server.url}/health").status_code == 200

        # A fresh launch under another uid works, and it dies with a SIGKILLed server.
        assert server.cli("launch", "-n", LLM, "-u", "second").stdout.strip() == "second"
        second = server.models()["second"]["pid"]
    finally:
        server.stop(signal.SIGKILL)
    _wait_gone([second], timeout=10)
