"""One model process of a launched model, kept alive: restarted with backoff when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from inferd.engines.base import EngineConfig
from inferd.errors import LaunchFailed
from inferd.runtime.process import ModelProcess

log = logging.getLogger("inferd.replica")

CRASH_LIMIT = 5
CRASH_WINDOW = 600.0  # seconds: CRASH_LIMIT crashes within this mark the replica failed
_LOG_KEEP = 2
_LOG_ROTATE_BYTES = 10 * 1024 * 1024


# (config, socket path, log path) -> the process to start: local, or on a cluster node.
ProcessFactory = Callable[[EngineConfig, Path, Path], ModelProcess]


class Replica:
    def __init__(
        self,
        index: int,
        config: EngineConfig,
        socket_path: Path,
        log_path: Path,
        launch_timeout: float,
        on_change: Callable[[Replica, str, str | None], None],
        request_limit: int | None = None,
        new_process: ProcessFactory = ModelProcess,
    ):
        self.index = index
        self.config = config
        self.socket_path = socket_path
        self.log_path = log_path
        self.launch_timeout = launch_timeout
        self._on_change = on_change
        self.request_limit = request_limit
        self._new_process = new_process
        self.status = "pending"
        self.error: str | None = None
        self.process: ModelProcess | None = None
        self.inflight = 0
        self.served = 0
        self.restarts = 0
        self.crashes: deque[float] = deque()
        self.started: float | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def node(self) -> str | None:
        """The address of the cluster node it runs on; None for this machine."""
        return self.process.node if self.process else None

    @property
    def node_id(self) -> str | None:
        return self.process.node_id if self.process else None

    @property
    def gpus(self) -> list[int]:
        return self.process.gpus if self.process else self.config.gpus

    def memory_bytes(self) -> int | None:
        return self.process.memory_bytes() if self.process else None

    @property
    def preparing(self) -> str | None:
        """What its process waits on before the model loads, if anything."""
        return self.process.preparing if self.process is not None else None

    @property
    def slots(self) -> int | None:
        """Requests it works on at once (the launch's request_limits, else what its engine
        runs side by side); None where the engine takes any number."""
        if self.request_limit is not None:
            return self.request_limit
        return self.process.slots if self.process is not None else None

    @property
    def ready(self) -> bool:
        return self.status == "ready" and self.process is not None and self.process.alive

    def _set(self, status: str, message: str | None = None) -> None:
        self.status = status
        self._on_change(self, status, message)

    async def start(self) -> None:
        """Start the process and wait for the model; raises LaunchFailed with its reason."""
        self._stopping = False
        _rotate(self.log_path)
        self.process = self._new_process(self.config, self.socket_path, self.log_path)
        self._set("loading")
        await self.process.start(self.launch_timeout, on_spawn=self._spawned)
        self.started = time.time()
        self.error = None
        self._set("ready")
        self._watch = asyncio.create_task(self._supervise())

    def _spawned(self, pid: int) -> None:
        self._on_change(self, "spawned", str(pid))

    def _exited(self, pid: int | None) -> None:
        if pid is not None:
            self._on_change(self, "exited", str(pid))

    async def _supervise(self) -> None:
        """Restart the process whenever it dies without being asked to."""
        failed_restart: str | None = None
        while True:
            assert self.process is not None
            code = await self.process.wait()
            if self._stopping:
                return
            now = time.monotonic()
            self.crashes.append(now)
            while self.crashes and now - self.crashes[0] > CRASH_WINDOW:
                self.crashes.popleft()
            reason = failed_restart or self.process.exit_reason(code)
            failed_restart = None
            log.warning("%s replica %d: %s", self.config.model_uid, self.index, reason)
            await self.process.stop(timeout=1)
            self._exited(self.process.pid)
            if len(self.crashes) >= CRASH_LIMIT:
                self.error = (
                    f"crashed {len(self.crashes)} times in {CRASH_WINDOW / 60:.0f} minutes; last: "
                    f"{reason}\n--- last lines of {self.log_path} ---\n{self.process.log_tail()}"
                )
                self._set("failed", self.error)
                return
            self._set("restarting", reason)
            await asyncio.sleep(min(0.5 * 2 ** (len(self.crashes) - 1), 30.0))
            if self._stopping:
                return
            try:
                self.restarts += 1
                _rotate(self.log_path)
                self.process = self._new_process(self.config, self.socket_path, self.log_path)
                await self.process.start(self.launch_timeout, on_spawn=self._spawned)
            except LaunchFailed as exc:
                # A restart that cannot load counts as one more crash; the loop decides.
                log.warning("restart of %s failed: %s", self.config.model_uid, exc.message)
                failed_restart = f"restarting it failed: {exc.message}"
                continue
            self.started = time.time()
            self._set("ready", f"restarted after: {reason}")

    async def stop(self, grace: float) -> None:
        """Let in-flight requests finish for up to `grace` seconds, then end the process."""
        self._stopping = True
        deadline = time.monotonic() + grace
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
        if self.process is not None:
            pid = self.process.pid
            await self.process.stop(timeout=grace)
            self._exited(pid)
        self.status = "stopped"


def _rotate(path: Path) -> None:
    """Keep a model's log from growing without end: <uid>.log, .log.1, .log.2."""
    try:
        if path.stat().st_size < _LOG_ROTATE_BYTES:
            return
    except OSError:
        return
    for n in range(_LOG_KEEP, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        newer = path if n == 1 else path.with_name(f"{path.name}.{n - 1}")
        if newer.exists():
            newer.replace(older)
