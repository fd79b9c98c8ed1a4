"""What relaying streamed tokens costs inferd's server process: its CPU time per token passed
on, beside the model process's CPU for the same tokens (the engine's own work).

    .venv/bin/python benchmarks/stream_relay.py [--streams 16] [--seconds 20]

The demo Gemma GGUF on llama.cpp streams chats to `--streams` clients at once (in other
processes); the server's own process does nothing but relay them. On a GPU the engine's side
shrinks and the relay becomes the limit (`benchmarks/results/vllm_h200_vs_serve.txt`: 128 streams
at ~20k tokens/s), so this figure is what bounds one server's streamed tokens a second:
1 / (CPU seconds per token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from concurrent.futures import ProcessPoolExecutor

import httpx
from compare import CHAT, LLM
from inferd_server import BenchServer, cpu_seconds

CLIENTS_PER_PROCESS = 8


async def _clients(url: str, clients: int, until: float) -> tuple[int, int]:
    """Streamed chats back to back until `until`: tokens streamed, events read."""
    body = {"model": LLM, "messages": CHAT, "max_tokens": 128, "stream": True, "temperature": 0}
    tokens = events = 0

    async def one_client(c: httpx.AsyncClient) -> None:
        nonlocal tokens, events
        while time.time() < until:
            async with c.stream("POST", "/v1/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    events += 1
                    chunk = json.loads(line[6:])
                    if any((ch.get("delta") or {}).get("content") for ch in chunk["choices"]):
                        tokens += 1

    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        await asyncio.gather(*(one_client(c) for _ in range(clients)))
    return tokens, events


def _in_process(url: str, clients: int, until: float) -> tuple[int, int]:
    return asyncio.run(_clients(url, clients, until))


def model_pid(url: str) -> int:
    models = httpx.get(f"{url}/v1/models").json()["data"]
    return next(m["pid"] for m in models if m["id"] == LLM)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    server = BenchServer("--log-level", "warning")
    try:
        httpx.post(
            f"{server.url}/v1/models", json={"model_name": LLM, "model_type": "LLM"}, timeout=900
        ).raise_for_status()
        asyncio.run(_clients(server.url, 2, time.time() + 3))  # warm
        engine = model_pid(server.url)
        parts = [
            min(CLIENTS_PER_PROCESS, args.streams - i)
            for i in range(0, args.streams, CLIENTS_PER_PROCESS)
        ]
        server_cpu, engine_cpu = cpu_seconds(server.proc.pid), cpu_seconds(engine)
        started = time.time()
        with ProcessPoolExecutor(len(parts)) as pool:
            futures = [
                pool.submit(_in_process, server.url, n, started + args.seconds) for n in parts
            ]
            done = [f.result() for f in futures]
        elapsed = time.time() - started
        server_cpu = cpu_seconds(server.proc.pid) - server_cpu
        engine_cpu = cpu_seconds(engine) - engine_cpu
    finally:
        server.stop()
    tokens = sum(t for t, _ in done)
    events = sum(e for _, e in done)
    per_token = server_cpu / tokens
    print(
        json.dumps(
            {
                "streams": args.streams,
                "seconds": round(elapsed, 1),
                "tokens": tokens,
                "events": events,
                "tok_per_s": round(tokens / elapsed, 1),
                "server_cpu_s": round(server_cpu, 2),
                "model_process_cpu_s": round(engine_cpu, 2),
                "server_cpu_us_per_token": round(per_token * 1e6, 1),
                "server_share_of_cpu": round(server_cpu / (server_cpu + engine_cpu), 3),
                "relay_ceiling_tok_per_s_one_core": round(1 / per_token),
            }
        )
    )


if __name__ == "__main__":
    main()
