"""A front's side of the control socket (`control` has the messages): slots asked for, given
back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
from typing import Any, NamedTuple

import orjson

from inferd.api.wrong_keys import WrongKeys
from inferd.errors import InferdError, ModelUnavailable, TooManyRequests, UpstreamError

log = logging.getLogger("inferd.fronts")


class Grant(NamedTuple):
    """A slot the server holds for one request: the model's uid, its process's HTTP socket, the
    socket where it takes frames and the file of the tokenizer it takes texts' ids by (None:
    it takes texts)."""

    id: int
    uid: str
    socket: str
    frames: str
    tokenizer: str | None


class Grants:
    def __init__(self, path: str, wrong_keys: WrongKeys):
        """`wrong_keys`: this front's count, which the server tells whom to refuse."""
        self.path = path
        self.wrong_keys = wrong_keys
        self._writer: asyncio.StreamWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    async def connect(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)  # the server is still starting
        self._reading = asyncio.create_task(self._read(reader))

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
        if self._writer is not None:
            self._writer.close()

    async def grant(
        self, route: str, model: str, request_id: str, key: list[Any] | None, **checks: Any
    ) -> Grant | None:
        """A slot for one request, once the model's queue reaches it; None when the server
        wants the request passed on to it; the server's refusal is raised here."""
        n = next(self._ids)
        message = {"op": "grant", "id": n, "route": route, "model": model}
        self._send({**message, "request_id": request_id, "key": key, **checks})
        # Registered after the send (no reply can come in between): a send that fails leaves
        # nothing behind.
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[n] = future
        try:
            reply = await future
        except asyncio.CancelledError:
            # The client left: a slot granted meanwhile goes back, a wait is given up.
            self._pending.pop(n, None)
            self._send({"op": "drop", "id": n})
            raise
        if "error" in reply:
            raise _refusal(reply["error"])
        if reply.get("forward"):
            return None
        return Grant(n, reply["uid"], reply["socket"], reply["frames"], reply.get("tokenizer"))

    def release(self, grant: Grant, status: int, seconds: float | None) -> None:
        self._send({"op": "release", "id": grant.id, "status": status, "seconds": seconds})

    def unreachable(self, grant: Grant) -> None:
        self._send({"op": "unreachable", "id": grant.id})

    def wrong_key(self, client: str) -> None:
        """Tell the server of a wrong key from `client`, to count with the other processes'."""
        with contextlib.suppress(ModelUnavailable):  # this front's own count still holds
            self._send({"op": "wrong_key", "client": client})

    def _send(self, message: dict[str, Any]) -> None:
        if self._writer is None or self._writer.is_closing():
            raise ModelUnavailable("the server is not reachable from this API process")
        self._writer.write(orjson.dumps(message) + b"\n")

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                reply = orjson.loads(line)
                if "refuse" in reply:
                    self.wrong_keys.refuse(reply["refuse"], reply["seconds"])
                    continue
                future = self._pending.pop(reply["id"], None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except (ConnectionError, orjson.JSONDecodeError) as exc:
            log.warning("the control connection broke: %r", exc)
        gone = ModelUnavailable("the server stopped; this API process stops with it")
        for future in self._pending.values():
            if not future.done():
                future.set_exception(gone)
        self._pending.clear()
        # Without the server there is nothing to relay for: stop, as its shutdown would.
        os.kill(os.getpid(), signal.SIGTERM)


def _refusal(error: dict[str, Any]) -> InferdError:
    """The server's refusal, raised again here so it leaves in the shape of the API called."""
    if error.get("retry_after") is not None and error["status"] == 429:
        return TooManyRequests(
            error["message"], retry_after=error["retry_after"], param=error.get("param")
        )
    return UpstreamError(error["status"], error)
