"""`inferd serve` as a whole: start-up launches, clean shutdown, crashes that stay contained."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, pid_alive, wait_gone, wait_ready

pytestmark = pytest.mark.slow


def test_serve_launches_models_and_sigterm_stops_them(tmp_path: Path) -> None:
    server = InferdServer(tmp_path, "--launch", LLM, "--launch", EMBEDDING)
    try:
        # The API answers before the models are loaded; they join as they become ready.
        assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
        models = wait_ready(server, {LLM, EMBEDDING})
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
    wait_gone(pids, timeout=1)  # stopped before the server exited


def test_unknown_launch_name_stops_serve_with_a_message(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no model named 'nope'"):
        InferdServer(tmp_path, "--launch", "nope")
