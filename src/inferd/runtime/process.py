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

_LOG_TAIL_LINES = 25


class ModelProcess:
    def __init__(self, config: EngineConfig, socket_path: Path, log_path: Path):
        self.config = config
        self.socket_path = socket_path
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.slots: int | None = None  # what its engine runs side by side, once loaded
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://model",
            # Generation may run for minutes; only connecting has to be quick.
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        """The client for whole answers (the hot path of embeddings and rerank): aiohttp
        spends a quarter of httpx's CPU on a request, a tenth with 32 in flight. Made on first
        use, inside the server's loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.socket_path), limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
                auto_decompress=False,
            )
        return self._session

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float, on_spawn: Callable[[int], None] | None = None) -> None:
        """Start the process and return once the model is ready, or raise LaunchFailed."""
        config_path = self.socket_path.with_suffix(".json")
        config_path.write_text(self.config.model_dump_json())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "inferd.runtime.worker",
                str(config_path),
                str(self.socket_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                # Its own session: a Ctrl-C in the server's terminal reaches the server only,
                # which then stops the models in order.
                start_new_session=True,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1",
                    **self.config.env,
                },
            )
        if on_spawn is not None:
            on_spawn(self.proc.pid)
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.proc.returncode is not None:
                raise LaunchFailed(
                    self._failure(f"the model process exited with code {self.proc.returncode}")
                )
            health = await self._health()
            if health is not None:
                if health["status"] == "ready":
                    self.slots = health.get("slots")
                    return
                if health["status"] == "failed":
                    await self.stop(timeout=5)
                    raise LaunchFailed(
                        self._failure(str(health.get("error"))), param=health.get("param")
                    )
            if time.monotonic() > deadline:
                await self.stop(timeout=5)
                raise LaunchFailed(self._failure(f"the model was not ready after {timeout:.0f}s"))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.25)

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

    def _failure(self, reason: str) -> str:
        return (
            f"launching {self.config.model_uid} failed: {reason}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if the model has not exited within `timeout` seconds."""
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
        self._end_group()
        for path in (self.socket_path, self.socket_path.with_suffix(".json")):
            path.unlink(missing_ok=True)

    def _end_group(self) -> None:
        """Processes the model process started (vLLM's engine core, its GPU workers) share its
        session; once it is gone they would only hold memory, so they go too."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory, engine threads and all; None off Linux or once it ended."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
