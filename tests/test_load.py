"""A bounded load test on the demo models: 200 concurrent streamed chats (a tenth of them hang up
after their first token) and 500 concurrent embedding requests end with no errors, nothing
left queued or in flight, and no memory growth between a first wave and a second.

The figures (latency percentiles, memory before and after) are printed and written to
test-artifacts/load.json."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, scrape

pytestmark = pytest.mark.slow

CHATS = 200
LEAVERS = 20  # of the chats, those that hang up after the first token
EMBEDDINGS = 500
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


async def chat(client: httpx.AsyncClient, index: int, leave: bool) -> dict[str, Any]:
    body = {
        "model": LLM,
        "messages": [{"role": "user", "content": f"Say something about the number {index}."}],
        "max_tokens": 8,
        "stream": True,
    }
    started = time.perf_counter()
    first: float | None = None
    events: list[str] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"status": response.status_code, "error": (await response.aread()).decode()}
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            first = first or time.perf_counter()
            events.append(line)
            if leave:
                break
    done = time.perf_counter()
    errors = [e for e in events if '"error"' in e]
    complete = leave or (events and events[-1] == "data: [DONE]")
    return {
        "status": 200 if complete and not errors else 599,
        "error": errors[0] if errors else None,
        "ttft": (first or done) - started,
        "seconds": done - started,
    }


async def embed(client: httpx.AsyncClient, index: int) -> dict[str, Any]:
    started = time.perf_counter()
    response = await client.post(
        "/v1/embeddings", json={"model": EMBEDDING, "input": [f"sentence number {index}"]}
    )
    ok = response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384
    return {
        "status": response.status_code if ok else 599,
        "error": None if ok else response.text[:300],
        "seconds": time.perf_counter() - started,
    }


async def wave(url: str, chats: int, embeddings: int) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        calls = [chat(client, i, leave=i % (CHATS // LEAVERS) == 0) for i in range(chats)]
        calls += [embed(client, i) for i in range(embeddings)]
        return await asyncio.gather(*calls)


def resident(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory(server: InferdServer) -> dict[str, int]:
    figures = {"server": resident(server.proc.pid)}
    for uid, info in server.models().items():
        figures[uid] = sum(r["memory_bytes"] or 0 for r in info["replicas"])
    return figures


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def test_the_demo_models_take_a_bounded_load(launched: InferdServer) -> None:
    # A first wave of the same size fills what is meant to fill (prompt caches, thread pools,
    # allocator arenas); the second must leave memory where the first did.
    asyncio.run(wave(launched.url, CHATS, EMBEDDINGS))
    before = memory(launched)
    started = time.perf_counter()
    results = asyncio.run(wave(launched.url, CHATS, EMBEDDINGS))
    elapsed = time.perf_counter() - started
    after = memory(launched)

    failed = [r for r in results if r["status"] != 200]
    assert not failed, failed[:5]
    chats, embeds = results[:CHATS], results[CHATS:]
    samples = scrape(launched)
    for uid in (LLM, EMBEDDING):
        labels = frozenset({("model", uid)})
        assert samples[("inferd_model_requests_in_flight", labels)] == 0
        assert samples[("inferd_model_requests_queued", labels)] == 0

    figures = {
        "chats": CHATS,
        "chats_hung_up": LEAVERS,
        "embeddings": EMBEDDINGS,
        "errors": len(failed),
        "seconds": round(elapsed, 1),
        "chat_ttft_p50": round(statistics.median(r["ttft"] for r in chats), 3),
        "chat_ttft_p99": round(percentile([r["ttft"] for r in chats], 0.99), 3),
        "chat_p99": round(percentile([r["seconds"] for r in chats], 0.99), 3),
        "embedding_p50": round(statistics.median(r["seconds"] for r in embeds), 3),
        "embedding_p99": round(percentile([r["seconds"] for r in embeds], 0.99), 3),
        "memory_before_mb": {k: round(v / 2**20) for k, v in before.items()},
        "memory_after_mb": {k: round(v / 2**20) for k, v in after.items()},
    }
    print("load:", json.dumps(figures))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "load.json").write_text(json.dumps(figures, indent=2))

    # No growth beyond noise: a leak of 100 kB per request (700 requests) would show.
    for process, size in after.items():
        assert size - before[process] < 64 * 2**20, figures
