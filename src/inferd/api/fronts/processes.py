"""The server's front processes: started with it, started again if one exits, stopped with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from inferd.api.fronts.dealer import Dealer
from inferd.settings import Settings

log = logging.getLogger("inferd.fronts")

_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0)  # seconds before each restart after a quick exit
_STEADY = 60.0  # a front that ran this long exited by chance, not at start: no back-off
SETTINGS_VARIABLE = "INFERD_FRONT_SETTINGS"


@dataclass(frozen=True)
class FrontsPlan:
    """What `inferd serve --api-processes N` set up before the app started: the port's
    listening socket, whose connections the server deals to the `count` fronts, and the
    server's Unix sockets they reach it on."""

    count: int
    listening_fd: int
    folder: Path  # the server's sockets: control.sock (slots), server.sock (the rest)
    log_level: str

    @property
    def control(self) -> Path:
        return self.folder / "control.sock"

    @property
    def server(self) -> Path:
        return self.folder / "server.sock"


class FrontProcesses:
    def __init__(self, plan: FrontsPlan, settings: Settings):
        self.plan, self.settings = plan, settings
        self._running: list[asyncio.subprocess.Process | None] = [None] * plan.count
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        # A descriptor of our own for the port's socket (the command keeps and closes its one).
        self._listening = socket.socket(fileno=os.dup(plan.listening_fd))
        self._dealer = Dealer(self._listening, plan.count)

    def start(self) -> None:
        self._keepers = [asyncio.create_task(self._keep(i)) for i in range(self.plan.count)]

    async def stop(self) -> None:
        """Stop them, and remove the server's sockets (uvicorn ends the process with the
        signal it caught, so nothing after the app's shutdown runs)."""
        self._stopping = True
        self._dealer.stop()  # new connections wait in the port's queue, for nobody
        self._listening.close()
        for keeper in self._keepers:
            keeper.cancel()
        running = [p for p in self._running if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                await asyncio.wait_for(process.wait(), self.settings.terminate_timeout + 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        shutil.rmtree(self.plan.folder, ignore_errors=True)

    async def _keep(self, index: int) -> None:
        quick_exits = 0
        while not self._stopping:
            loop = asyncio.get_running_loop()
            began = loop.time()
            process = self._running[index] = await self._spawn(index)
            code = await process.wait()
            if self._stopping:
                return
            self._dealer.gone(index)
            quick_exits = 0 if loop.time() - began > _STEADY else quick_exits + 1
            delay = _BACKOFF[min(quick_exits, len(_BACKOFF)) - 1] if quick_exits else 0.0
            log.warning(
                "API process %d (pid %d) exited with code %s; starting it again in %.1fs",
                index + 1,
                process.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        plan = self.plan
        # The settings travel in the environment, not on a command line anyone can read.
        env = {**os.environ, SETTINGS_VARIABLE: self.settings.model_dump_json()}
        with self._dealer.channel(index) as theirs:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "inferd.api.fronts",
                str(theirs.fileno()),
                str(plan.control),
                str(plan.server),
                plan.log_level,
                pass_fds=(theirs.fileno(),),
                env=env,
                # Out of the terminal's process group: Ctrl-C stops the server, which stops
                # them in order, rather than each on its own (and the server starting them
                # again).
                start_new_session=True,
            )
