"""A model process on another node, as the server sees it: the same calls as a local one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from inferd.cluster.engine_envs import SETUP_TIMEOUT
from inferd.cluster.ray_cluster import Need, RayCluster
from inferd.engines.base import EngineConfig
from inferd.errors import InvalidRequest, LaunchFailed
from inferd.runtime.process import ModelProcess, http_client
from inferd.runtime.worker import TOKEN_HEADER

log = logging.getLogger("inferd.cluster")

# How long a host may wait for a node with room before the launch fails; a node that could
# never hold it fails the launch at once.
PLACEMENT_TIMEOUT = 120.0
_NODE_DIED = -1  # the exit code reported when the host (its node) went away
_CALL_TIMEOUT = 10.0


class RemoteModelProcess(ModelProcess):
    def __init__(
        self,
        config: EngineConfig,
        socket_path: Path,
        log_path: Path,
        cluster: RayCluster,
        need: Need,
        pinned: str | None,
        environment: dict[str, Any] | None = None,
    ):
        """`pinned`: the node a launch named (worker_ip: an address or a node id), if any;
        `environment`: the Ray runtime_env of the engine's own environment, if it has one."""
        super().__init__(config, socket_path, log_path)
        self._cluster = cluster
        self._need = need
        self._pinned = pinned
        self._environment = environment
        self._host: Any = None
        self._where: dict[str, Any] = {}
        self._exit: int | None = None
        self._ended: asyncio.Future[int] | None = None
        self._headers = {TOKEN_HEADER: cluster.token}
        self._probe: asyncio.Task[None] | None = None
        self._unreachable = False
        self._tail = ""
        self._memory: tuple[float, int | None] = (0.0, None)
        self._launch_timeout = PLACEMENT_TIMEOUT

    @property
    def pid(self) -> int | None:
        return self._where.get("pid")

    @property
    def exit_code(self) -> int | None:
        return self._exit

    @property
    def alive(self) -> bool:
        return super().alive and not self._unreachable

    @property
    def node(self) -> str | None:
        return self._where.get("node_ip")

    @property
    def node_id(self) -> str | None:
        return self._where.get("node_id")

    @property
    def gpus(self) -> list[int]:
        return list(self._where.get("gpus", self.config.gpus))

    async def start(self, timeout: float, on_spawn: Callable[[int], None] | None = None) -> None:
        self._launch_timeout = timeout
        # The pid is another machine's: nothing here may record it as a local process.
        await super().start(timeout, on_spawn=None)

    async def _spawn(self) -> int:
        # Both ask Ray's control store for its nodes: not on the loop, which serves requests.
        if not await asyncio.to_thread(self._cluster.fits, self._need):
            raise LaunchFailed(
                f"no node of the cluster has {self._need} for {self.config.model_uid}"
            )
        try:
            self._host = await asyncio.to_thread(
                self._cluster.host, self.config, self._need, self._pinned, self._environment
            )
        except InvalidRequest as exc:  # the node it is pinned to is gone
            raise LaunchFailed(exc.message, param=exc.param) from None
        uid = self.config.model_uid
        # A node builds the engine's environment before the host starts there.
        building = SETUP_TIMEOUT if self._environment else 0.0
        if building:
            self.preparing = "the node Ray placed it on builds the environment with uv"
            log.info("%s: its node builds its engine's environment first (Ray, uv)", uid)
        try:
            await asyncio.wait_for(self._host.node.remote(), PLACEMENT_TIMEOUT + building)
        except asyncio.TimeoutError:
            self._kill_host()
            raise LaunchFailed(
                f"no node of the cluster had {self._need} free for {uid} "
                f"within {PLACEMENT_TIMEOUT + building:.0f}s"
                + (" (building its engine's environment there counts)" if building else "")
            ) from None
        except Exception as exc:  # its node went away, or could not build the environment
            self._kill_host()
            raise LaunchFailed(f"placing {uid} on a node failed: {_short(exc)}") from None
        finally:
            self.preparing = None
        try:
            # Copying the weights to the node, when it must, counts as loading.
            self._where = await asyncio.wait_for(self._host.spawn.remote(), self._launch_timeout)
        except asyncio.TimeoutError:
            self._kill_host()
            raise LaunchFailed(
                f"{uid} was not started on its node within {self._launch_timeout:.0f}s "
                "(copying its weights there, when the node does not see them, counts)"
            ) from None
        except Exception as exc:  # the host failed to start it, or its node went away
            self._kill_host()
            cause = getattr(exc, "cause", None) or exc  # Ray wraps the host's own error
            raise LaunchFailed(f"starting {uid} on a node failed: {cause}") from None
        await self.client.aclose()  # made for a Unix socket before the address was known
        self.client = http_client(httpx.AsyncHTTPTransport(), self._where["url"], self._headers)
        self._ended = asyncio.ensure_future(self._follow(self._host.wait.remote()))
        log.info(
            "%s runs on node %s (%s), pid %s",
            self.config.model_uid,
            self._where["node_ip"],
            self._where["node_id"][:12],
            self._where["pid"],
        )
        return int(self._where["pid"])

    def _connector(self) -> aiohttp.BaseConnector:
        return aiohttp.TCPConnector(limit=0)

    def frames(self) -> None:
        return None  # the node's process listens on TCP, and speaks HTTP only

    @property
    def base_url(self) -> str:
        """Where whole answers are sent; local processes answer on their Unix socket."""
        return str(self._where.get("url", "http://model"))

    async def _follow(self, ended: Any) -> int:
        try:
            code = int(await ended)
        except Exception as exc:  # the actor died: its node is gone, or Ray stopped it
            log.warning("the host of %s is gone: %s", self.config.model_uid, exc)
            code = _NODE_DIED
        self._exit = code
        return code

    async def wait(self) -> int:
        if self._ended is None:  # never started: nothing to wait for
            return self._exit if self._exit is not None else _NODE_DIED
        code = await asyncio.shield(self._ended)
        await self._fetch_tail()
        return code

    def exit_reason(self, code: int) -> str:
        if code == _NODE_DIED:
            return f"its node {self.node} went away" if self.node else "its node went away"
        return super().exit_reason(code)

    def mark_unreachable(self) -> None:
        """A connection failed: send nothing here until /health answers again (or the host is
        reported dead and the replica starts another)."""
        if self._unreachable or self._exit is not None:
            return
        self._unreachable = True
        self._probe = asyncio.ensure_future(self._until_reachable())

    async def _until_reachable(self) -> None:
        while self._exit is None:
            await asyncio.sleep(1.0)
            if await self._health() is not None:
                log.info("%s answers again", self.config.model_uid)
                self._unreachable = False
                return

    def memory_bytes(self) -> int | None:
        # Asked on every listing and scrape: refreshed in the background at most every 5 s.
        when, value = self._memory
        if self._host is not None and self._exit is None and time.monotonic() - when > 5:
            self._memory = (time.monotonic(), value)
            with contextlib.suppress(RuntimeError):  # asked outside the loop: no refresh
                task = asyncio.get_running_loop().create_task(self._refresh_memory())
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
        return value

    async def _refresh_memory(self) -> None:
        with contextlib.suppress(Exception):
            value = await asyncio.wait_for(self._host.memory_bytes.remote(), _CALL_TIMEOUT)
            self._memory = (time.monotonic(), value)

    async def _fetch_tail(self) -> None:
        if self._host is None:
            return
        with contextlib.suppress(Exception):
            self._tail = await asyncio.wait_for(self._host.log_tail.remote(25), _CALL_TIMEOUT)

    async def read_log(self, lines: int) -> str:
        """The last lines of its log, which lives on its node."""
        text, _ = await asyncio.wait_for(self._host.log_since.remote(None, lines), _CALL_TIMEOUT)
        return str(text)

    async def follow_log(self, lines: int) -> AsyncIterator[bytes]:
        """`tail -f` across the network: the last lines, then what is written, polled."""
        position = None
        while self._exit is None:
            text, position = await asyncio.wait_for(
                self._host.log_since.remote(position, lines), _CALL_TIMEOUT
            )
            if text:
                yield text.encode()
            await asyncio.sleep(0.5)

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self._tail.splitlines()[-lines:])

    async def _failure(self, reason: str) -> str:
        await self._fetch_tail()
        return (
            f"launching {self.config.model_uid} on node {self.node} failed: {reason}\n"
            f"--- last lines of its log ---\n{self.log_tail()}"
        )

    async def stop(self, timeout: float) -> None:
        await self.client.aclose()
        if self._session is not None:
            await self._session.close()
        if self._probe is not None:
            self._probe.cancel()
        if self._host is not None and self._exit is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._host.stop.remote(timeout), timeout + _CALL_TIMEOUT)
        self._kill_host()
        if self._ended is not None and not self._ended.done():
            self._ended.cancel()

    def _kill_host(self) -> None:
        if self._host is not None:
            import ray

            with contextlib.suppress(Exception):
                ray.kill(self._host)


_BACKGROUND: set[asyncio.Task[None]] = set()


def _short(exc: Exception, lines: int = 30) -> str:
    """Ray's error, without the bulk of its traceback: a failed environment build ends with
    uv's own words."""
    text = str(exc).strip().splitlines()
    return "\n".join(text[-lines:]) if len(text) > lines else "\n".join(text)
