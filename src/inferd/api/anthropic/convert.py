"""Anthropic's Messages in OpenAI's chat shape, which every engine serves, and back.

A conversation maps block for block: `system` becomes the system message, `tool_use` blocks an
assistant's `tool_calls`, `tool_result` blocks `tool` messages (placed, as OpenAI's order asks,
right after the call they answer), images `image_url` parts. Answers map back to content blocks
(`thinking`, `text`, `tool_use`) with Anthropic's stop reasons, and a stream to its events.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson

from inferd.api import json_text
from inferd.api.anthropic.protocol import (
    Conversation,
    ImageBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from inferd.api.chat_stream import ChatStream
from inferd.api.protocol import one_system_turn

Json = dict[str, Any]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def chat_body(request: Conversation, uid: str) -> Json:
    """The OpenAI chat request that asks the model what `request` asks it."""
    system = request.system or []
    texts = [system] if isinstance(system, str) else [b.text for b in system]
    messages = [{"role": "system", "content": "\n\n".join(texts)}] if texts else []
    for i, message in enumerate(request.messages):
        messages.extend(_messages(message, f"messages[{i}]"))
    body: Json = {"model": uid, "messages": one_system_turn(messages)}
    if isinstance(request, MessagesRequest):
        body["max_tokens"] = request.max_tokens
        for name in ("temperature", "top_p", "top_k"):
            if getattr(request, name) is not None:
                body[name] = getattr(request, name)
        if request.stop_sequences:
            body["stop"] = request.stop_sequences
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description or "",
                    "parameters": tool.input_schema,
                },
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None and request.tools:
        if choice.type == "tool":
            # "Call this tool" is "a call is required" over a list of just that tool, which
            # every engine's constrained decoding can express.
            body["tools"] = [t for t in body["tools"] if t["function"]["name"] == choice.name]
            body["tool_choice"] = "required"
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    if request.thinking is not None:
        enabled = request.thinking.type != "disabled"
        body["chat_template_kwargs"] = {"enable_thinking": enabled}
    return body


def _messages(message: Message, where: str) -> list[Json]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    if message.role == "system":
        texts = [block.text for block in message.content if isinstance(block, TextBlock)]
        return [{"role": "system", "content": "\n\n".join(texts)}] if texts else []
    if message.role == "assistant":
        return [_assistant(message, where)]
    out: list[Json] = []
    parts: list[Json] = []
    for block in message.content:
        if isinstance(block, ToolResultBlock):
            out.append(
                {"role": "tool", "tool_call_id": block.tool_use_id, "content": _result(block)}
            )
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
    if parts:
        if all(part["type"] == "text" for part in parts):
            out.append({"role": "user", "content": "\n\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant(message: Message, where: str) -> Json:
    text = []
    calls = []
    for j, block in enumerate(message.content):
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {
                        "name": block.name,
                        "arguments": json_text.text(block.input, f"{where}.content[{j}].input"),
                    },
                }
            )
        # thinking blocks are the model's own earlier reasoning: templates drop them too
    out: Json = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        out["tool_calls"] = calls
    return out


def _result(block: ToolResultBlock) -> str:
    if block.content is None:
        text = ""
    elif isinstance(block.content, str):
        text = block.content
    else:
        text = "\n".join(part.text for part in block.content if isinstance(part, TextBlock))
    return f"Error: {text}" if block.is_error else text


def _image_url(block: ImageBlock) -> str:
    source = block.source
    if source.type == "url":
        return source.url or ""
    return f"data:{source.media_type or 'image/png'};base64,{source.data or ''}"


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def _tool_input(arguments: Any) -> Json:
    if isinstance(arguments, dict):
        return arguments
    try:
        parsed = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {}  # cut off by max_tokens mid-arguments: nothing usable to pass on
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def message(answer: Json, model: str) -> Json:
    """An OpenAI chat answer as Anthropic's Message."""
    choice = answer["choices"][0]
    said = choice.get("message") or {}
    content: list[Json] = []
    if said.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": said["reasoning_content"], "signature": ""})
    if said.get("content"):
        content.append({"type": "text", "text": said["content"]})
    for call in said.get("tool_calls") or []:
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": call["function"]["name"],
                "input": _tool_input(call["function"].get("arguments")),
            }
        )
    usage = answer.get("usage") or {}
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content or [{"type": "text", "text": ""}],
        "stop_reason": _stop_reason(choice.get("finish_reason"), said),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }


def _stop_reason(finish: str | None, said: Json) -> str:
    if said.get("tool_calls"):
        return "tool_use"
    return STOP_REASONS.get(finish or "stop", "end_turn")


def _event(kind: str, data: Json) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


async def stream_events(answer: AsyncIterator[Json], model: str) -> AsyncIterator[bytes]:
    """An OpenAI chat stream as Anthropic's events: message_start, then each content block's
    start, deltas and stop (thinking, text, each tool call), message_delta, message_stop."""
    yield _event(
        "message_start",
        {
            "message": {
                "id": message_id(),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }
        },
    )
    blocks = _Blocks()
    stream = ChatStream(answer)
    async for kind, value in stream.pieces():
        if kind == "call":
            pieces = blocks.tool_call(value)
        else:
            pieces = blocks.text("thinking" if kind == "reasoning" else "text", value)
        for piece in pieces:
            yield piece
    for piece in blocks.close():
        yield piece
    if stream.error is not None:
        error = stream.error
        kind = "invalid_request_error" if error.get("code") == 400 else "api_error"
        yield _event("error", {"error": {"type": kind, "message": error.get("message", "")}})
        return
    usage = stream.usage
    stop = "tool_use" if stream.called else STOP_REASONS.get(stream.finish or "stop", "end_turn")
    yield _event(
        "message_delta",
        {
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {
                "input_tokens": usage.get("prompt_tokens", 0),
                "output_tokens": usage.get("completion_tokens", 0),
            },
        },
    )
    yield _event("message_stop", {})


class _Blocks:
    """The content block being streamed: a new kind of piece closes it and opens the next."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.call: int | None = None  # the OpenAI index of the tool call being streamed

    def _open(self, block: Json) -> list[bytes]:
        out = self.close()
        self.index += 1
        self.kind = block["type"]
        return [*out, _event("content_block_start", {"index": self.index, "content_block": block})]

    def close(self) -> list[bytes]:
        if self.kind is None:
            return []
        self.kind, self.call = None, None
        return [_event("content_block_stop", {"index": self.index})]

    def text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.kind != kind:
            start: Json = {"type": kind, kind: ""}
            if kind == "thinking":
                start["signature"] = ""
            out = self._open(start)
        delta = {"type": f"{kind}_delta", kind: text}
        return [*out, _event("content_block_delta", {"index": self.index, "delta": delta})]

    def tool_call(self, call: Json) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        if self.kind != "tool_use" or call.get("index", 0) != self.call:
            out = self._open(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": function.get("name") or "",
                    "input": {},
                }
            )
            self.call = call.get("index", 0)
        if function.get("arguments"):
            delta = {"type": "input_json_delta", "partial_json": function["arguments"]}
            out.append(_event("content_block_delta", {"index": self.index, "delta": delta}))
        return out
