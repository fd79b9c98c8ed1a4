"""The Responses API in OpenAI's chat shape, which every engine serves, and back.

A request's `instructions` become the system message, its input items (and, through
`previous_response_id`, every earlier turn's) chat messages: `message` items by role,
`function_call` items an assistant's `tool_calls`, `function_call_output` items `tool`
messages. An answer becomes output items (`reasoning`, `message`, `function_call`), and a stream
the Responses API's typed events in OpenAI's order.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel

from inferd.api import json_text
from inferd.api.chat_stream import ChatStream
from inferd.api.protocol import one_system_turn
from inferd.api.responses.protocol import NamedFunction, ResponsesRequest
from inferd.errors import InvalidRequest

Json = dict[str, Any]

_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
_TEXT_PARTS = ("input_text", "output_text", "text")


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def input_items(request: ResponsesRequest) -> list[Json]:
    """This request's input as items with ids, as `input_items` lists and later turns replay."""
    given = request.input
    if isinstance(given, str):
        given = [{"type": "message", "role": "user", "content": given}]
    items = []
    for item in given:
        kind = item.get("type") or ("message" if "role" in item else None)
        prefix = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
        normal = {"id": new_id(prefix.get(str(kind), "item")), **item, "type": kind}
        if kind == "message" and isinstance(item.get("content"), str):
            # As OpenAI lists them: text is a part, an input's or (for history) an output's.
            part = "output_text" if item.get("role") == "assistant" else "input_text"
            normal["content"] = [{"type": part, "text": item["content"]}]
        items.append(normal)
    return items


def chat_body(request: ResponsesRequest, items: list[Json], uid: str) -> Json:
    """The OpenAI chat request that asks the model what `request` asks it, `items` being the
    whole conversation (earlier turns, then this request's input)."""
    instructions = [{"role": "system", "content": request.instructions}]
    messages = [*(instructions if request.instructions else []), *chat_messages(items)]
    body: Json = {"model": uid, "messages": one_system_turn(messages)}
    if request.max_output_tokens is not None:
        body["max_tokens"] = request.max_output_tokens
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if getattr(request, name) is not None:
            body[name] = getattr(request, name)
    functions = request.functions()
    if functions:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description or "",
                    "parameters": tool.parameters or {"type": "object", "properties": {}},
                },
            }
            for tool, _ in functions
        ]
    choice = request.tool_choice
    if not functions:
        choice = None  # only hosted tools were offered, and they were left out
    if isinstance(choice, NamedFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None:
        body["tool_choice"] = choice
    form = request.text.format if request.text else None
    if form is not None and form.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif form is not None and form.type == "json_schema":
        if form.schema_ is None:
            raise InvalidRequest(
                "a json_schema format needs its schema", param="text.format.schema"
            )
        schema = {"name": form.name or "answer", "schema": form.schema_, "strict": form.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if request.reasoning is not None and request.reasoning.effort is not None:
        thinking = request.reasoning.effort not in ("none", "minimal")
        body["chat_template_kwargs"] = {"enable_thinking": thinking}
    return body


def chat_messages(items: list[Json]) -> list[Json]:
    out: list[Json] = []
    for i, item in enumerate(items):
        kind = item.get("type")
        if kind == "message":
            role = _ROLES.get(str(item.get("role")))
            if role is None:
                raise InvalidRequest(
                    f"input[{i}].role must be user, assistant, system or developer",
                    param=f"input[{i}].role",
                )
            out.append({"role": role, "content": _content(item.get("content"), i)})
        elif kind == "function_call":
            call = _call(item, i)
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)  # one turn, several calls
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequest(
                    f"input[{i}] needs the call_id it answers", param=f"input[{i}].call_id"
                )
            output = item.get("output")
            text = output if isinstance(output, str) else _content(output, i, text_only=True)
            out.append({"role": "tool", "tool_call_id": item["call_id"], "content": text})
        elif kind == "reasoning":
            continue  # the model's own earlier thinking: chat templates leave it out too
        else:
            raise InvalidRequest(
                f"input[{i}] is a {kind!r} item, which inferd does not take: it takes message, "
                "function_call, function_call_output and reasoning items",
                param=f"input[{i}].type",
            )
    return out


def _call(item: Json, i: int) -> Json:
    if not isinstance(item.get("call_id"), str) or not isinstance(item.get("name"), str):
        raise InvalidRequest(
            f"input[{i}], a function_call, needs call_id and name", param=f"input[{i}]"
        )
    arguments = json_text.text(item.get("arguments", ""), f"input[{i}].arguments")
    return {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": arguments},
    }


def _content(content: Any, i: int, text_only: bool = False) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"input[{i}].content must be text or a list of parts", param=f"input[{i}].content"
        )
    parts: list[Json] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal", ""))})
        elif kind == "input_image" and not text_only and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            what = "text" if text_only else "text and images given by image_url"
            raise InvalidRequest(
                f"input[{i}].content[{j}] is a {kind!r} part; inferd takes {what}",
                param=f"input[{i}].content[{j}].type",
            )
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def response(
    request: ResponsesRequest,
    response_id: str,
    created: int,
    output: list[Json],
    usage: Json | None,
    finish: str | None,
    status: str | None = None,
) -> Json:
    """The Response object, in OpenAI's fields."""
    incomplete = finish == "length"
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status or ("incomplete" if incomplete else "completed"),
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "model": request.model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "reasoning": {"effort": request.reasoning.effort if request.reasoning else None},
        "store": request.store,
        "temperature": request.temperature,
        "text": {"format": _dumped(request.text.format if request.text else None, "text")},
        "tool_choice": _dumped(request.tool_choice, "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in request.tools or []],
        "top_p": request.top_p,
        "truncation": "disabled",
        "usage": _usage(usage),
        "user": request.user,
        "metadata": request.metadata or {},
    }


def _dumped(value: Any, default: str) -> Any:
    """A request field as the response echoes it: a plain value, an object as JSON."""
    if value is None:
        return {"type": default} if default == "text" else default
    if isinstance(value, BaseModel):
        return value.model_dump(by_alias=True, exclude_none=True)
    return value


def _usage(usage: Json | None) -> Json | None:
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached or 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def _text_part(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _message(item_id: str, text: str, status: str = "completed") -> Json:
    content = [_text_part(text)] if status == "completed" else []
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def _reasoning(item_id: str, text: str) -> Json:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"type": "reasoning", "id": item_id, "summary": [], "content": content}


def _function_call(
    item_id: str, call_id: str, name: str, arguments: str, status: str, namespace: str | None
) -> Json:
    item = {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }
    if namespace is not None:
        item["namespace"] = namespace  # a function of a namespace tool is called by both names
    return item


def namespaces(request: ResponsesRequest) -> dict[str, str]:
    """The namespace of each function offered inside one."""
    return {tool.name or "": ns for tool, ns in request.functions() if ns is not None}


def output_items(answer: Json, spaces: dict[str, str]) -> tuple[list[Json], str | None]:
    """A whole chat answer's output items, and why it finished; `spaces` gives the namespace
    of a function offered inside one."""
    choice = answer["choices"][0]
    said = choice.get("message") or {}
    output: list[Json] = []
    if said.get("reasoning_content"):
        output.append(_reasoning(new_id("rs"), said["reasoning_content"]))
    calls = said.get("tool_calls") or []
    if said.get("content") or not calls:
        output.append(_message(new_id("msg"), said.get("content") or ""))
    for call in calls:
        function = call["function"]
        arguments = function.get("arguments") or ""
        if not isinstance(arguments, str):
            arguments = orjson.dumps(arguments).decode()
        call_id = call.get("id") or new_id("call")
        name = function["name"]
        output.append(
            _function_call(new_id("fc"), call_id, name, arguments, "completed", spaces.get(name))
        )
    return output, choice.get("finish_reason")


class StreamWriter:
    """An OpenAI chat stream as the Responses API's events: response.created, each output
    item's added / delta / done events, then response.completed (or .incomplete, .failed)."""

    def __init__(self, request: ResponsesRequest, response_id: str) -> None:
        self.request = request
        self.spaces = namespaces(request)
        self.id = response_id
        self.created = int(time.time())
        self.sequence = 0
        self.output: list[Json] = []
        self.open: Json | None = None  # the item being streamed, with its text so far
        self.call_index: int | None = None

    def event(self, kind: str, data: Json) -> bytes:
        body = {"type": kind, "sequence_number": self.sequence, **data}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(body) + b"\n\n"

    def snapshot(self, status: str, usage: Json | None = None, finish: str | None = None) -> Json:
        return response(
            self.request, self.id, self.created, self.output, usage, finish, status=status
        )

    async def events(
        self, answer: AsyncIterator[Json], finished: Callable[[Json], Awaitable[None]]
    ) -> AsyncIterator[bytes]:
        yield self.event("response.created", {"response": self.snapshot("in_progress")})
        yield self.event("response.in_progress", {"response": self.snapshot("in_progress")})
        stream = ChatStream(answer)
        async for kind, value in stream.pieces():
            if kind == "call":
                pieces = self._call(value)
            else:
                pieces = self._text("reasoning" if kind == "reasoning" else "message", value)
            for piece in pieces:
                yield piece
        for piece in self._close():
            yield piece
        if stream.error is not None:
            failed = self.snapshot("failed")
            message = stream.error.get("message", "")
            failed["error"] = {"code": "server_error", "message": message}
            yield self.event("response.failed", {"response": failed})
            return
        if not self.output:
            for piece in self._text("message", ""):
                yield piece
            for piece in self._close():
                yield piece
        final = self.snapshot("", stream.usage, stream.finish)
        await finished(final)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        yield self.event(kind, {"response": final})

    def _where(self) -> Json:
        assert self.open is not None
        return {"item_id": self.open["id"], "output_index": len(self.output)}

    def _start(self, item: Json) -> list[bytes]:
        out = self._close()
        self.open = {**item, "text": ""}
        return [
            *out,
            self.event(
                "response.output_item.added", {"output_index": len(self.output), "item": item}
            ),
        ]

    def _text(self, kind: str, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["type"] != kind:
            if kind == "message":
                out = self._start(_message(new_id("msg"), "", status="in_progress"))
                out.append(
                    self.event(
                        "response.content_part.added",
                        {**self._where(), "content_index": 0, "part": _text_part("")},
                    )
                )
            else:
                out = self._start(_reasoning(new_id("rs"), ""))
        assert self.open is not None
        self.open["text"] += text
        name = (
            "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        )
        extra: Json = {"logprobs": []} if kind == "message" else {}
        out.append(self.event(name, {**self._where(), "content_index": 0, "delta": text, **extra}))
        return out

    def _call(self, call: Json) -> list[bytes]:
        out: list[bytes] = []
        function = call.get("function") or {}
        index = call.get("index", 0)
        if self.open is None or self.open["type"] != "function_call" or index != self.call_index:
            name = function.get("name") or ""
            item = _function_call(
                new_id("fc"),
                call.get("id") or new_id("call"),
                name,
                "",
                "in_progress",
                self.spaces.get(name),
            )
            out = self._start(item)
            self.call_index = index
        assert self.open is not None
        if function.get("arguments"):
            self.open["text"] += function["arguments"]
            out.append(
                self.event(
                    "response.function_call_arguments.delta",
                    {**self._where(), "delta": function["arguments"]},
                )
            )
        return out

    def _close(self) -> list[bytes]:
        item = self.open
        if item is None:
            return []
        self.open, self.call_index = None, None
        text = item.pop("text")
        where = {"item_id": item["id"], "output_index": len(self.output)}
        out = []
        if item["type"] == "message":
            done = _message(item["id"], text)
            part = done["content"][0]
            out.append(
                self.event(
                    "response.output_text.done",
                    {**where, "content_index": 0, "text": text, "logprobs": []},
                )
            )
            out.append(
                self.event(
                    "response.content_part.done", {**where, "content_index": 0, "part": part}
                )
            )
        elif item["type"] == "reasoning":
            done = _reasoning(item["id"], text)
            out.append(
                self.event(
                    "response.reasoning_text.done", {**where, "content_index": 0, "text": text}
                )
            )
        else:
            done = {**item, "arguments": text, "status": "completed"}
            out.append(
                self.event(
                    "response.function_call_arguments.done",
                    {**where, "name": item["name"], "arguments": text},
                )
            )
        out.append(
            self.event(
                "response.output_item.done", {"output_index": len(self.output), "item": done}
            )
        )
        self.output.append(done)
        return out
