"""inferd + vLLM against `vllm serve`: the same vLLM, the same model, the same GPU, one run.

Each server is started as its users start it (`vllm serve MODEL ...`; `inferd serve`, the folder
registered and launched with `model_engine="vllm"` and the same engine arguments), then gets the
same load: streamed chat completions at each concurrency (every stream runs `--rounds` requests
back to back, EOS ignored), output tokens/s and the median time to first token; then a 4k-token
system prompt sent twice, with another question the second time (its first token should come from
vLLM's prefix cache).
On inferd, after that: a launch with `model_quantization=fp8` (vLLM quantizes at load), and the
launches the server must refuse with a 400 naming the field (more GPU memory than is free, more
GPUs than exist).

    python benchmarks/gpu/vllm_vs_serve.py --size 0.5b [--streams 1,8,32,128] [--tokens 256]
        [--order serve,inferd] [--no-prefix] [--checks] [--env NAME=VALUE ...]

Prints one JSON line per measurement and, at the end, a table with inferd's ratio to vLLM's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from functools import partial
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # benchmarks/: shared helpers
from vllm_probe import build_model
from watch import Watch

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = (
    "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant:{% endif %}"
)
MAX_MODEL_LEN = 8192
SHARE = 0.5  # gpu_memory_utilization of the model under test: room for a second launch


def say(record: dict[str, Any]) -> None:
    print(json.dumps(record), flush=True)


# -- load ---------------------------------------------------------------------------------


async def one(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat, sent again if the connection broke before an answer (counted)."""
    for attempt in range(5):
        try:
            return {**await _one(client, base, body), "retries": attempt}
        except (httpx.ReadError, httpx.RemoteProtocolError, httpx.ConnectError) as exc:
            error = exc
            await asyncio.sleep(0.05 * (attempt + 1))
    raise RuntimeError(f"the connection broke five times: {error!r}")


async def _one(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat: seconds to the first content, completion tokens, cached tokens."""
    body = {**body, "model": "bench", "stream": True, "stream_options": {"include_usage": True}}
    start, first, usage = time.perf_counter(), None, {}
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{response.status_code}: {(await response.aread())[:500]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(
                (c.get("delta") or {}).get("content") for c in chunk.get("choices") or []
            ):
                first = time.perf_counter() - start
            if chunk.get("usage"):
                usage = chunk["usage"]
    details = usage.get("prompt_tokens_details") or {}
    return {
        "ttft": first if first is not None else time.perf_counter() - start,
        "tokens": usage.get("completion_tokens", 0),
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "cached_tokens": details.get("cached_tokens"),
    }


STREAMS_PER_CLIENT = 16  # one client process parses at most this many streams at once


async def _streams(base: str, ids: range, tokens: int, rounds: int, at: float) -> list[dict]:
    """Streams `ids` from one process, each `rounds` chats in a row, starting at time `at`."""

    async def client_loop(c: httpx.AsyncClient, i: int) -> list[dict[str, Any]]:
        out = []
        for r in range(rounds):
            body = {
                "messages": [{"role": "user", "content": f"word{i * rounds + r} the of and"}],
                "max_tokens": tokens,
                "ignore_eos": True,
                "temperature": 0,
            }
            out.append({**await one(c, base, body), "end": time.time()})
        return out

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=600, limits=limits) as c:
        await asyncio.sleep(max(0.0, at - time.time()))
        done = await asyncio.gather(*(client_loop(c, i) for i in ids))
    return [r for each in done for r in each]


def _streams_in_process(base: str, ids: range, tokens: int, rounds: int, at: float) -> list:
    return asyncio.run(_streams(base, ids, tokens, rounds, at))


def load(
    base: str, streams: int, tokens: int, rounds: int, watch: Watch | None = None
) -> dict[str, Any]:
    """`streams` clients at once, each sending `rounds` chats one after another, spread over
    client processes so that parsing the answers is not what limits the rate. With `watch`,
    the CPU each of the server's processes spent meanwhile (in cores) is reported too."""
    asyncio.run(_streams(base, range(10_000, 10_001), 8, 1, 0))  # warm: lazy set-up paid
    parts = [
        range(i, min(i + STREAMS_PER_CLIENT, streams))
        for i in range(0, streams, STREAMS_PER_CLIENT)
    ]
    at = time.time() + 2  # every process connected and waiting
    with ProcessPoolExecutor(len(parts)) as pool:
        futures = [
            pool.submit(_streams_in_process, base, part, tokens, rounds, at) for part in parts
        ]
        time.sleep(max(0.0, at - time.time()))
        cpu = watch.during(streams) if watch is not None else nullcontext({})
        with cpu as cores:
            done = [f.result() for f in futures]
    results = [r for each in done for r in each]
    seconds = max(r["end"] for r in results) - at
    return {
        **({"cpu_cores": cores} if watch is not None else {}),
        "streams": streams,
        "requests": len(results),
        "tok_per_s": round(sum(r["tokens"] for r in results) / seconds, 1),
        "ttft_ms_p50": round(statistics.median(r["ttft"] for r in results) * 1000, 2),
        "ttft_ms_p90": round(statistics.quantiles([r["ttft"] for r in results], n=10)[-1] * 1000, 2)
        if len(results) > 1
        else None,
        "retried": sum(r["retries"] for r in results),
    }


async def prefix(base: str, prompts: list[list[str]]) -> dict[str, Any]:
    """Each long system prompt twice, with another question the second time (as a chat's or
    an agent's instructions come back): the first pays for prefill, the second should not. The
    medians over the prompts are reported (one pair alone varies by several ms)."""
    firsts, seconds, cached = [], [], []
    async with httpx.AsyncClient(timeout=600) as c:
        for words in prompts:

            def body(question: str, words: list[str] = words) -> dict[str, Any]:
                return {
                    "messages": [
                        {"role": "system", "content": " ".join(words)},
                        {"role": "user", "content": question},
                    ],
                    "max_tokens": 4,
                    "ignore_eos": True,
                    "temperature": 0,
                }

            first = await one(c, base, body("word7 the"))
            second = await one(c, base, body("word8 of and"))
            firsts.append(first["ttft"])
            seconds.append(second["ttft"])
            cached.append(second["cached_tokens"])
    return {
        "prompt_tokens": first["prompt_tokens"],
        "prompts": len(prompts),
        "ttft_ms_first": round(statistics.median(firsts) * 1000, 2),
        "ttft_ms_second": round(statistics.median(seconds) * 1000, 2),
        "speedup": round(statistics.median(firsts) / statistics.median(seconds), 2),
        "ttft_ms_seconds_all": [round(t * 1000, 1) for t in seconds],
        "cached_tokens_second": cached[-1],
    }


def long_prompt(tokens: int, seed: int = 7) -> list[str]:
    # The probe's tokenizer was trained on "wordN the of and ...": each wordN is about a token.
    rng = random.Random(seed)
    return [f"word{rng.randrange(20000)}" for _ in range(tokens)]


# -- servers ------------------------------------------------------------------------------


def wait_ready(base: str, path: str, seconds: float, process: subprocess.Popen) -> float:
    started = time.time()
    while time.time() - started < seconds:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return time.time() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base} not ready in {seconds:.0f}s")


@contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield process
        finally:
            # The whole group: vLLM's engine core is a child process of either server.
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            time.sleep(3)  # the GPU's memory comes back after the engine core exits


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def measure(name: str, base: str, args: argparse.Namespace, results: dict, root: int) -> None:
    watch = Watch(name.replace(" ", "-"), root, set(args.spy_streams), args.spy_dir)
    for streams in args.streams:
        try:
            record = load(base, streams, args.tokens, args.rounds, watch)
        except Exception as exc:  # said, and the run goes on to the next
            say({"server": name, "streams": streams, "error": repr(exc)[:500]})
            continue
        results.setdefault(name, {})[streams] = record
        say({"server": name, **record})
    if args.no_prefix:
        return
    # The same prompts on every server; each server starts with an empty cache.
    prompts = [long_prompt(args.prefix_words, seed) for seed in range(7, 7 + args.prefix_repeats)]
    record = asyncio.run(prefix(base, prompts))
    # inferd's count of prompt tokens it took from an earlier prompt rather than tokenizing.
    metrics = httpx.get(f"{base}/metrics", timeout=30).text.splitlines()
    reused = [
        line for line in metrics if line.startswith("inferd_engine_prompt_tokens_reused_total")
    ]
    record["tokens_reused"] = sum(float(line.rsplit(" ", 1)[1]) for line in reused) or None
    results.setdefault(name, {})["prefix"] = record
    say({"server": name, "prefix_cache": record})


def vllm_serve(model: Path, args: argparse.Namespace, env: dict[str, str], results: dict) -> None:
    argv = [
        sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", str(model),
        "--served-model-name", "bench", "--port", "8100", "--host", "127.0.0.1",
        "--gpu-memory-utilization", str(SHARE), "--max-model-len", str(MAX_MODEL_LEN),
        "--enable-prefix-caching", "--chat-template", TEMPLATE,
    ]  # fmt: skip
    log = args.logs / "vllm_serve.log"
    started = time.time()
    with running(argv, env, log) as process:
        try:
            wait_ready("http://127.0.0.1:8100", "/health", 900, process)
        except RuntimeError as exc:
            say({"server": "vllm serve", "error": str(exc), "log": tail(log)})
            return
        say({"server": "vllm serve", "ready_s": round(time.time() - started, 1)})
        measure("vllm serve", "http://127.0.0.1:8100", args, results, process.pid)


def register(base: str, name: str, model: Path, template: str, context: int, **more: Any) -> None:
    """Register the folder `model` as the LLM `name`, as a user would (`more`: other fields of
    the definition)."""
    definition = {
        "version": 2, "model_name": name, "model_ability": ["generate", "chat"],
        "context_length": context, "chat_template": template,
        "model_specs": [{"model_format": "pytorch", "model_size_in_billions": "1",
                         "quantization": "none", "model_uri": str(model)}],
        **more,
    }  # fmt: skip
    httpx.post(f"{base}/v1/model_registrations/LLM", json={"model": definition}).raise_for_status()


def engine_env(env: dict[str, str]) -> dict[str, str]:
    """The variables a launch hands its model process for vLLM, NCCL and Gloo."""
    return {k: v for k, v in env.items() if k.startswith(("VLLM_", "NCCL_", "GLOO_"))}


def launch(base: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{base}/v1/models", json=body, timeout=900)


def inferd(
    model: Path,
    args: argparse.Namespace,
    env: dict[str, str],
    results: dict,
    name: str = "inferd",
    src: Path = ROOT / "src",
) -> None:
    """inferd from `src` (this checkout's, or another commit's for a before-and-after)."""
    slug = name.replace(" ", "-")
    home = args.logs / f"{slug}-home"
    path = f"{src}:{env.get('PYTHONPATH', '')}"
    server_env = {**env, "INFERD_HOME": str(home), "PYTHONPATH": path}
    argv = [sys.executable, "-m", "inferd", "serve", "--port", "9997"]
    log = args.logs / f"{slug}.log"
    base = "http://127.0.0.1:9997"
    with running(argv, server_env, log) as process:
        wait_ready(base, "/health", 120, process)
        register(base, "bench", model, TEMPLATE, MAX_MODEL_LEN)
        forwarded = engine_env(env)
        started = time.time()
        launched = launch(
            base,
            {
                "model_name": "bench", "model_engine": "vllm",
                "gpu_memory_utilization": SHARE, "max_model_len": MAX_MODEL_LEN,
                "envs": forwarded,
            },
        )  # fmt: skip
        if launched.status_code != 200:
            say({"server": name, "error": launched.text[:2000], "log": tail(log)})
            say({"model_log": httpx.get(f"{base}/v1/models/bench/logs?tail=60").text[-5000:]})
            return
        say({"server": name, "ready_s": round(time.time() - started, 1)})
        measure(name, base, args, results, process.pid)
        if args.checks:
            checks(base, forwarded)


def checks(base: str, envs: dict[str, str]) -> None:
    """What a user gets asking for too much, and a model vLLM quantizes to fp8 at load."""
    for name, extra in (
        ("more memory than is free", {"gpu_memory_utilization": 0.9}),
        ("more GPUs than exist", {"n_gpu": 2}),
        ("tensor parallel over more GPUs than exist", {"tensor_parallel_size": 2}),
    ):
        answer = launch(
            base, {"model_name": "bench", "model_uid": "too-much", "model_engine": "vllm", **extra}
        )
        body = answer.json()
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        say({"check": name, "status": answer.status_code, "answer": error})
    httpx.delete(f"{base}/v1/models/bench", timeout=120)
    time.sleep(3)
    started = time.time()
    answer = launch(
        base,
        {
            "model_name": "bench", "model_uid": "bench-fp8", "model_engine": "vllm",
            "model_quantization": "fp8", "gpu_memory_utilization": SHARE,
            "max_model_len": MAX_MODEL_LEN, "envs": envs,
        },
    )  # fmt: skip
    record: dict[str, Any] = {"check": "fp8", "status": answer.status_code}
    if answer.status_code == 200:
        record["ready_s"] = round(time.time() - started, 1)
        chat = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": "bench-fp8", "max_tokens": 32, "ignore_eos": True,
                "messages": [{"role": "user", "content": "word1 the of"}],
            },
            timeout=120,
        )  # fmt: skip
        record["chat"] = chat.status_code
        record["completion_tokens"] = chat.json().get("usage", {}).get("completion_tokens")
        logs = httpx.get(f"{base}/v1/models/bench-fp8/logs?tail=400").text
        record["log_says_fp8"] = [line[-160:] for line in logs.splitlines() if "fp8" in line][:3]
    else:
        record["answer"] = answer.text[:1500]
    say(record)


def table(results: dict, streams: list[int]) -> None:
    serve = results.get("vllm serve", {})
    for name, ours in results.items():
        if name == "vllm serve":
            continue
        print(f"\n| streams | vllm serve tok/s | {name} tok/s | ratio | TTFT p50 serve | ", end="")
        print("ours | +ms |")
        print("|---|---|---|---|---|---|---|")
        for n in streams:
            a, b = serve.get(n), ours.get(n)
            if not a or not b:
                continue
            print(
                f"| {n} | {a['tok_per_s']:.0f} | {b['tok_per_s']:.0f} | "
                f"{b['tok_per_s'] / a['tok_per_s']:.3f} | {a['ttft_ms_p50']:.1f} | "
                f"{b['ttft_ms_p50']:.1f} | {b['ttft_ms_p50'] - a['ttft_ms_p50']:+.1f} |"
            )
    for name, r in results.items():
        p = r.get("prefix")
        if p:
            print(
                f"prefix cache, {name}: {p['prompt_tokens']} prompt tokens, first token "
                f"{p['ttft_ms_first']:.1f} ms then {p['ttft_ms_second']:.1f} ms "
                f"({p['speedup']:.1f}x, medians of {p['prompts']}; cached "
                f"{p['cached_tokens_second']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="0.5b")
    parser.add_argument("--streams", default="1,8,32,128")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prefix-words", type=int, default=2000)  # ~4k tokens
    parser.add_argument("--prefix-repeats", type=int, default=5)
    # The first vLLM start on a fresh machine compiles (minutes); the second reuses the cache.
    parser.add_argument("--order", default="serve,inferd", help="serve,inferd | inferd | ...")
    parser.add_argument("--no-prefix", action="store_true")
    parser.add_argument("--checks", action="store_true")
    parser.add_argument("--logs", type=Path, default=Path("/root/bench-logs"))
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--spy-streams", default="", help="loads to sample with py-spy: 32,128")
    parser.add_argument("--spy-dir", type=Path, help="where py-spy's stacks go")
    parser.add_argument(
        "--before-src", type=Path, help="another inferd's src/, run as 'before' in --order"
    )
    args = parser.parse_args()
    args.streams = [int(n) for n in args.streams.split(",")]
    args.spy_streams = [int(n) for n in args.spy_streams.split(",") if n]
    args.logs.mkdir(parents=True, exist_ok=True)
    # 128 streams and the servers' own sockets: more than a default of 1024 files is safer.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = time.time()
    model = build_model(Path("/root/models") / args.size, args.size)
    say({"model": args.size, "built_s": round(time.time() - started, 1)})
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    results: dict = {}
    runs = {"serve": vllm_serve, "inferd": inferd}
    if args.before_src is not None:
        runs["before"] = partial(inferd, name="inferd before", src=args.before_src.resolve())
    for name in args.order.split(","):
        runs[name](model, args, env, results)
    table(results, args.streams)


if __name__ == "__main__":
    main()
