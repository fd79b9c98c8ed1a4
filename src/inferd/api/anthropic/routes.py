"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`) over the same chat
models, for the `anthropic` SDK and Claude Code (`ANTHROPIC_BASE_URL` at this server)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from inferd.api.anthropic import convert
from inferd.api.anthropic.protocol import Conversation, CountTokensRequest, MessagesRequest
from inferd.api.chat_images import inline_images
from inferd.api.deps import manager as _manager
from inferd.api.protocol import chat_request
from inferd.api.proxy import opened_stream, whole_answer
from inferd.api.sse import translated
from inferd.runtime.instance import ModelInstance
from inferd.runtime.manager import ModelManager

router = APIRouter(prefix="/v1/messages")


def _model(manager: ModelManager, request: Conversation) -> ModelInstance:
    instance = manager.lookup(request.model)
    instance.require("chat", "Anthropic's Messages API")
    if request.tools and not (request.tool_choice and request.tool_choice.type == "none"):
        instance.require("tools", "tool calls", param="tools")
    return instance


async def _engine_body(
    manager: ModelManager, request: Conversation, instance: ModelInstance
) -> dict:
    """Checked as any chat request is (tool names, lengths, images, ...) on its way to the
    engine."""
    body = chat_request(convert.chat_body(request, instance.uid)).engine_body(instance.uid)
    await inline_images(instance, body, manager.settings, field="messages")
    return body


@router.post("", response_model=None)
async def messages(body: MessagesRequest, request: Request) -> Response:
    manager = _manager(request)
    instance = _model(manager, body)
    chat = await _engine_body(manager, body, instance)
    if not body.stream:
        answer = await whole_answer(manager, instance, "/chat/completions", chat, request)
        return _json(convert.message(answer, body.model))
    chat["stream"] = True
    chat["stream_options"] = {"include_usage": True}
    upstream = await opened_stream(manager, instance, "/chat/completions", chat, request)
    return translated(
        upstream,
        lambda answer: convert.stream_events(answer, body.model),
        manager.settings.send_timeout,
        "text/event-stream",
    )


@router.post("/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request) -> dict:
    """The prompt's tokens as the model's template and tokenizer make them: the engine reads
    the prompt and writes one token, whose usage counts it exactly."""
    manager = _manager(request)
    instance = _model(manager, body)
    chat = await _engine_body(manager, body, instance)
    chat["max_tokens"] = 1
    chat.pop("tool_choice", None)  # a required call would only make the one token longer
    answer = await whole_answer(manager, instance, "/chat/completions", chat, request)
    return {"input_tokens": (answer.get("usage") or {}).get("prompt_tokens", 0)}


def _json(data: dict) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")
