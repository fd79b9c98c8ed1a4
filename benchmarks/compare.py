"""inferd beside the engines alone and Xinference, on the demo models, in one run.

    python benchmarks/compare.py [--xinference-venv PATH] [--seconds 8] [--scaling] [--out DIR]

or `make bench XINFERENCE_VENV=PATH`. Every figure comes from this run, on this machine:

- the engines alone: sentence-transformers in this process (one sentence per call, and batches of
  32: the ceiling for 32 clients); llama.cpp's server object configured exactly as inferd
  configures it, called from threads; a bare FastAPI app serving inferd's own `/v1/models` JSON;
- inferd: `inferd serve`, the demo models launched through its API;
- Xinference, when `--xinference-venv` names a venv with `xinference` installed: `xinference-local`,
  its first-run admin created, the same weights registered from their local files and launched on
  the same engines.

Loads are closed loops of N clients over a loopback connection for `--seconds` each, spread over
processes of 8 clients (the same for every server): single-sentence embeddings, `GET /v1/models`,
chats of 32 tokens. `--scaling` adds throughput and p99 latency against concurrency (1 to 256) for
embeddings and chat, as a table and a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from inferd_server import BenchServer, stop_group, tree_memory_mb

LLM = "gemma-3-270m"
EMBEDDING = "all-MiniLM-L6-v2"
SENTENCE = "The quick brown fox jumps over the lazy dog near the river bank."
CHAT = [{"role": "user", "content": "Count from one to one hundred in words."}]
CHAT_TOKENS = 32
LEVELS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Rate:
    per_second: float
    p50: float
    p99: float
    errors: int
    tokens_per_second: float = 0.0
    requests: int = 0  # answered


def summarise(latencies: list[float], elapsed: float, errors: int, tokens: int = 0) -> Rate:
    if not latencies:
        return Rate(0.0, float("nan"), float("nan"), errors)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return Rate(
        len(latencies) / elapsed,
        statistics.median(ordered),
        p99,
        errors,
        tokens / elapsed,
        len(latencies),
    )


# A request: given a client, send one and return (ok, tokens produced).
Request = Callable[[aiohttp.ClientSession], Awaitable[tuple[bool, int]]]


# The load generator shares the machine with the server, so what it costs is taken from what is
# measured: it is kept cheap. Clients are spread over processes of CLIENTS_PER_PROCESS (one
# process driving 128 connections managed ~70 embedding requests/s against a server that answered
# 210/s to the same clients spread over four), and they speak aiohttp, which spent a third of
# httpx's CPU per request on a bare echo server (134 against 476 µs).
CLIENTS_PER_PROCESS = 8


def closed_loop(
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    request: Request,
    frames: str | None = None,
) -> Rate:
    """`clients` clients each sending one request after another until the time is up, spread
    over processes of CLIENTS_PER_PROCESS; every request that started is waited for and
    counted. `frames`: a model process's frames socket instead of `url`, each process's
    clients sharing one connection to it as a front's do (`request` is then given an
    `inferd.runtime.frames.FrameChannel`)."""
    import multiprocessing

    shares = [CLIENTS_PER_PROCESS] * (clients // CLIENTS_PER_PROCESS)
    if clients % CLIENTS_PER_PROCESS:
        shares.append(clients % CLIENTS_PER_PROCESS)
    # Forked, so each process has the request function as it is here; they start together.
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    start = context.Event()
    processes = [
        context.Process(
            target=_load_process,
            args=(url, headers, share, seconds, request, start, results, frames),
        )
        for share in shares
    ]
    for process in processes:
        process.start()
    start.set()
    tallies = [results.get() for _ in processes]
    for process in processes:
        process.join()
    latencies = [latency for tally in tallies for latency in tally[0]]
    elapsed = max(tally[1] for tally in tallies)
    return summarise(
        latencies, elapsed, sum(tally[2] for tally in tallies), sum(tally[3] for tally in tallies)
    )


def _load_process(
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    request: Request,
    start: Any,
    results: Any,
    frames: str | None = None,
) -> None:
    start.wait()
    results.put(asyncio.run(_clients(url, headers, clients, seconds, request, frames)))


async def _clients(
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    request: Request,
    frames: str | None = None,
) -> tuple[list[float], float, int, int]:
    if frames is not None:
        from inferd.runtime.frames import FrameChannel

        channel = FrameChannel(frames)
        try:
            return await _closed(clients, seconds, request, channel)
        finally:
            channel.close()
    async with aiohttp.ClientSession(
        base_url=url,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=600),
        connector=aiohttp.TCPConnector(limit=clients),
    ) as client:
        return await _closed(clients, seconds, request, client)


async def _closed(
    clients: int, seconds: float, request: Request, client: Any
) -> tuple[list[float], float, int, int]:
    """`clients` closed loops of `request` on one `client` until `seconds` are up: each
    request's latency, the time taken, the errors and the tokens produced."""
    latencies: list[float] = []
    errors = tokens = 0
    deadline = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal errors, tokens
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                ok, produced = await request(client)
            except (aiohttp.ClientError, ConnectionError):
                ok, produced = False, 0
            latencies.append(time.perf_counter() - started)
            errors += not ok
            tokens += produced

    started = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, time.perf_counter() - started, errors, tokens


JSON = {"Content-Type": "application/json"}


def embed_request(model: str) -> Request:
    body = json.dumps({"model": model, "input": SENTENCE}).encode()

    async def send(client: aiohttp.ClientSession) -> tuple[bool, int]:
        async with client.post("/v1/embeddings", data=body, headers=JSON) as response:
            await response.read()
            return response.status == 200, 0

    return send


def chat_request(model: str, max_tokens: int = CHAT_TOKENS) -> Request:
    body = json.dumps(
        {"model": model, "messages": CHAT, "max_tokens": max_tokens, "temperature": 0}
    ).encode()

    async def send(client: aiohttp.ClientSession) -> tuple[bool, int]:
        async with client.post("/v1/chat/completions", data=body, headers=JSON) as response:
            answer = await response.read()
            if response.status != 200:
                return False, 0
            return True, int(json.loads(answer)["usage"]["completion_tokens"])

    return send


async def list_models(client: aiohttp.ClientSession) -> tuple[bool, int]:
    async with client.get("/v1/models") as response:
        await response.read()
        return response.status == 200, 0


async def first_token_seconds(url: str, headers: dict[str, str], model: str) -> list[float]:
    """Time to the first streamed token of two chats sharing a system prompt of about a
    thousand tokens: the second should reuse the first's prompt cache."""
    system = " ".join(f"Rule {i}: answer politely and briefly." for i in range(150))
    times = []
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as client:
        for question in ("What is the first rule?", "What is the last rule?"):
            body = {
                "model": model,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 4,
                "stream": True,
            }
            started = time.perf_counter()
            first = None
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                # Read to the end, as a conversation's next turn would: a request sent while
                # the last one still holds its llama.cpp slot lands on another slot, without
                # that prompt.
                async for line in response.aiter_lines():
                    if first is None and line.startswith("data: ") and '"content"' in line:
                        first = time.perf_counter() - started
            times.append(float("nan") if first is None else first)
    return times


# --- the engines alone -------------------------------------------------------------------


def demo_weights() -> dict[str, Path]:
    """Where the demo models' weights are (assembling the GGUF from its package if needed)."""
    from inferd.catalog import ModelType, get_catalog
    from inferd.settings import get_settings
    from inferd.storage.resolve import find_local_weights

    catalog, cache = get_catalog(), get_settings().cache_dir
    found = {}
    for name, kind in ((LLM, ModelType.LLM), (EMBEDDING, ModelType.EMBEDDING)):
        family = catalog.get(name, kind)
        spec = next(s for s in family.model_specs if s.package is not None)
        path = find_local_weights(family, spec, spec.quantizations[0], cache)
        assert path is not None, f"{name} has no packaged weights"
        found[name] = path
    return found


def raw_embeddings(path: Path, seconds: float) -> tuple[float, float]:
    """Sentences/s one at a time, and in batches of 32."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")
    model.encode([SENTENCE])
    rates = []
    for batch in (1, 32):
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model.encode([SENTENCE] * batch, batch_size=batch)
            count += batch
        rates.append(count / (time.perf_counter() - started))
    return rates[0], rates[1]


def raw_chat(path: Path, clients_list: tuple[int, ...], seconds: float) -> dict[int, Rate]:
    """llama.cpp's server object as inferd's engine configures it, called from threads, in a
    process of its own (as inferd's model process is) so nothing else here competes."""
    script = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); import compare\n"
        "rates = compare.raw_chat_here(compare.Path(sys.argv[2]), (1, 4), float(sys.argv[3]))\n"
        "print(json.dumps({c: vars(r) for c, r in rates.items()}))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script, str(Path(__file__).parent), str(path), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rates = json.loads(output.strip().splitlines()[-1])
    return {int(c): Rate(**r) for c, r in rates.items() if int(c) in clients_list}


def raw_chat_here(path: Path, clients_list: tuple[int, ...], seconds: float) -> dict[int, Rate]:
    from inferd.catalog import ModelType, get_catalog
    from inferd.engines.base import EngineConfig
    from inferd.engines.llamacpp import LlamaCppEngine

    family = get_catalog().get(LLM, ModelType.LLM)
    config = EngineConfig(
        model_uid=LLM,
        engine="llama.cpp",
        model_name=LLM,
        model_type="LLM",
        model_format="ggufv2",
        quantization="",
        model_path=str(path),
        family=family.model_dump(mode="json"),
    )
    engine = LlamaCppEngine(config)
    engine.load()
    server = engine._server  # the engine alone: no inferd layer between caller and llama.cpp
    body = {"messages": CHAT, "max_tokens": CHAT_TOKENS, "temperature": 0}
    server.handle_chat_completions(dict(body))
    return {clients: _threads(server, body, clients, seconds) for clients in clients_list}


def _threads(server: Any, body: dict[str, Any], clients: int, seconds: float) -> Rate:
    latencies: list[float] = []
    tokens = 0
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()

    def worker() -> None:
        nonlocal tokens
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            answer = server.handle_chat_completions(dict(body))
            with lock:
                latencies.append(time.perf_counter() - started)
                tokens += int(answer["usage"]["completion_tokens"])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarise(latencies, time.perf_counter() - started, 0, tokens)


BARE_APP = """
import json, sys
from fastapi import FastAPI
from fastapi.responses import Response
import uvicorn
body = open(sys.argv[1], "rb").read()
app = FastAPI()
@app.get("/v1/models")
def models() -> Response:
    return Response(body, media_type="application/json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def bare_models(listing: bytes, seconds: float) -> Rate:
    """A bare FastAPI app serving the same `/v1/models` JSON, at 16 clients."""
    folder = Path(tempfile.mkdtemp(prefix="bare-"))
    (folder / "models.json").write_bytes(listing)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", BARE_APP, str(folder / "models.json"), str(port)]
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: answers(f"{url}/v1/models"), 30)
        return closed_loop(url, {}, 16, seconds, list_models)
    finally:
        process.terminate()
        process.wait()


# --- the servers -------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def wait_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(0.05)


class Target:
    """A server under test: how long it took to answer, to launch each demo model, and the
    names its models go by."""

    name: str
    url: str
    headers: dict[str, str]
    pid: int
    start_seconds: float
    launch_seconds: dict[str, float]
    uids: dict[str, str]
    server_mb: float  # all its processes, answering, before any model is launched

    def stop(self) -> None:
        raise NotImplementedError

    def _weigh_server(self) -> None:
        time.sleep(1)  # what the server loads after its first answer counts too
        self.server_mb = tree_memory_mb(self.pid)


class Inferd(Target):
    name = "inferd"

    def __init__(self) -> None:
        self.server = BenchServer("--log-level", "warning")
        self.url, self.headers, self.pid = self.server.url, {}, self.server.proc.pid
        self.start_seconds = self.server.health_seconds
        self._weigh_server()
        self.launch_seconds = {}
        self.uids = {LLM: LLM, EMBEDDING: EMBEDDING}
        for name, kind in ((LLM, "LLM"), (EMBEDDING, "embedding")):
            started = time.perf_counter()
            response = httpx.post(
                f"{self.url}/v1/models", json={"model_name": name, "model_type": kind}, timeout=900
            )
            response.raise_for_status()
            self.launch_seconds[name] = time.perf_counter() - started

    def stop(self) -> None:
        self.server.stop()


class Xinference(Target):
    """Xinference 4.x from its own venv, set up as its first run asks."""

    name = "Xinference"
    PASSWORD = "bench-password-123"

    def __init__(
        self, venv: Path, weights: dict[str, Path], models: tuple[str, ...] = (LLM, EMBEDDING)
    ) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.home = Path(tempfile.mkdtemp(prefix="xinference-bench-"))
        self.log = self.home / "server.log"
        started = time.perf_counter()
        self.processes = self._start(venv, port)
        self.process = self.processes[0]
        self.pid = self.process.pid
        wait_until(lambda: answers(f"{self.url}/v1/models"), 600)
        self.start_seconds = time.perf_counter() - started
        self.headers = {"Authorization": f"Bearer {self._admin_token()}"}
        self._weigh_server()
        self.uids = {LLM: "bench-gemma", EMBEDDING: "bench-minilm"}
        self._wait_for_workers()
        self._register(weights)
        self.launch_seconds = {}
        launches = {
            LLM: {"model_type": "LLM", "model_engine": "llama.cpp", "n_parallel": 4},
            EMBEDDING: {"model_type": "embedding", "model_engine": "sentence_transformers"},
        }
        for name in models:
            uid, extra = self.uids[name], launches[name]
            started = time.perf_counter()
            self._launch({"model_uid": uid, "model_name": uid, **extra}).raise_for_status()
            self.launch_seconds[name] = time.perf_counter() - started

    def _launch(self, body: dict[str, Any]) -> httpx.Response:
        return self._post("/v1/models", body, timeout=900)

    def _wait_for_workers(self) -> None:
        """Until a worker has joined: registrations reach only the workers there are."""

        def joined() -> bool:
            answer = httpx.get(f"{self.url}/v1/workers", headers=self.headers, timeout=10)
            return answer.status_code == 200 and bool(answer.json())

        wait_until(joined, 300)

    def _start(self, venv: Path, port: int) -> list[subprocess.Popen[bytes]]:
        """The server's processes, the first printing its setup token to self.log."""
        return [self._run(venv, "xinference-local", "-H", "127.0.0.1", "-p", str(port))]

    def _run(self, venv: Path, *command: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(venv / "bin" / command[0]), *command[1:]],
            env={**os.environ, "XINFERENCE_HOME": str(self.home)},
            stdout=open(log or self.log, "wb"),  # lives as long as the server
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _post(self, path: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, headers=self.headers, timeout=timeout)

    def _admin_token(self) -> str:
        token = None
        deadline = time.monotonic() + 60
        while token is None and time.monotonic() < deadline:
            for line in self.log.read_text(errors="replace").splitlines():
                if "Setup token:" in line:
                    token = line.split("Setup token:", 1)[1].strip()
            time.sleep(0.2)
        if token is None:
            raise RuntimeError(f"Xinference printed no setup token; see {self.log}")
        setup = {"setup_token": token, "username": "bench", "password": self.PASSWORD}
        httpx.post(f"{self.url}/v1/admin/setup", json=setup, timeout=30).raise_for_status()
        login = httpx.post(
            f"{self.url}/token",
            json={"username": "bench", "password": self.PASSWORD},
            timeout=30,
        )
        login.raise_for_status()
        return str(login.json()["access_token"])

    def _register(self, weights: dict[str, Path]) -> None:
        from inferd.catalog import ModelType, get_catalog

        family = get_catalog().get(LLM, ModelType.LLM)
        gguf = weights[LLM]
        llm = {
            "version": 2,
            "model_name": self.uids[LLM],
            "context_length": family.context_length,
            "model_lang": ["en"],
            "model_ability": ["generate", "chat"],
            "model_family": "gemma-3-it",
            "chat_template": family.chat_template,
            "stop_token_ids": family.stop_token_ids,
            "stop": family.stop,
            "model_specs": [
                {
                    "model_format": "ggufv2",
                    "model_size_in_billions": "0_27",
                    "quantization": "Q4_K_M",
                    "model_uri": str(gguf.parent),
                    "model_file_name_template": gguf.name,
                }
            ],
        }
        embedding = {
            "version": 2,
            "model_name": self.uids[EMBEDDING],
            "dimensions": 384,
            "max_tokens": 256,
            "language": ["en"],
            "model_specs": [
                {
                    "model_format": "pytorch",
                    "quantization": "none",
                    "model_uri": str(weights[EMBEDDING]),
                }
            ],
        }
        for kind, model in (("LLM", llm), ("embedding", embedding)):
            response = self._post(
                f"/v1/model_registrations/{kind}",
                {"model": json.dumps(model), "persist": False},
            )
            if response.status_code != 200:
                raise RuntimeError(f"Xinference refused the {kind} registration: {response.text}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop_group(process)


class XinferenceCluster(Xinference):
    """Xinference's own cluster on this machine: a supervisor and one worker."""

    name = "Xinference cluster"

    def _start(self, venv: Path, port: int) -> list[subprocess.Popen[bytes]]:
        supervisor = self._run(
            venv,
            "xinference-supervisor",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "--supervisor-port",
            str(free_port()),
        )
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/v1/models"), 600)
        worker = self._run(
            venv,
            "xinference-worker",
            "-e",
            f"http://127.0.0.1:{port}",
            "-H",
            "127.0.0.1",
            "--worker-port",
            str(free_port()),
            log=self.home / "worker.log",
        )
        return [supervisor, worker]


# --- measuring ---------------------------------------------------------------------------


def measure(target: Target, seconds: float) -> dict[str, Any]:
    url, headers = target.url, target.headers
    llm, embedding = target.uids[LLM], target.uids[EMBEDDING]

    def run(clients: int, request: Request) -> Rate:
        return closed_loop(url, headers, clients, seconds, request)

    time.sleep(2)  # let launch work settle
    figures: dict[str, Any] = {"idle_mb": tree_memory_mb(target.pid)}
    figures["embed_1"] = run(1, embed_request(embedding))
    figures["embed_32"] = run(32, embed_request(embedding))
    figures["models_16"] = run(16, list_models)
    figures["chat_1"] = run(1, chat_request(llm))
    figures["chat_4"] = run(4, chat_request(llm))
    figures["first_token"] = asyncio.run(first_token_seconds(url, headers, llm))
    figures["server_mb"] = target.server_mb
    figures["start"] = target.start_seconds
    figures["launch"] = target.launch_seconds
    return figures


def scaling(target: Target, seconds: float) -> dict[str, dict[int, Rate]]:
    url, headers = target.url, target.headers
    runs: dict[str, dict[int, Rate]] = {"embeddings": {}, "chat": {}}
    for clients in LEVELS:
        runs["embeddings"][clients] = closed_loop(
            url, headers, clients, seconds, embed_request(target.uids[EMBEDDING])
        )
        runs["chat"][clients] = closed_loop(
            url, headers, clients, seconds, chat_request(target.uids[LLM], 8)
        )
        print(f"  {target.name} at {clients:>3} clients: done", flush=True)
    return runs


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "-"


def report(raw: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    inferd = results["inferd"]
    xinf = results.get("Xinference")
    lines = [
        "| measure | engine alone | inferd | Xinference | inferd / engine | inferd / Xinference |",
        "|---|---|---|---|---|---|",
    ]

    def row(label: str, engine: float | None, ours: float, theirs: float | None, unit: str) -> None:
        def shown(v: float | None) -> str:
            return "-" if v is None or v != v else f"{v:.1f} {unit}"

        lower_is_better = unit in ("s", "ms", "MB")
        against_engine = "-" if engine is None else ratio(ours, engine)
        against_them = "-" if theirs is None else ratio(ours, theirs)
        if lower_is_better:  # read as "times faster / smaller"
            against_engine = "-" if engine is None else ratio(engine, ours)
            against_them = "-" if theirs is None else ratio(theirs, ours)
        lines.append(
            f"| {label} | {shown(engine)} | {shown(ours)} | {shown(theirs)} | "
            f"{against_engine} | {against_them} |"
        )

    def get(key: str, field: str) -> float | None:
        return None if xinf is None else getattr(xinf[key], field)

    row(
        "embeddings, 32 clients (req/s)",
        raw["embed_batched"],
        inferd["embed_32"].per_second,
        get("embed_32", "per_second"),
        "/s",
    )
    row(
        "embeddings, 32 clients p99",
        None,
        inferd["embed_32"].p99 * 1e3,
        None if xinf is None else xinf["embed_32"].p99 * 1e3,
        "ms",
    )
    row(
        "embeddings, 1 client (req/s)",
        raw["embed_single"],
        inferd["embed_1"].per_second,
        get("embed_1", "per_second"),
        "/s",
    )
    row(
        "embeddings, 1 client p50",
        1e3 / raw["embed_single"],
        inferd["embed_1"].p50 * 1e3,
        None if xinf is None else xinf["embed_1"].p50 * 1e3,
        "ms",
    )
    row(
        "GET /v1/models, 16 clients (req/s)",
        raw["models_16"].per_second,
        inferd["models_16"].per_second,
        get("models_16", "per_second"),
        "/s",
    )
    row(
        "GET /v1/models, 16 clients p50",
        raw["models_16"].p50 * 1e3,
        inferd["models_16"].p50 * 1e3,
        None if xinf is None else xinf["models_16"].p50 * 1e3,
        "ms",
    )
    for clients in (1, 4):
        key = f"chat_{clients}"
        row(
            f"chat, {clients} client(s) (req/s)",
            raw[key].per_second,
            inferd[key].per_second,
            get(key, "per_second"),
            "/s",
        )
        row(
            f"chat, {clients} client(s) (tokens/s)",
            raw[key].tokens_per_second,
            inferd[key].tokens_per_second,
            get(key, "tokens_per_second"),
            "/s",
        )
    ours = inferd["first_token"]
    row(
        "1k-token system prompt, first token: 1st",
        None,
        ours[0] * 1e3,
        None if xinf is None else xinf["first_token"][0] * 1e3,
        "ms",
    )
    row(
        "1k-token system prompt, first token: 2nd",
        None,
        ours[1] * 1e3,
        None if xinf is None else xinf["first_token"][1] * 1e3,
        "ms",
    )
    row(
        "server start to first answer",
        None,
        inferd["start"],
        None if xinf is None else xinf["start"],
        "s",
    )
    for name in (LLM, EMBEDDING):
        row(
            f"launch to ready, {name}",
            raw["load"].get(name),
            inferd["launch"][name],
            None if xinf is None else xinf["launch"][name],
            "s",
        )
    row(
        "idle memory, server before any launch",
        None,
        inferd["server_mb"],
        None if xinf is None else xinf["server_mb"],
        "MB",
    )
    row(
        "idle memory, all processes, both models loaded",
        None,
        inferd["idle_mb"],
        None if xinf is None else xinf["idle_mb"],
        "MB",
    )
    errors = {
        name: sum(v.errors for v in r.values() if isinstance(v, Rate))
        for name, r in results.items()
    }
    lines.append("")
    lines.append(f"errors: {errors}")
    lines.append(f"prefix cache: second first-token {ratio(ours[0], ours[1])} faster (inferd)")
    return "\n".join(lines)


def scaling_report(runs: dict[str, dict[str, dict[int, Rate]]], out: Path) -> str:
    lines = [
        "| workload | server | " + " | ".join(str(c) for c in LEVELS) + " |",
        "|---|---|" + "---|" * len(LEVELS),
    ]
    for workload in ("embeddings", "chat"):
        for name, by_workload in runs.items():
            rates = by_workload[workload]
            lines.append(
                f"| {workload} req/s | {name} | "
                + " | ".join(f"{rates[c].per_second:.1f}" for c in LEVELS)
                + " |"
            )
            lines.append(
                f"| {workload} p99 ms | {name} | "
                + " | ".join(f"{rates[c].p99 * 1e3:.0f}" for c in LEVELS)
                + " |"
            )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        lines.append("(no plot: pip install 'inferd[bench]' for matplotlib)")
        return "\n".join(lines)
    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for column, workload in enumerate(("embeddings", "chat")):
        for name, by_workload in runs.items():
            rates = by_workload[workload]
            axes[0][column].plot(LEVELS, [rates[c].per_second for c in LEVELS], "o-", label=name)
            axes[1][column].plot(LEVELS, [rates[c].p99 for c in LEVELS], "o-", label=name)
        axes[0][column].set_title(f"{workload}: requests/s")
        axes[1][column].set_title(f"{workload}: p99 latency (s)")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].set_xlabel("concurrent clients")
            axes[row][column].legend()
    figure.tight_layout()
    figure.savefig(out / "scaling.png", dpi=100)
    lines.append(f"plot: {out / 'scaling.png'}")
    return "\n".join(lines)


def raw_load_seconds(weights: dict[str, Path]) -> dict[str, float]:
    """Import, load and answer once, in a fresh process: what a launch cannot beat."""
    scripts = {
        EMBEDDING: (
            "import time; t = time.perf_counter()\n"
            "from sentence_transformers import SentenceTransformer\n"
            f"SentenceTransformer({str(weights[EMBEDDING])!r}, device='cpu').encode(['hi'])\n"
            "print(time.perf_counter() - t)\n"
        ),
        LLM: (
            "import time; t = time.perf_counter()\n"
            "import xllamacpp as x\n"
            f"p = x.CommonParams(); p.model.path = {str(weights[LLM])!r}\n"
            "p.n_parallel = 4; p.n_ctx = 4 * 8192\n"
            "s = x.Server(p)\n"
            "s.handle_chat_completions({'messages': [{'role': 'user', 'content': 'hi'}], "
            "'max_tokens': 2})\n"
            "print(time.perf_counter() - t)\n"
        ),
    }
    return {
        name: float(
            subprocess.run(
                [sys.executable, "-c", script], capture_output=True, text=True, check=True
            ).stdout.split()[-1]
        )
        for name, script in scripts.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--xinference-venv", type=Path, help="a venv with xinference installed")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each load")
    parser.add_argument("--scaling", action="store_true", help="also run 1 to 256 clients")
    parser.add_argument("--scaling-seconds", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    weights = demo_weights()
    print("engines alone ...", flush=True)
    single, batched = raw_embeddings(weights[EMBEDDING], args.seconds)
    raw: dict[str, Any] = {"embed_single": single, "embed_batched": batched}
    raw.update({f"chat_{c}": r for c, r in raw_chat(weights[LLM], (1, 4), args.seconds).items()})
    raw["load"] = raw_load_seconds(weights)

    results: dict[str, dict[str, Any]] = {}
    runs: dict[str, dict[str, dict[int, Rate]]] = {}
    makers: list[Callable[[], Target]] = [Inferd]
    if args.xinference_venv:
        makers.append(lambda: Xinference(args.xinference_venv, weights))
    for make in makers:
        target = make()
        print(f"{target.name} ...", flush=True)
        try:
            if target.name == "inferd":
                listing = httpx.get(f"{target.url}/v1/models").content
            results[target.name] = measure(target, args.seconds)
            if args.scaling:
                runs[target.name] = scaling(target, args.scaling_seconds)
        finally:
            target.stop()
    raw["models_16"] = bare_models(listing, args.seconds)

    table = report(raw, results)
    print(table)
    (args.out / "table.md").write_text(table + "\n")
    if runs:
        text = scaling_report(runs, args.out)
        print(text)
        (args.out / "scaling.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
