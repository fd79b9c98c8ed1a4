"""OpenAI's Responses API (`/v1/responses`) over the same chat models, for `client.responses`,
the Agents SDK and Codex: whole answers and typed event streams, function tools, structured
output, and stored responses that `previous_response_id` continues, across restarts too."""

from __future__ import annotations

import asyncio
import time

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from inferd.api.auth import check_model
from inferd.api.chat_images import inline_images
from inferd.api.deps import manager as _manager
from inferd.api.protocol import chat_request
from inferd.api.proxy import opened_stream, whole_answer
from inferd.api.responses import convert
from inferd.api.responses.protocol import ResponsesRequest
from inferd.api.sse import translated
from inferd.errors import InvalidRequest, NotFound
from inferd.storage.responses import ResponseStore

router = APIRouter(prefix="/v1/responses")


def _store(request: Request) -> ResponseStore:
    store: ResponseStore = request.app.state.responses
    return store


@router.post("", response_model=None)
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    manager = _manager(request)
    store = _store(request)
    instance = manager.lookup(body.model)
    instance.require("chat", "the Responses API")
    if body.functions() and body.tool_choice != "none":
        instance.require("tools", "tool calls", param="tools")
    history: list[dict] = []
    if body.previous_response_id:
        earlier = await asyncio.to_thread(store.conversation, body.previous_response_id)
        if earlier is None:
            raise InvalidRequest(
                f"previous response {body.previous_response_id!r} is not stored here "
                "(it was made with store=false, deleted, or is older than 30 days)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        history = earlier
    items = convert.input_items(body)
    if not items and not history:
        raise InvalidRequest("input is empty", param="input")
    chat = convert.chat_body(body, [*history, *items], instance.uid)
    engine_body = chat_request(chat).engine_body(instance.uid)
    await inline_images(instance, engine_body, manager.settings, field="input")
    response_id = convert.new_id("resp")

    async def keep(final: dict) -> None:
        if body.store:  # off the loop: a disk write
            await asyncio.to_thread(store.save, final, items)

    if not body.stream:
        created = int(time.time())
        answer = await whole_answer(manager, instance, "/chat/completions", engine_body, request)
        output, finish = convert.output_items(answer, convert.namespaces(body))
        final = convert.response(body, response_id, created, output, answer.get("usage"), finish)
        await keep(final)
        return Response(orjson.dumps(final), media_type="application/json")
    engine_body["stream"] = True
    engine_body["stream_options"] = {"include_usage": True}
    upstream = await opened_stream(manager, instance, "/chat/completions", engine_body, request)
    writer = convert.StreamWriter(body, response_id)
    return translated(
        upstream,
        lambda answer: writer.events(answer, keep),
        manager.settings.send_timeout,
        "text/event-stream",
    )


def _kept(request: Request, response_id: str) -> tuple[dict, list[dict]]:
    kept = _store(request).get(response_id)
    if kept is None:
        raise NotFound(f"no stored response {response_id!r}", param="response_id")
    check_model(kept[0]["model"])
    return kept


@router.get("/{response_id}")
async def get_response(response_id: str, request: Request) -> dict:
    return (await asyncio.to_thread(_kept, request, response_id))[0]


@router.delete("/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict:
    await asyncio.to_thread(_kept, request, response_id)
    await asyncio.to_thread(_store(request).delete, response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@router.get("/{response_id}/input_items")
async def input_items(
    response_id: str,
    request: Request,
    limit: int = Query(default=20, ge=1, le=100),
    order: str = Query(default="desc", pattern="^(asc|desc)$"),
    after: str | None = None,
) -> dict:
    """The items this response's request gave as input, as OpenAI lists them."""
    _, items = await asyncio.to_thread(_kept, request, response_id)
    ordered = items if order == "asc" else list(reversed(items))
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise InvalidRequest(f"no input item {after!r} in {response_id}", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(ordered) > limit,
    }
