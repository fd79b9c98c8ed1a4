"""One model process as the server sees it: start it, follow its load, talk to it, stop it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import httpx

from inferd.engines.base import EngineConfig
from inferd.errors import LaunchFailed
from inferd.runtime.frames import FrameChannel, frames_path, tokenizer_path

_LOG_TAIL_LINES = 25
_CHUNK = 64 * 1024


class ModelProcess:
    def __init__(self, config: EngineConfig, socket_path: Path, log_path: Path):
        self.config = config
        self.socket_path = socket_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.slots: int | None = None  # what its engine runs side by side, once loaded
        # What it waits on before its model can load (a node building its engine's
        # environment), said while it lasts.
        self.preparing: str | None = None
        self.client = http_client(httpx.AsyncHTTPTransport(uds=str(socket_path)), "http://model")
        self._session: aiohttp.ClientSession | None = None
        self._frames: FrameChannel | None = None
        self._frames_path: str | None = None  # where it takes frames, as its health says
        # Where relays find the tokenizer to send texts' ids with, as its health says.
        self.tokenizer: str | None = None
        self._headers: dict[str, str] = {}

    def session(self) -> aiohttp.ClientSession:
        """The client for whole answers (the hot path of embeddings and rerank): aiohttp
        spends a quarter of httpx's CPU on a request, a tenth with 32 in flight. Made on first
        use, inside the server's loop."""
        if self._session is None:
            self._session = answers_session(self._connector(), self._headers)
        return self._session

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.UnixConnector(path=str(self.socket_path), limit=0)

    def frames(self) -> FrameChannel | None:
        """Where whole answers of `FRAMED` routes go, in frames rather than HTTP; None where the
        process speaks HTTP only (on another node, or where its frames socket could not be
        made)."""
        if self._frames is None and self._frames_path is not None:
            self._frames = FrameChannel(self._frames_path)
        return self._frames

    @property
    def base_url(self) -> str:
        """Where whole answers are sent (the host part is unused on a Unix socket)."""
        return "http://model"

    def mark_unreachable(self) -> None:
        """A connection to it failed. Here that means it died, which its supervisor sees."""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.exit_code is None

    @property
    def exit_code(self) -> int | None:
        """How the process ended; None while it runs (or before it started)."""
        return self.proc.returncode if self.proc else None

    @property
    def node(self) -> str | None:
        """The address of the cluster node it runs on; None for this machine."""
        return None

    @property
    def node_id(self) -> str | None:
        return None

    def exit_reason(self, code: int) -> str:
        """Why it ended, in words, given its exit code."""
        return f"the model process exited with code {code}"

    @property
    def gpus(self) -> list[int]:
        """The GPUs it was given, as its node numbers them."""
        return self.config.gpus

    def memory_bytes(self) -> int | None:
        return resident_bytes(self.proc.pid) if self.proc else None

    async def start(self, timeout: float, on_spawn: Callable[[int], None] | None = None) -> None:
        """Start the process and return once the model is ready, or raise LaunchFailed."""
        pid = await self._spawn()
        if on_spawn is not None:
            on_spawn(pid)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.exit_code is not None:
                reason = f"the model process exited with code {self.exit_code}"
                raise LaunchFailed(await self._failure(reason))
            health = await self._health()
            if health is not None:
                if health["status"] == "ready":
                    self.slots = health.get("slots")
                    self._frames_path = health.get("frames")
                    self.tokenizer = health.get("tokenizer")
                    if self._frames is not None and self._frames.path != self._frames_path:
                        self._frames.close()
                        self._frames = None
                    return
                if health["status"] == "failed":
                    message = await self._failure(str(health.get("error")))
                    await self.stop(timeout=5)
                    raise LaunchFailed(message, param=health.get("param"))
            if time.monotonic() > deadline:
                message = await self._failure(f"the model was not ready after {timeout:.0f}s")
                await self.stop(timeout=5)
                raise LaunchFailed(message)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    async def _spawn(self) -> int:
        """Start the process; its pid."""
        config_path = self.socket_path.with_suffix(".json")
        config_path.write_text(self.config.model_dump_json())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *worker_command(config_path, str(self.socket_path), self.config.python),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                # Its own session: a Ctrl-C in the server's terminal reaches the server only,
                # which then stops the models in order.
                start_new_session=True,
                env=worker_env(self.config),
            )
        return self.proc.pid

    async def wait(self) -> int:
        """Wait for the process to exit; its exit code."""
        assert self.proc is not None
        code = await self.proc.wait()
        self._end_group()
        return code

    async def _health(self) -> dict | None:
        try:
            response = await self.client.get("/health", timeout=2.0)
        except httpx.HTTPError:
            return None  # not listening yet
        result: dict = response.json()
        return result

    async def _failure(self, reason: str) -> str:
        return (
            f"launching {self.config.model_uid} failed: {reason}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        return read_tail(self.log_path, lines)

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if the model has not exited within `timeout` seconds."""
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()
        if self._frames is not None:
            self._frames.close()
        if self.proc is not None:
            await end_process(self.proc, timeout)
        for path in (
            self.socket_path,
            self.socket_path.with_suffix(".json"),
            Path(frames_path(self.socket_path)),
            tokenizer_path(frames_path(self.socket_path)),
        ):
            path.unlink(missing_ok=True)

    def _end_group(self) -> None:
        if self.proc is not None:
            end_group(self.proc.pid)


async def end_process(proc: asyncio.subprocess.Process, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; then its group."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    end_group(proc.pid)


def end_group(pid: int) -> None:
    """Processes the model process started (vLLM's engine core, its GPU workers) share its
    session; once it is gone they would only hold memory, so they go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def answers_session(
    connector: aiohttp.BaseConnector, headers: dict[str, str] | None = None
) -> aiohttp.ClientSession:
    """A pool of connections to one model process for whole answers, relayed untouched."""
    return aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
        auto_decompress=False,
    )


def http_client(
    transport: httpx.AsyncBaseTransport, base_url: str, headers: dict[str, str] | None = None
) -> httpx.AsyncClient:
    """The client for streams and small calls to a model process."""
    return httpx.AsyncClient(
        transport=transport,
        base_url=base_url,
        headers=headers,
        # Generation may run for minutes; only connecting has to be quick.
        timeout=httpx.Timeout(None, connect=5.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
    )


def worker_command(config_path: Path, address: str, python: str | None = None) -> list[str]:
    """The model process's command line: under the engine environment's interpreter, if it has
    one, else the server's."""
    return [python or sys.executable, "-m", "inferd.runtime.worker", str(config_path), address]


# Set where a model process runs in an environment inferd built for its engine (on a Ray node).
OWN_ENVIRONMENT = "INFERD_ENGINE_OWN_ENV"


def worker_env(config: EngineConfig) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    if config.python is not None or OWN_ENVIRONMENT in os.environ:
        # An environment inferd built keeps the bytecode its model processes compile: where
        # none is written (PYTHONDONTWRITEBYTECODE, as on CI and in many containers) every start
        # compiled torch and transformers again, twice the import time. uv installs without
        # bytecode, and compiling it all at build time costs more than the first start does.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return {**env, **config.env}


def read_tail(path: Path, lines: int) -> str:
    """The last `lines` lines of a file, reading only as much of its end as needed."""
    if lines == 0:
        return ""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            position, data = end, b""
            while position > 0 and data.count(b"\n") <= lines:
                step = min(_CHUNK, position)
                position -= step
                f.seek(position)
                data = f.read(step) + data
    except OSError:  # not written yet, or gone
        return ""
    text = data.decode("utf-8", "replace")
    kept = text.splitlines(keepends=True)[-lines:]
    return "".join(kept)


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory, engine threads and all; None off Linux or once it ended."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
