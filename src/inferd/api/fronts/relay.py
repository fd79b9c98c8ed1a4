"""A front's own relay of whole answers (embeddings, rerank): a slot from the server, the
request to the model process, the answer back untouched, the slot returned."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response

from inferd.api import json_text
from inferd.api.auth import caller
from inferd.api.fronts.forward import ToServer
from inferd.api.fronts.grants import Grant, Grants
from inferd.api.fronts.text_ids import TextIds
from inferd.api.proxy import (
    ATTEMPTS,
    CLIENT_LEFT,
    NOT_CONNECTED,
    request_id_of,
    stopped,
    timed_out,
)
from inferd.errors import InferdError, ModelUnavailable
from inferd.runtime.aborts import cancel, unless_client_leaves
from inferd.runtime.frames import ChannelError, FrameChannel
from inferd.runtime.process import http_client


class ModelSockets:
    """One channel per model process's frames socket (a restarted process listens on the same
    one), and the tokenizers the processes offer (`TextIds`)."""

    def __init__(self) -> None:
        self._channels: dict[str, FrameChannel] = {}
        self.text_ids = TextIds()

    def channel(self, socket: str) -> FrameChannel:
        channel = self._channels.get(socket)
        if channel is None:
            channel = self._channels[socket] = FrameChannel(socket)
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


async def relay_whole(
    request: Request, route: str, path: str, body: dict[str, Any], **checks: Any
) -> Response:
    """`body` (validated, its `model` as the client named it) relayed to the model's process
    under `path` once the server grants a slot."""
    state = request.app.state
    grants: Grants = state.grants
    sockets: ModelSockets = state.sockets
    model = body["model"]
    request_id = request_id_of(body, request)
    principal = caller()
    key = None
    if principal is not None:
        models = sorted(principal.models) if principal.models is not None else None
        key = [principal.name, principal.admin, models]
    started = time.perf_counter()
    limit = state.settings.request_timeout or None
    deadline = started + limit if limit else None
    headers = {"X-Request-Id": request_id}  # the answer's, as the server's relay sets it
    # As the server's relay does for these short answers, a client that leaves is not watched
    # for (two tasks a request): its answer is dropped when it comes.
    for attempt in range(ATTEMPTS):
        grant = await grants.grant(route, model, request_id, key, **checks)
        if grant is None:  # the server relays this model's requests itself
            to_server: ToServer = state.to_server
            return await to_server.answer(request.scope, await request.body())
        try:
            content = json_text.dumps(await _sent(body, grant, route, sockets.text_ids), "")
        except InferdError:
            grants.release(grant, 400, None)
            raise
        except BaseException:  # cancelled while a thread tokenized: nothing was sent
            grants.release(grant, CLIENT_LEFT, None)
            raise
        sending = sockets.channel(grant.frames).post(path, content, request_id)
        try:
            status, content_type, data = await unless_client_leaves(sending, None, deadline)
        except NOT_CONNECTED:
            grants.unreachable(grant)
            await asyncio.sleep(0.05 * (attempt + 1))  # time for the supervisor to notice
            continue
        except ChannelError as exc:
            grants.release(grant, 503, None)
            raise stopped(grant.uid, exc) from exc
        except TimeoutError:
            # An answer past its time should not keep the model busy.
            async with http_client(httpx.AsyncHTTPTransport(uds=grant.socket), "http://model") as c:
                await cancel(c, request_id)
            grants.release(grant, 504, time.perf_counter() - started)
            raise timed_out(limit) from None
        except BaseException:  # this handler cancelled (the front stopping): nobody answered
            grants.release(grant, CLIENT_LEFT, None)
            raise
        grants.release(grant, status, time.perf_counter() - started)
        return Response(data, status_code=status, media_type=content_type, headers=headers)
    raise ModelUnavailable(f"model {model!r} is not answering", param="model")


async def _sent(
    body: dict[str, Any], grant: Grant, route: str, text_ids: TextIds
) -> dict[str, Any]:
    """What goes to the model process: `body` for the granted uid, an embedding's texts as
    their ids where the process offers its tokenizer (and no prompt goes before them, which
    the model puts there: sentence-transformers' `prompt`, `prompt_name`)."""
    sent = {**body, "model": grant.uid}
    prompted = body.get("prompt") is not None or body.get("prompt_name") is not None
    if route == "embeddings" and grant.tokenizer is not None and not prompted:
        ids = await text_ids.ids(grant.tokenizer, body["input"])
        if ids is not None:
            del sent["input"]
            sent["input_ids"] = ids
    return sent
