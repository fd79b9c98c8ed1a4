"""The server's side of the API processes: slots on model processes, granted over a Unix socket.

Each front keeps one connection open; the messages are JSON lines.

    front:  {"op": "grant", "id": 7, "route": "embeddings", "model": "m", "dimensions": 256,
             "request_id": "...", "key": ["name", false, ["m"]]}   (key: null without auth)
    server: {"id": 7, "uid": "m", "socket": "/tmp/.../m1.sock", "frames": ".../m1.sock.frames",
             "tokenizer": ".../m1.sock.frames.tokenizer"}
                                    a slot, held for the front: the request goes in frames
                                    (runtime/frames), an abort to the HTTP socket; an
                                    embedding's texts as ids where a tokenizer is named
                                    (fronts/text_ids), else null
            {"id": 7, "forward": true}      the model runs on another node, or takes no frames:
                                            pass the request on
            {"id": 7, "error": {"status": 404, "type": ..., "message": ..., "param": ...,
                                "code": ..., "retry_after": null}}
    front:  {"op": "release", "id": 7, "status": 200, "seconds": 0.012}
            {"op": "unreachable", "id": 7}  the model process refused the connection
            {"op": "drop", "id": 7}         the client left before its slot came
            {"op": "wrong_key", "client": "10.0.0.9"}   a wrong API key from that client
    server: {"refuse": "10.0.0.9", "seconds": 58.5}     to every front: too many wrong keys
                                                        from it, in all processes together

A grant costs the server one line each way, against the whole HTTP request and relay it costs
when it takes the request itself; the model's queue, its idle wake-up and its metrics stay in
one place. A front that goes away gives back every slot it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from inferd.api.auth import Principal, check_model
from inferd.api.metrics import REQUESTS
from inferd.api.openai_routes import embedding_model
from inferd.api.proxy import count
from inferd.api.rerank import rerank_model
from inferd.api.wrong_keys import WrongKeys
from inferd.errors import InferdError, InvalidRequest, RequestAborted, TooManyRequests
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager
from inferd.runtime.replica import Replica

log = logging.getLogger("inferd.fronts")

# What a front may ask a slot for, and the path its requests are counted under (the model
# process's own, as the server's relay counts them).
ROUTES = {"embeddings": "/embeddings", "rerank": "/rerank"}


class FrontControl:
    """Listens on `path` for the fronts' connections."""

    def __init__(self, manager: ModelManager, path: Path, wrong_keys: WrongKeys):
        self.manager = manager
        self.path = path
        self.wrong_keys = wrong_keys
        # Wrong keys the fronts report and those sent to the server count together.
        wrong_keys.on_refused = self._refuse_everywhere
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for session in list(self._sessions):
            session.end()

    def _refuse_everywhere(self, client: str, seconds: float) -> None:
        for session in self._sessions:
            session.send({"refuse": client, "seconds": seconds})

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self.manager, writer, self.wrong_keys)
        self._sessions.add(session)
        for client, seconds in self.wrong_keys.refused().items():  # a front started again
            session.send({"refuse": client, "seconds": seconds})
        try:
            while line := await reader.readline():
                session.handle(orjson.loads(line))
        except (ConnectionError, orjson.JSONDecodeError, KeyError) as exc:
            log.warning("a front's control connection broke: %r", exc)
        finally:
            self._sessions.discard(session)
            session.end()
            writer.close()


class _Slot(NamedTuple):
    instance: ModelInstance
    replica: Replica
    path: str


class _Session:
    """One front: the slots it holds and the grants it waits for, by the front's ids."""

    def __init__(self, manager: ModelManager, writer: asyncio.StreamWriter, wrong_keys: WrongKeys):
        self.manager = manager
        self.writer = writer
        self.wrong_keys = wrong_keys
        self.held: dict[int, _Slot] = {}
        self.waiting: dict[int, asyncio.Task[None]] = {}
        self.ended = False

    def handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "wrong_key":
            self.wrong_keys.record(message["client"])
            return
        n = message["id"]
        if op == "grant":
            self._grant(n, message)
        elif op == "release":
            slot = self.held.pop(n, None)
            if slot is not None:
                self._release(slot, message.get("status", 200), message.get("seconds"))
        elif op == "unreachable":
            slot = self.held.pop(n, None)
            if slot is not None:
                if slot.replica.process is not None:
                    slot.replica.process.mark_unreachable()
                self.manager.release(slot.instance, slot.replica)
        elif op == "drop":
            task = self.waiting.pop(n, None)
            if task is not None:
                task.cancel()
            slot = self.held.pop(n, None)
            if slot is not None:
                self._release(slot, 499, None)

    def end(self) -> None:
        """The front is gone: nobody will use or give back what it holds."""
        if self.ended:
            return
        self.ended = True
        for task in self.waiting.values():
            task.cancel()
        self.waiting.clear()
        for slot in self.held.values():
            self.manager.release(slot.instance, slot.replica)
        self.held.clear()

    def _grant(self, n: int, message: dict[str, Any]) -> None:
        try:
            instance, path = self._target(message)
            replica = self.manager.try_acquire(instance)  # no task to make when a slot is free
        except InferdError as exc:
            self._refuse(n, exc)
            return
        if replica is not None:
            self._granted(n, instance, replica, path)
            return
        task = asyncio.create_task(self._wait(n, instance, path, message["request_id"]))
        self.waiting[n] = task
        task.add_done_callback(lambda _: self.waiting.pop(n, None))

    def _target(self, message: dict[str, Any]) -> tuple[ModelInstance, str]:
        route = message["route"]
        if route == "embeddings":
            instance = embedding_model(self.manager, message["model"], message.get("dimensions"))
        elif route == "rerank":
            instance = rerank_model(self.manager, message["model"])
        else:  # a front of another version
            raise InvalidRequest(f"the server does not grant slots for {route!r}")
        key = message.get("key")
        if key is not None:
            name, admin, models = key
            check_model(instance.uid, Principal(name, admin, frozenset(models) if models else None))
        if self.manager.aborts.blocked(instance.uid, message["request_id"]):
            raise RequestAborted(message["request_id"])
        return instance, ROUTES[route]

    async def _wait(self, n: int, instance: ModelInstance, path: str, request_id: str) -> None:
        try:
            replica = await self.manager.acquire(instance)
        except InferdError as exc:
            if isinstance(exc, TooManyRequests):
                REQUESTS.labels(instance.uid, path, "429").inc()
            self._refuse(n, exc)
            return
        if self.ended:
            self.manager.release(instance, replica)
        elif self.manager.aborts.blocked(instance.uid, request_id):  # aborted while it waited
            self.manager.release(instance, replica)
            self._refuse(n, RequestAborted(request_id))
        else:
            self._granted(n, instance, replica, path)

    def _granted(self, n: int, instance: ModelInstance, replica: Replica, path: str) -> None:
        process = replica.process
        channel = process.frames() if process is not None else None
        if process is None or channel is None:
            # Taking no frames (on another node of a Ray cluster, or its frames socket could
            # not be made): the server's own relay knows how to reach it.
            self.manager.release(instance, replica)
            self.send({"id": n, "forward": True})
            return
        self.held[n] = _Slot(instance, replica, path)
        self.send(
            {
                "id": n,
                "uid": instance.uid,
                "socket": str(process.socket_path),
                "frames": channel.path,
                "tokenizer": process.tokenizer,
            }
        )

    def _release(self, slot: _Slot, status: int, seconds: float | None) -> None:
        self.manager.release(slot.instance, slot.replica, seconds)
        count(slot.instance.uid, slot.path, status, seconds, "front")

    def _refuse(self, n: int, exc: InferdError) -> None:
        error = {
            "status": exc.status_code,
            "type": exc.error_type,
            "message": exc.message,
            "param": exc.param,
            "code": exc.code,
            "retry_after": getattr(exc, "retry_after", None),
        }
        self.send({"id": n, "error": error})

    def send(self, message: dict[str, Any]) -> None:
        if not self.ended:
            with contextlib.suppress(ConnectionError, RuntimeError):
                self.writer.write(orjson.dumps(message) + b"\n")
