"""What a front does not answer itself goes to the server over its private Unix socket, bytes
untouched both ways, streamed as they come; a client that hangs up closes the connection to
the server, which stops the work as if the client had been its own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from yarl import URL

from inferd.api.errors import error_response
from inferd.errors import InferdError, ModelUnavailable

# Headers about one connection, not the request (RFC 9110 7.6.1); the rest pass as they are.
_HOP = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
     b"upgrade")
)  # fmt: skip
# The server reads the client's address from this on its private socket (nowhere else).
CLIENT_HEADER = "x-inferd-client"


class ToServer:
    """An ASGI app that passes each request on to the server at `path`."""

    def __init__(self, path: str):
        self.path = path
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.path, limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
                auto_decompress=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # nothing of inferd's speaks WebSocket
            await send({"type": "websocket.close", "code": 1003})
            return
        framed = any(
            name in (b"content-length", b"transfer-encoding") for name, _ in scope["headers"]
        )
        try:
            response = await self.answer(scope, _body(receive) if framed else None)
        except InferdError as exc:  # in the shape of the API called, as the server's own
            response = error_response(
                exc.status_code,
                exc.message,
                exc.error_type,
                exc.param,
                exc.code,
                {"Retry-After": "5"},
                Request(scope),
            )
        await response(scope, receive, send)

    async def answer(self, scope: Scope, body: bytes | AsyncIterator[bytes] | None) -> Response:
        """The server's answer to the request `scope` describes, its body streaming."""
        target = scope["raw_path"]
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        url = URL("http://server" + target.decode("latin-1"), encoded=True)
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in _HOP and name != CLIENT_HEADER.encode()
        ]
        if scope.get("client"):
            host, port = scope["client"]
            headers.append((CLIENT_HEADER, f"{host}:{port}"))
        try:
            upstream = await self.session().request(
                scope["method"], url, headers=headers, data=body, allow_redirects=False
            )
        except aiohttp.ClientError as exc:
            raise ModelUnavailable(
                f"the server behind this API process is not answering ({type(exc).__name__})"
            ) from exc
        response = StreamingResponse(_content(upstream), status_code=upstream.status)
        # The server's headers, repeated ones too, in place of Starlette's own.
        response.raw_headers = [
            (name, value) for name, value in upstream.raw_headers if name.lower() not in _HOP
        ]
        return response


async def _content(upstream: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    try:
        async for chunk in upstream.content.iter_any():
            yield chunk
    finally:
        # Read to the end, the connection goes back to the pool; cut short (the client left),
        # it closes and the server sees the hang-up.
        if upstream.content.at_eof():
            upstream.release()
        else:
            upstream.close()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            raise aiohttp.ClientPayloadError("the client left while sending its request")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def client_from_front(app: Any) -> Any:
    """ASGI middleware for the server's private socket: a request there is a front's, and the
    client it names is the one its key failures and logs are counted against. A request on
    the public port never has a client taken from a header (there `client` is its address)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("client"):
            for name, value in scope["headers"]:
                if name == CLIENT_HEADER.encode():
                    host, _, port = value.decode("latin-1").rpartition(":")
                    scope = {**scope, "client": (host, int(port) if port.isdigit() else 0)}
                    break
        await app(scope, receive, send)

    return middleware


class NotPassedOn(logging.Filter):
    """Drops the server's access-log lines for requests a front passed on (they came over the
    private socket, which has no client address): the front logged them already, with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and args[0] == "")
