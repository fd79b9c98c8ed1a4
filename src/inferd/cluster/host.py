"""The Ray actor that runs one model process on its node for the server."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from inferd.cluster.weights import fetch
from inferd.engines.base import EngineConfig
from inferd.runtime.process import (
    end_group,
    end_process,
    read_tail,
    resident_bytes,
    worker_command,
    worker_env,
)

_LISTEN_BACKLOG = 512


class ModelHost:
    """Starts the model process on this node, listening on TCP for the server, and lives as long
    as it: when the node dies, so does this actor, and Ray tells the server."""

    def __init__(self, config_json: str, token: str, weights: Any, server_node: str, copy: bool):
        """`weights` is the server's WeightSource, on node `server_node`; `copy`: copy the
        weights into this node's cache even where the server's path is visible."""
        self._config = EngineConfig.model_validate_json(config_json)
        self._token = token
        self._weights = weights
        self._server_node = server_node
        self._copy = copy
        self._dir = Path(tempfile.mkdtemp(prefix="inferd-host-"))
        self._log = self._dir / "model.log"
        self._proc: asyncio.subprocess.Process | None = None

    def node(self) -> str:
        """The node this host was placed on; answers as soon as it is placed."""
        import ray

        return ray.get_runtime_context().get_node_id()

    async def spawn(self) -> dict[str, Any]:
        """Start the model process (its weights copied here first, if need be); where it
        listens, and what it is."""
        import ray

        ip = ray.util.get_node_ip_address()
        node = self.node()
        if node != self._server_node:
            options = dict(self._config.options)
            if "mmproj" in options:  # a vision projector beside GGUF weights travels with them
                options["mmproj"] = await self._local(options["mmproj"])
            self._config = self._config.model_copy(
                update={
                    "model_path": await self._local(self._config.model_path),
                    "loras": {
                        name: await self._local(folder)
                        for name, folder in self._config.loras.items()
                    },
                    "options": options,
                }
            )
        # Bound here and handed over, so the port is known before the process runs and no
        # other process can take it in between.
        listener = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
        listener.bind((ip, 0))
        listener.listen(_LISTEN_BACKLOG)
        port = listener.getsockname()[1]
        config_path = self._dir / "config.json"
        config_path.write_text(self._config.model_dump_json())
        env = worker_env(self._config)
        env["INFERD_WORKER_TOKEN"] = self._token
        # Ray caps the threads of an actor's libraries at the CPUs it reserved (one, a token
        # for placement); the model should have the node's cores unless the launch said.
        if "OMP_NUM_THREADS" not in self._config.env:
            env.pop("OMP_NUM_THREADS", None)
        with open(self._log, "ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *worker_command(config_path, f"fd:{listener.fileno()}"),
                pass_fds=(listener.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        listener.close()  # the model process has its own copy
        host = f"[{ip}]" if ":" in ip else ip
        return {
            "url": f"http://{host}:{port}",
            "pid": self._proc.pid,
            "node_id": node,
            "node_ip": ip,
            "model_path": self._config.model_path,
            # The GPUs named at launch, else those Ray gave this host.
            "gpus": self._config.gpus or [int(g) for g in ray.get_gpu_ids()],
        }

    async def _local(self, path: str) -> str:
        """Where this node reads the server's `path` from: there if it sees it (a shared
        filesystem) and copies were not asked for, else its own copy."""
        if not self._copy and Path(path).exists():
            return path
        return await fetch(self._weights, path, self._server_node)

    async def wait(self) -> int:
        """Until the model process exits; its exit code."""
        assert self._proc is not None
        code = await self._proc.wait()
        end_group(self._proc.pid)
        return code

    async def stop(self, timeout: float) -> None:
        if self._proc is not None:
            await end_process(self._proc, timeout)
        shutil.rmtree(self._dir, ignore_errors=True)

    def log_tail(self, lines: int) -> str:
        return read_tail(self._log, lines)

    def log_since(self, position: int | None, lines: int) -> tuple[str, int]:
        """The log's last `lines` lines (position None), else what was written after
        `position`; and where it ends now, to ask from next time."""
        try:
            size = self._log.stat().st_size
        except FileNotFoundError:
            return "", 0
        if position is None:
            return read_tail(self._log, lines), size
        with open(self._log, "rb") as f:
            f.seek(position)
            data = f.read(min(size - position, 1 << 20))
        return data.decode("utf-8", "replace"), position + len(data)

    def memory_bytes(self) -> int | None:
        return resident_bytes(self._proc.pid) if self._proc is not None else None
