"""Tool calls a client can rely on: with `tool_choice` "required" (a named function arrives as
"required" over that one tool), the answer is constrained to a call of a declared tool.

An engine whose own tool-call grammar is lazy (llama.cpp waits for the template's call marker,
which a weak model may never write) gets a JSON schema instead: the model still sees the tools
through its template, but can only write `{"name": ..., "arguments": {...}}` for one of them
(or a list of such, when parallel calls are asked for). That text becomes `tool_calls` again
here, in whole answers and in streams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from inferd.engines import tool_formats

Json = dict[str, Any]


def forced(request: Json) -> bool:
    return bool(request.get("tools")) and request.get("tool_choice") == "required"


def constrain(request: Json) -> Json:
    """The request with its output constrained to calls of its tools."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": tool["function"].get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in request["tools"]
    ]
    call: Json = calls[0] if len(calls) == 1 else {"anyOf": calls}
    many = request.get("parallel_tool_calls") is True
    schema = {"type": "array", "items": call, "minItems": 1} if many else call
    constrained = {k: v for k, v in request.items() if k != "response_format"}
    constrained["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "tool_calls", "schema": schema, "strict": True},
    }
    return constrained


def _calls(text: str) -> list[Json]:
    try:
        written = orjson.loads(text)
    except orjson.JSONDecodeError:
        return []  # cut off by max_tokens: no whole call to report
    out = []
    for call in written if isinstance(written, list) else [written]:
        if isinstance(call, dict) and isinstance(call.get("name"), str):
            out.append(tool_formats.call(call["name"], call.get("arguments")))
    return out


def as_calls(answer: Json) -> Json:
    """A constrained whole answer with its written calls as `tool_calls`."""
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        calls = _calls(message.get("content") or "")
        if calls:
            choice["message"] = {**message, "content": None, "tool_calls": calls}
            choice["finish_reason"] = "tool_calls"
    return answer


async def stream_as_calls(chunks: AsyncIterator[Json]) -> AsyncIterator[Json]:
    """A constrained stream with its written calls as `tool_calls` deltas, sent once each call
    is whole (its text is JSON only when complete)."""
    text = ""
    async for chunk in chunks:
        choices = chunk.get("choices") or []
        for choice in choices:
            text += (choice.get("delta") or {}).get("content") or ""
        finished = any(c.get("finish_reason") for c in choices)
        if not finished:
            if not choices:
                yield chunk  # a usage-only chunk
            continue
        calls = _calls(text)
        if calls:
            deltas = [{"index": i, **call} for i, call in enumerate(calls)]
            choice = {"index": 0, "delta": {"role": "assistant", "tool_calls": deltas}}
            yield {**chunk, "choices": [{**choice, "finish_reason": "tool_calls"}]}
        else:
            delta = {"role": "assistant", "content": text}
            yield {**chunk, "choices": [{**choices[0], "delta": delta}]}
