"""Prometheus metrics, scraped as Prometheus would, after real requests to the demo models."""

from __future__ import annotations

import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, scrape

pytestmark = pytest.mark.slow


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_tokens_and_processes_are_counted(launched: InferdServer) -> None:
    before = scrape(launched)
    client = launched.openai()
    reply = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
    )
    assert reply.usage is not None
    for _ in client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
        stream=True,
    ):
        pass
    client.embeddings.create(model=EMBEDDING, input=["one", "two"])
    after = scrape(launched)

    chat = {"model": LLM, "endpoint": "/chat/completions"}
    assert (
        value(after, "inferd_requests_total", **chat, status="200")
        - value(before, "inferd_requests_total", **chat, status="200")
        == 2
    )
    assert value(after, "inferd_request_seconds_count", **chat) >= 2
    assert value(after, "inferd_time_to_first_token_seconds_count", **chat) >= 1
    completion = value(after, "inferd_tokens_total", model=LLM, kind="completion") - value(
        before, "inferd_tokens_total", model=LLM, kind="completion"
    )
    assert completion >= reply.usage.completion_tokens
    embed = {"model": EMBEDDING, "endpoint": "/embeddings", "status": "200"}
    assert value(after, "inferd_requests_total", **embed) >= 1

    assert value(after, "inferd_model_replicas", model=LLM, status="ready") >= 1
    assert value(after, "inferd_model_requests_in_flight", model=LLM) == 0
    assert value(after, "inferd_model_process_resident_memory_bytes", model=LLM, replica="0") > 50e6
