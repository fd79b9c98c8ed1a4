"""The model process: loads one engine and serves it over HTTP on a Unix socket, and its whole
answers of embeddings and rerank also in frames on SOCKET.frames (`runtime/frames.py`).

The server starts it as `python -m inferd.runtime.worker CONFIG_JSON SOCKET`; on a cluster node,
SOCKET is `fd:N`, a TCP socket already listening, and every request must carry the token in
INFERD_WORKER_TOKEN. The socket is up within a second so the server can follow the load through
`GET /health`; the weights load in a thread meanwhile. Requests arrive already validated by the
server; responses are the final OpenAI-shaped bodies, which the server relays without re-encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from prometheus_client import REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from inferd.engines import ENGINES
from inferd.engines.base import Engine, EngineConfig, Json, flag
from inferd.errors import InferdError, InvalidRequest, ModelUnavailable, RequestAborted
from inferd.runtime.aborts import ClientLeft, unless_client_leaves
from inferd.runtime.frames import FRAMED, Whole, frames_path, serve_frames, tokenizer_path
from inferd.runtime.heap import freeze_startup_heap

log = logging.getLogger("inferd.worker")


def error_body(exc: BaseException) -> tuple[int, bytes]:
    """An exception as an OpenAI error body, with its HTTP status."""
    if isinstance(exc, InferdError):
        status, kind, code, param = exc.status_code, exc.error_type, exc.code, exc.param
        message = exc.message
    else:
        status, kind, code, param = 500, "server_error", "engine_error", None
        message = f"{type(exc).__name__}: {exc}"
        log.error("request failed:\n%s", traceback.format_exc())
    # The same shape as the server's own errors, `detail` included for Xinference's clients:
    # the server relays these bodies untouched.
    body = {
        "error": {"message": message, "type": kind, "param": param, "code": code},
        "detail": message,
    }
    return status, orjson.dumps(body)


class Worker:
    def __init__(self, config: EngineConfig, frames: str | None = None):
        """`frames`: the Unix socket where embeddings and rerank are also taken in frames."""
        self.config = config
        self.frames = frames
        self.engine: Engine = ENGINES[config.engine](config)
        self.status = "loading"
        self.error: str | None = None
        self.error_param: str | None = None
        self.started = time.time()
        self.load_seconds: float | None = None
        # Requests in progress by their id, for abort: a task for a whole answer, or a
        # stream's puller.
        self.running: dict[str, asyncio.Task[Any] | _Pulled] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_ready = threading.Event()
        # Where relays find the tokenizer to send texts' ids with (`Engine.relay_tokenizer`),
        # beside the frames socket; None until the model is ready, or where it takes texts.
        self.tokenizer: str | None = None
        if frames is not None:  # a process before this one may have left one
            tokenizer_path(frames).unlink(missing_ok=True)

    def load(self) -> None:
        with contextlib.suppress(InvalidRequest):  # a bad value is the engine's to refuse
            if flag(dict(self.config.options), "trust_remote_code"):
                log.warning("trust_remote_code is on: the model's own code runs in this process")
        try:
            self.engine.load()
            # The second half of loading runs on the loop that will serve the requests
            # (an async engine's handles belong to it).
            self.loop_ready.wait()
            assert self.loop is not None
            asyncio.run_coroutine_threadsafe(self.engine.start(), self.loop).result()
            self.tokenizer = self._offer_tokenizer()
        except BaseException as exc:
            self.error = (
                exc.message if isinstance(exc, InferdError) else f"{type(exc).__name__}: {exc}"
            )
            # A launch option the engine refused is named, so the launch's 400 can say which.
            self.error_param = exc.param if isinstance(exc, InferdError) else None
            self.status = "failed"
            log.error("loading %s failed:\n%s", self.config.model_uid, traceback.format_exc())
            return
        self.load_seconds = time.time() - self.started
        freeze_startup_heap()
        self.status = "ready"
        log.info("%s ready in %.2fs", self.config.model_uid, self.load_seconds)

    def _offer_tokenizer(self) -> str | None:
        """The engine's tokenizer for relays written beside the frames socket (whole, under
        its final name, before the process reports ready), or None."""
        if self.frames is None:
            return None
        offer = self.engine.relay_tokenizer()
        if offer is None:
            return None
        path = tokenizer_path(self.frames)
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_bytes(orjson.dumps(offer))
            partial.replace(path)
        except OSError as exc:  # relays send texts, as before
            log.warning("relays will send texts: the tokenizer could not be written (%s)", exc)
            return None
        return str(path)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.loop = asyncio.get_running_loop()
        framed = None
        if self.frames is not None:
            try:
                framed = await serve_frames(self.frames, self.framed)
            except OSError as exc:  # a path too long for a socket: HTTP carries everything
                log.warning("no frames at %s (%s): whole answers over HTTP", self.frames, exc)
                self.frames = None
        self.loop_ready.set()
        yield
        if framed is not None:
            framed.close()
        if self.tokenizer is not None:
            Path(self.tokenizer).unlink(missing_ok=True)
        if self.status == "ready":
            self.engine.close()

    async def health(self, request: Request) -> Response:
        body = {
            "status": self.status,
            "error": self.error,
            "param": self.error_param,
            "pid": os.getpid(),
            "load_seconds": self.load_seconds,
            "slots": self.engine.slots() if self.status == "ready" else None,
            "frames": self.frames,
            "tokenizer": self.tokenizer,
        }
        return Response(orjson.dumps(body), media_type="application/json")

    async def metrics(self, request: Request) -> Response:
        """This process's Prometheus figures (vLLM's, the batcher's) and those the engine keeps
        elsewhere (llama.cpp's), which the server relabels by model."""
        if self.status != "ready":
            return Response(status_code=204)
        text = generate_latest(REGISTRY) + (await self.engine.metrics() or b"")
        return Response(text, media_type="text/plain; version=0.0.4")

    async def chat(self, request: Request) -> Response:
        chat = _conforming(self.engine.chat)
        return await self._serve(request, chat, self.engine.chat_stream, long=True)

    async def completions(self, request: Request) -> Response:
        engine = self.engine
        complete = _conforming(engine.complete)
        return await self._serve(request, complete, engine.complete_stream, long=True)

    async def embeddings(self, request: Request) -> Response:
        return await self._serve(request, self.engine.embed, None)

    async def rerank(self, request: Request) -> Response:
        return await self._serve(request, self.engine.rerank, None)

    async def transcriptions(self, request: Request) -> Response:
        return await self._serve(request, self.engine.transcribe, None, long=True)

    async def speech(self, request: Request) -> Response:
        return await self._serve(request, self.engine.speech, None, long=True)

    async def images(self, request: Request) -> Response:
        return await self._serve(request, self.engine.images, None, long=True)

    async def framed(self, path: str, body: bytes, request_id: str) -> Whole:
        """A whole answer asked for in a frame (`frames`): embeddings and rerank."""
        if path not in FRAMED:  # a relay of another version
            return _error_whole(InvalidRequest(f"{path} is not answered in frames"))
        if self.status != "ready":
            return _error_whole(ModelUnavailable(f"model is {self.status}"))
        call = getattr(self.engine, FRAMED[path])
        return await self._whole(call, orjson.loads(body), request_id or uuid.uuid4().hex)

    async def abort(self, request: Request) -> Response:
        handle = self.running.get(request.path_params["request_id"])
        if isinstance(handle, asyncio.Task):
            handle.cancel()
        elif handle is not None:
            handle.stop(aborted=True)
        return Response(
            orjson.dumps({"aborted": handle is not None}), media_type="application/json"
        )

    async def _serve(
        self, request: Request, call: Any, stream: Any, long: bool = False
    ) -> Response:
        """`call`'s answer to the request's body, or `stream`'s events when it asks for a
        stream. A `long` whole answer (a generation, not an embedding) also ends when the
        server's connection closes: the server's relay closes it when its own client leaves or
        the request runs out of time, so the work stops even if the abort that follows is lost
        or arrives before the request does."""
        if self.status != "ready":
            return _error_response(ModelUnavailable(f"model is {self.status}"))
        payload: Json = orjson.loads(await request.body())
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        if stream is not None and payload.get("stream"):
            if request_id in self.running:
                return _error_response(_in_use(request_id))
            try:
                chunks = stream(payload)  # an engine may refuse the request right here
            except Exception as exc:
                return _error_response(exc)
            return await self._serve_stream(chunks, request_id)
        whole = await self._whole(call, payload, request_id, request if long else None)
        return Response(whole.body, status_code=whole.status, media_type=whole.content_type)

    async def _whole(
        self, call: Any, payload: Json, request_id: str, watched: Request | None = None
    ) -> Whole:
        """`call`'s whole answer to `payload`, abortable by its id; ended also when `watched`'s
        connection closes."""
        if request_id in self.running:
            return _error_whole(_in_use(request_id))
        task = asyncio.ensure_future(call(payload))
        self.running[request_id] = task
        try:
            result = await (unless_client_leaves(task, watched, None) if watched else task)
        except ClientLeft:
            return _error_whole(RequestAborted(request_id))  # to nobody: the server left
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # this handler itself was cancelled, not the request
            return _error_whole(RequestAborted(request_id))
        except Exception as exc:
            return _error_whole(exc)
        finally:
            self.running.pop(request_id, None)
        if isinstance(result, tuple):  # a file (audio), not JSON
            data, media_type = result
            return Whole(200, media_type, data)
        return Whole(200, "application/json", _encoded(result))

    async def _serve_stream(self, chunks: AsyncIterator[Json | bytes], request_id: str) -> Response:
        pulled = _Pulled(chunks, request_id)
        self.running[request_id] = pulled
        try:
            # Wait for the first chunk before answering, so an invalid request still gets its
            # own status code instead of a 200 with an error inside the stream.
            first: Json | bytes | None = await pulled.next()
        except StopAsyncIteration:
            first = None
        except BaseException as exc:
            pulled.stop()
            self.running.pop(request_id, None)
            if isinstance(exc, Exception):
                return _error_response(exc)
            raise
        return _EngineStream(pulled, first, lambda: self.running.pop(request_id, None))


def _conform(answer: Json | bytes) -> Json | bytes:
    """OpenAI's published schema asks every choice for `logprobs` (null when not asked for),
    and every logprobs object for `refusal`; engines that build their own answers leave them
    out. (Answers an engine encoded itself, vLLM's, already carry them.)"""
    if isinstance(answer, dict):
        for choice in answer.get("choices") or []:
            logprobs = choice.setdefault("logprobs", None)
            if isinstance(logprobs, dict) and "content" in logprobs:
                logprobs.setdefault("refusal", None)
    return answer


def _conforming(call: Any) -> Any:
    async def conforming(payload: Json) -> Json | bytes:
        return _conform(await call(payload))

    return conforming


def _error_response(exc: BaseException) -> Response:
    status, body = error_body(exc)
    return Response(body, status_code=status, media_type="application/json")


def _in_use(request_id: str) -> InvalidRequest:
    return InvalidRequest(f"request id {request_id!r} is already in use", param="request_id")


def _error_whole(exc: BaseException) -> Whole:
    status, body = error_body(exc)
    return Whole(status, "application/json", body)


_END = object()


class _Pulled:
    """An engine's chunks, pulled by a task of their own.

    Starlette stops the answer of a client that hung up by cancelling it, again at every wait
    in its scope; an engine cleaning up inside that scope (vLLM sending its abort to the
    engine core) would be cut short and go on generating for nobody. Pulled here, the engine
    sees exactly one cancellation, from `stop`, and cleans up undisturbed."""

    def __init__(self, chunks: AsyncIterator[Json | bytes], request_id: str):
        self.request_id = request_id
        self._chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._aborted = False
        self._task = asyncio.ensure_future(self._pull(chunks))
        _PULLING.add(self._task)  # the loop holds tasks only weakly
        self._task.add_done_callback(_PULLING.discard)

    async def _pull(self, chunks: AsyncIterator[Json | bytes]) -> None:
        try:
            async for chunk in chunks:
                self._chunks.put_nowait(chunk)
            self._chunks.put_nowait(_END)
        except asyncio.CancelledError:
            self._chunks.put_nowait(RequestAborted(self.request_id) if self._aborted else _END)
        except Exception as exc:
            self._chunks.put_nowait(exc)

    async def next(self) -> Json | bytes:
        """The next chunk; StopAsyncIteration at the end, the engine's error if it failed."""
        chunk = await self._chunks.get()
        if chunk is _END:
            self._chunks.put_nowait(_END)  # stays ended
            raise StopAsyncIteration
        if isinstance(chunk, BaseException):
            self._chunks.put_nowait(_END)
            raise chunk
        return chunk

    def stop(self, aborted: bool = False) -> None:
        """End the engine's work (a no-op once it has finished); never waits, so it can be
        called from a task being cancelled."""
        self._aborted = self._aborted or aborted
        self._task.cancel()


_PULLING: set[asyncio.Task[None]] = set()


class _EngineStream(StreamingResponse):
    """The chunks as server-sent events; an engine may hand over chunks already encoded as
    JSON, which pass through untouched. Whatever ends the response, the engine's work ends."""

    def __init__(self, pulled: _Pulled, first: Json | bytes | None, done: Any):
        super().__init__(self._events(pulled, first), media_type="text/event-stream")
        self._pulled, self._done = pulled, done

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._pulled.stop()
            self._done()

    @staticmethod
    async def _events(pulled: _Pulled, first: Json | bytes | None) -> AsyncIterator[bytes]:
        chunk = first
        try:
            while chunk is not None:
                # Conformed here rather than by a wrapping generator: one layer less that
                # every streamed token passes through.
                yield b"data: " + _encoded(_conform(chunk)) + b"\n\n"
                chunk = await pulled.next()
        except StopAsyncIteration:
            pass
        except Exception as exc:
            _, body = error_body(exc)
            yield b"data: " + body + b"\n\n"
        yield b"data: [DONE]\n\n"


def _encoded(chunk: Json | bytes) -> bytes:
    """An engine's answer as JSON; numpy arrays in it (embeddings) are written directly."""
    return chunk if isinstance(chunk, bytes) else orjson.dumps(chunk, option=_NUMPY)


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _exit_with_parent() -> None:
    """End this process if the server that started it dies, even by SIGKILL."""
    parent = os.getppid()
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            # The whole session goes: processes an engine started (vLLM's engine core and its
            # workers) would otherwise outlive it, holding memory and GPUs.
            os.killpg(0, signal.SIGKILL)


# The header carrying the server's secret to a model process on a cluster's node (which listens
# on the network, where anyone could otherwise use its model).
TOKEN_HEADER = "x-inferd-token"
_TOKEN_KEY = TOKEN_HEADER.encode()


class _RequireToken:
    """Refuses requests without the cluster's token: a model process on a cluster node listens
    on the network, where anyone could otherwise use (or abort) its model."""

    def __init__(self, app: Any, token: str):
        self._app = app
        self._token = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        given = dict(scope["headers"]).get(_TOKEN_KEY, b"") if scope["type"] == "http" else None
        if given is not None and not hmac.compare_digest(given, self._token):
            refusal = {
                "error": {
                    "message": "this model process answers its inferd server only",
                    "type": "authentication_error",
                    "param": None,
                    "code": "bad_token",
                }
            }
            response = Response(orjson.dumps(refusal), 401, media_type="application/json")
            await response(scope, receive, send)
            return
        await self._app(scope, receive, send)


def main() -> None:
    config_path, address = sys.argv[1], sys.argv[2]
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = EngineConfig.model_validate_json(Path(config_path).read_bytes())
    # The model thread gives up the interpreter lock in every wait on the GPU (and in the
    # tokenizer, and in a graph's launch) and must win it back from the event loop thread,
    # which keeps it up to the switch interval (5 ms by default) while it reads requests and
    # writes answers: on an H200, short embeddings at 32 clients made passes of ~1 ms graphs
    # 3.9 ms apart. At 0.5 ms: 2,532 -> 3,105 texts/s (MiniLM, four API processes). At 0.2 ms
    # the way from a pass taken to its launch fell from 1.5-4.3 ms to 1.3-1.9 and the medians
    # of five servers each rose from 1,602 to 1,657 texts/s (bge-large) and 4,294 to 4,883
    # (MiniLM); 0.1 ms did about as well for bge-large (1,684) and worse for MiniLM (4,369),
    # probably as its model thread, busy on the host, is then made to give the lock up as
    # often (benchmarks/results/embeddings_h200.txt, runs 26-30).
    sys.setswitchinterval(0.0002)
    # Whole answers also come in frames beside HTTP, where the server reaches the process on
    # this machine (a cluster node's process is reached over TCP, and speaks HTTP only).
    worker = Worker(config, None if address.startswith("fd:") else frames_path(address))
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    threading.Thread(target=worker.load, daemon=True, name="load").start()

    app = Starlette(
        routes=[
            Route("/health", worker.health),
            Route("/metrics", worker.metrics),
            Route("/chat/completions", worker.chat, methods=["POST"]),
            Route("/completions", worker.completions, methods=["POST"]),
            Route("/embeddings", worker.embeddings, methods=["POST"]),
            Route("/rerank", worker.rerank, methods=["POST"]),
            Route("/audio/transcriptions", worker.transcriptions, methods=["POST"]),
            Route("/audio/speech", worker.speech, methods=["POST"]),
            Route("/images/generations", worker.images, methods=["POST"]),
            Route("/abort/{request_id}", worker.abort, methods=["POST"]),
        ],
        lifespan=worker.lifespan,
    )
    token = os.environ.pop("INFERD_WORKER_TOKEN", None)
    served: Any = _RequireToken(app, token) if token else app
    # The server's clients keep an idle connection 15 s (aiohttp's default): the process keeps
    # it longer, so it is always the client that closes one, never a request racing a close.
    options: dict[str, Any] = {
        "log_level": "warning",
        "timeout_graceful_shutdown": 5,
        "timeout_keep_alive": 75,
    }
    if address.startswith("fd:"):
        # The socket as what it is (TCP): uvicorn's own fd= takes any descriptor for a Unix
        # socket, and asyncio then leaves Nagle's algorithm on, which held every answer back
        # ~40 ms for the client's delayed ACK.
        listener = socket.socket(fileno=int(address[3:]))
        serving = uvicorn.Config(served, **options)
        uvicorn.Server(serving).run(sockets=[listener])
        return
    Path(address).unlink(missing_ok=True)
    uvicorn.run(served, uds=address, **options)


if __name__ == "__main__":
    main()
