"""Prometheus metrics, scraped as Prometheus would, after real requests to the demo models."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, scrape

pytestmark = pytest.mark.slow


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_requests_tokens_and_processes_are_counted(launched: InferdServer) -> None:
    started = time.monotonic()
    before = scrape(launched)
    client = launched.openai()
    reply = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=4,
    )
    assert reply.usage is not None
    # A stream that did not ask for usage: inferd counts its tokens all the same, and the
    # client sees no usage event it did not ask for.
    chunks = list(
        client.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            temperature=0,
            stream=True,
        )
    )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    streamed = sum(1 for chunk in chunks if chunk.choices[0].delta.content)
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
    # The stream's own tokens (up to 5) are in the count, not only the whole answer's.
    assert reply.usage.completion_tokens + max(streamed, 1) <= completion
    assert completion <= reply.usage.completion_tokens + 5
    gaps = value(after, "inferd_inter_token_latency_seconds_count", **chat) - value(
        before, "inferd_inter_token_latency_seconds_count", **chat
    )
    assert gaps >= len(chunks) - 2  # every event after the first, [DONE] aside
    embed = {"model": EMBEDDING, "endpoint": "/embeddings", "status": "200"}
    assert value(after, "inferd_requests_total", **embed) >= 1

    assert value(after, "inferd_model_replicas", model=LLM, status="ready") >= 1
    assert value(after, "inferd_model_requests_in_flight", model=LLM) == 0
    assert value(after, "inferd_model_requests_queued", model=LLM) == 0
    assert value(after, "inferd_model_slots", model=LLM, replica="0") == 4  # llama.cpp's
    assert value(after, "inferd_model_slots", model=EMBEDDING, replica="0") == 64
    # The engines' own figures, labelled with the model: llama.cpp's token counters, and the
    # embedding batcher's passes.
    llama = {"model_uid": LLM, "replica": "0"}
    assert value(after, "llamacpp:tokens_predicted_total", **llama) > 0
    batches = {"model_uid": EMBEDDING, "replica": "0"}
    assert value(after, "inferd_engine_batch_items_count", **batches) >= 1
    assert value(after, "inferd_engine_batch_items_sum", **batches) >= 2
    # The embedding's pass computed for a while, and not for longer than the test took.
    busy = value(after, "inferd_engine_busy_seconds_total", **batches) - value(
        before, "inferd_engine_busy_seconds_total", **batches
    )
    assert 0 < busy < time.monotonic() - started
    assert value(after, "inferd_model_process_resident_memory_bytes", model=LLM, replica="0") > 50e6


def test_a_stream_its_client_left_is_counted_apart(launched: InferdServer) -> None:
    chat = {"model": LLM, "endpoint": "/chat/completions"}
    before = scrape(launched)
    body = {
        "model": LLM,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 2000,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", f"{launched.url}/v1/chat/completions", json=body, timeout=60) as r:
        assert next(line for line in r.iter_lines() if line.startswith("data: "))
    # Hung up after the first token: not a 200, but nginx's 499 "client closed request".
    deadline = time.monotonic() + 60
    while True:
        after = scrape(launched)
        left = value(after, "inferd_requests_total", **chat, status="499")
        freed = value(after, "inferd_model_requests_in_flight", model=LLM) == 0
        if left - value(before, "inferd_requests_total", **chat, status="499") == 1 and freed:
            break
        assert time.monotonic() < deadline, "the abandoned stream was not counted"
        time.sleep(0.2)
    assert value(after, "inferd_requests_total", **chat, status="200") == value(
        before, "inferd_requests_total", **chat, status="200"
    )
