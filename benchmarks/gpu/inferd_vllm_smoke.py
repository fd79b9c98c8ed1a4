"""inferd serving a model on vLLM's CUDA build: the server started as a user starts it, the model
registered by path and launched with `model_engine="vllm"`, then streamed chats at 1 and 32
concurrent streams (tokens/s and median time to first token).

    python benchmarks/gpu/inferd_vllm_smoke.py [--size 0.5b] [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_probe import build_model

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (
    "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)


async def stream(client: httpx.AsyncClient, base: str, tokens: int, i: int) -> tuple[float, int]:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": f"word{i} the of and"}],
        "max_tokens": tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start, first, generated = time.perf_counter(), None, 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices"):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                generated = chunk["usage"]["completion_tokens"]
    return first or 0.0, generated


async def load(base: str, streams: int, tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None)) as c:
        await stream(c, base, 8, -1)
        start = time.perf_counter()
        results = await asyncio.gather(*(stream(c, base, tokens, i) for i in range(streams)))
        seconds = time.perf_counter() - start
    return {
        "streams": streams,
        "tok_per_s": sum(n for _, n in results) / seconds,
        "ttft_ms_p50": statistics.median(t for t, _ in results) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="0.5b")
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    model = build_model(Path("/root/models") / args.size, args.size)
    envs = dict(item.split("=", 1) for item in args.env)
    home = Path("/root/inferd-home")
    log = open("/root/inferd.log", "wb")  # noqa: SIM115 - lives as long as the server
    env = {
        **os.environ,
        "INFERD_HOME": str(home),
        "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "inferd", "serve", "--port", "9997"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    base = "http://127.0.0.1:9997"
    try:
        for _ in range(60):
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        definition = {
            "version": 2, "model_name": "bench", "model_ability": ["generate", "chat"],
            "context_length": 4096, "chat_template": TEMPLATE,
            "model_specs": [{"model_format": "pytorch", "model_size_in_billions": "0_5",
                             "quantization": "none", "model_uri": str(model)}],
        }  # fmt: skip
        httpx.post(
            f"{base}/v1/model_registrations/LLM", json={"model": definition}
        ).raise_for_status()
        started = time.time()
        launched = httpx.post(
            f"{base}/v1/models",
            json={
                "model_name": "bench", "model_engine": "vllm", "gpu_memory_utilization": 0.5,
                "max_model_len": 4096, "envs": envs,
            },
            timeout=900,
        )  # fmt: skip
        print("launch", launched.status_code, launched.text[:2000], f"{time.time() - started:.0f}s")
        if launched.status_code != 200:
            print(httpx.get(f"{base}/v1/models/bench/logs?tail=80").text[-6000:])
            return
        for streams in (1, 32):
            print(json.dumps(asyncio.run(load(base, streams, args.tokens))), flush=True)
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
