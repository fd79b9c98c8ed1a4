"""Ollama's API (/api/*) over the same models, for tools that speak it (Open WebUI, Continue).

Requests are translated to the OpenAI shapes the model processes already serve, and answers
back to Ollama's, streamed as NDJSON (Ollama streams unless told `"stream": false`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from inferd import __version__
from inferd.api import json_text
from inferd.api.auth import visible
from inferd.api.chat_images import data_url, inline_images
from inferd.api.deps import manager as _manager
from inferd.api.proxy import opened_stream, whole_answer
from inferd.api.sse import translated
from inferd.catalog import LLMFamily
from inferd.errors import InvalidRequest
from inferd.runtime.instance import ModelInstance
from inferd.runtime.launch import LaunchRequest
from inferd.runtime.manager import ModelManager

router = APIRouter(prefix="/api")

# Ollama option name -> OpenAI/llama.cpp request field.
_OPTIONS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "seed": "seed",
    "stop": "stop",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "mirostat": "mirostat",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)


Think = bool | Literal["low", "medium", "high"] | None


class ChatBody(_Body):
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None
    think: Think = None


class GenerateBody(_Body):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    format: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = True
    keep_alive: float | str | None = None
    think: Think = None
    images: list[str] | None = None


class EmbedBody(_Body):
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = Field(default=None, ge=1)
    options: dict[str, Any] | None = None


class LegacyEmbeddingsBody(_Body):
    prompt: str


class PullBody(_Body):
    stream: bool = True
    insecure: bool | None = None


def _uid(name: str) -> str:
    """Ollama names carry a tag ('gemma:latest'); inferd uids do not."""
    return name[: -len(":latest")] if name.endswith(":latest") else name


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _details(instance: ModelInstance) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf" if instance.spec.model_format == "ggufv2" else instance.spec.model_format,
        "family": instance.family.model_name,
        "families": [instance.family.model_name],
        "parameter_size": f"{instance.spec.size_in_billions:g}B",
        "quantization_level": instance.quantization,
    }


def _entry(instance: ModelInstance) -> dict[str, Any]:
    return {
        "name": f"{instance.uid}:latest",
        "model": f"{instance.uid}:latest",
        "modified_at": datetime.fromtimestamp(instance.created, timezone.utc).isoformat(),
        "size": 0,
        "digest": "",
        "details": _details(instance),
    }


def _sampling(options: dict[str, Any] | None, fmt: str | dict[str, Any] | None) -> dict:
    body: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key in _OPTIONS:
            body[_OPTIONS[key]] = value
        elif key == "num_predict" and isinstance(value, int) and value > 0:
            body["max_tokens"] = value
    if fmt == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "format", "schema": fmt},
        }
    return body


def _model(manager: ModelManager, name: str, ability: str) -> ModelInstance:
    instance = manager.lookup(_uid(name))
    instance.require(ability, f"Ollama's {ability}")
    return instance


@router.get("/version")
async def version() -> dict:
    return {"version": __version__}


@router.get("/tags")
async def tags(request: Request) -> dict:
    return {"models": [_entry(m) for m in _manager(request).list() if visible(m.uid)]}


@router.get("/ps")
async def running(request: Request) -> dict:
    models = []
    for instance in _manager(request).list():
        if instance.state != "ready" or not visible(instance.uid):
            continue
        entry = _entry(instance)
        timeout = instance.request.idle_timeout
        expires = time.time() + (
            timeout - (time.monotonic() - instance.last_used) if timeout else 10**8
        )
        entry["expires_at"] = datetime.fromtimestamp(expires, timezone.utc).isoformat()
        entry["size_vram"] = 0
        if isinstance(instance.family, LLMFamily):
            entry["context_length"] = instance.family.context_length
        models.append(entry)
    return {"models": models}


@router.post("/show")
async def show(body: _Body, request: Request) -> dict:
    instance = _manager(request).lookup(_uid(body.model))
    family = instance.family
    capabilities = {
        "chat": "completion",
        "generate": "completion",
        "embed": "embedding",
        "reasoning": "thinking",
    }
    caps = sorted({capabilities.get(a, a) for a in family.model_ability})
    info: dict[str, Any] = {"general.basename": family.model_name}
    if isinstance(family, LLMFamily):
        info["general.context_length"] = family.context_length
    return {
        "modelfile": f"# served by inferd: {family.model_name}",
        "parameters": "\n".join(f"stop {s}" for s in getattr(family, "stop", [])),
        "template": getattr(family, "chat_template", None) or "",
        "details": _details(instance),
        "model_info": info,
        "capabilities": caps,
        "modified_at": datetime.fromtimestamp(instance.created, timezone.utc).isoformat(),
    }


@router.post("/chat", response_model=None)
async def chat(body: ChatBody, request: Request) -> Response:
    manager = _manager(request)
    instance = _model(manager, body.model, "chat")
    if not body.messages:  # Ollama's way to load a model: answer done at once
        return _done_only(
            body.model, body.stream, {"message": {"role": "assistant", "content": ""}}
        )
    messages = [_openai_message(m, i) for i, m in enumerate(body.messages)]
    openai = {"messages": messages, **_sampling(body.options, body.format)}
    _thinking(instance, body.think, openai)
    await inline_images(instance, openai, manager.settings, field="messages")
    if body.tools:
        instance.require("tools", "tool calls", param="tools")
        openai["tools"] = body.tools
    return await _run(
        manager, instance, body.model, "/chat/completions", openai, body.stream, "chat", request
    )


def _openai_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """An Ollama chat message in OpenAI's shape: tool calls carry ids and JSON-text arguments,
    a tool's answer names its tool, images are parts beside the text."""
    out = {k: v for k, v in message.items() if k in ("role", "content", "tool_call_id")}
    if message.get("images"):
        out["content"] = _with_images(
            message.get("content"), message["images"], f"messages[{index}].images"
        )
    calls = message.get("tool_calls")
    if calls and not (
        isinstance(calls, list)
        and all(
            isinstance(call, dict)
            and isinstance(call.get("function"), dict)
            and isinstance(call["function"].get("name"), str)
            for call in calls
        )
    ):
        raise InvalidRequest(
            "a message's tool_calls must be a list of {'function': {'name', 'arguments'}}",
            param="messages.tool_calls",
        )
    if calls:
        out["tool_calls"] = [
            {
                "id": call.get("id") or f"call_{i}",
                "type": "function",
                "function": {
                    "name": call["function"]["name"],
                    "arguments": json_text.text(
                        call["function"].get("arguments", {}),
                        f"messages[{index}].tool_calls[{i}].function.arguments",
                    ),
                },
            }
            for i, call in enumerate(message["tool_calls"])
        ]
    if message.get("tool_name"):
        out["name"] = message["tool_name"]
    return out


def _with_images(text: Any, images: Any, param: str) -> list[dict[str, Any]]:
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise InvalidRequest("images must be a list of base64-encoded image files", param=param)
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(image, param)}} for image in images
    ]
    if text:
        parts.append({"type": "text", "text": str(text)})
    return parts


def _ollama_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls as Ollama's: arguments as an object, not JSON text."""
    out = []
    for call in calls:
        arguments = call["function"].get("arguments") or "{}"
        try:
            parsed = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        except orjson.JSONDecodeError:
            parsed = {}  # cut off by max_tokens mid-arguments: nothing usable to pass on
        out.append({"function": {"name": call["function"]["name"], "arguments": parsed}})
    return out


@router.post("/generate", response_model=None)
async def generate(body: GenerateBody, request: Request) -> Response:
    manager = _manager(request)
    if not body.prompt:
        _model(manager, body.model, "generate")
        return _done_only(body.model, body.stream, {"response": ""})
    if body.raw:
        if body.images:
            raise InvalidRequest(
                "images go through the model's chat template; raw prompts take text only",
                param="images",
            )
        instance = _model(manager, body.model, "generate")
        openai = {"prompt": body.prompt, **_sampling(body.options, body.format)}
        openai.setdefault("max_tokens", 512)
        return await _run(
            manager, instance, body.model, "/completions", openai, body.stream, "generate", request
        )
    instance = _model(manager, body.model, "chat")
    messages: list[dict[str, Any]] = (
        [{"role": "system", "content": body.system}] if body.system else []
    )
    content = _with_images(body.prompt, body.images, "images") if body.images else body.prompt
    messages.append({"role": "user", "content": content})
    openai = {"messages": messages, **_sampling(body.options, body.format)}
    _thinking(instance, body.think, openai)
    await inline_images(instance, openai, manager.settings, field="images")
    return await _run(
        manager, instance, body.model, "/chat/completions", openai, body.stream, "generate", request
    )


def _thinking(instance: ModelInstance, think: Think, openai: dict[str, Any]) -> None:
    """Ollama's `think` as the template's switch; asking a model that cannot think to is a 400,
    as Ollama answers it."""
    if think is None:
        return
    if think is not False:
        instance.require("reasoning", "thinking", param="think")
    openai["chat_template_kwargs"] = {"enable_thinking": think is not False}


@router.post("/embed")
async def embed(body: EmbedBody, request: Request) -> dict:
    manager = _manager(request)
    instance = _model(manager, body.model, "embed")
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or any(not t for t in texts):
        raise InvalidRequest("input must hold non-empty texts", param="input")
    started = time.perf_counter_ns()
    payload: dict[str, Any] = {"model": instance.uid, "input": texts}
    if body.dimensions:
        payload["dimensions"] = body.dimensions
    result = await whole_answer(manager, instance, "/embeddings", payload)
    return {
        "model": body.model,
        "embeddings": [d["embedding"] for d in result["data"]],
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": 0,
        "prompt_eval_count": result["usage"]["prompt_tokens"],
    }


@router.post("/embeddings")
async def legacy_embeddings(body: LegacyEmbeddingsBody, request: Request) -> dict:
    manager = _manager(request)
    instance = _model(manager, body.model, "embed")
    result = await whole_answer(
        manager, instance, "/embeddings", {"model": instance.uid, "input": [body.prompt]}
    )
    return {"embedding": result["data"][0]["embedding"]}


@router.post("/pull", response_model=None)
async def pull(body: PullBody, request: Request) -> Response:
    """Ollama's pull, inferd's launch: brings a catalogue model up under its name."""
    manager = _manager(request)
    name = _uid(body.model)
    existing = next((m for m in manager.list() if m.uid == name), None)
    if existing is not None and existing.state == "failed":
        await manager.terminate(name)  # a pull is a fresh try
        existing = None
    if existing is None:
        family = manager.catalog.get(name)
        launch = LaunchRequest(model_name=name, model_type=family.model_type, wait_ready=False)
        await manager.launch(launch)
    instance = manager.get(name)
    if not body.stream:
        while instance.state not in ("ready", "failed"):
            await instance.wait_change(1.0)
        if instance.state == "failed":
            raise InvalidRequest(instance.error_text() or "launch failed", param="model")
        return Response(orjson.dumps({"status": "success"}), media_type="application/json")

    async def progress() -> AsyncIterator[bytes]:
        yield orjson.dumps({"status": "pulling manifest"}) + b"\n"
        while instance.state not in ("ready", "failed"):
            p = instance.progress()
            line = {"status": p["stage"], "completed": int(p["progress"] * 100), "total": 100}
            yield orjson.dumps(line) + b"\n"
            await instance.wait_change(0.5)
        if instance.state == "failed":
            yield orjson.dumps({"error": instance.error_text() or "launch failed"}) + b"\n"
        else:
            yield orjson.dumps({"status": "success"}) + b"\n"

    return StreamingResponse(progress(), media_type="application/x-ndjson")


def _done_only(model: str, stream: bool, extra: dict[str, Any]) -> Response:
    body = {"model": model, "created_at": _now(), "done": True, "done_reason": "load", **extra}
    media = "application/x-ndjson" if stream else "application/json"
    return Response(orjson.dumps(body) + (b"\n" if stream else b""), media_type=media)


def _final(model: str, usage: dict[str, Any], finish: str | None, started: int) -> dict:
    return {
        "model": model,
        "created_at": _now(),
        "done": True,
        "done_reason": finish or "stop",
        "total_duration": time.perf_counter_ns() - started,
        "load_duration": 0,
        "prompt_eval_count": usage.get("prompt_tokens", 0),
        "eval_count": usage.get("completion_tokens", 0),
    }


async def _run(
    manager: ModelManager,
    instance: ModelInstance,
    model: str,
    path: str,
    openai: dict[str, Any],
    stream: bool,
    kind: str,
    client: Request,
) -> Response:
    started = time.perf_counter_ns()
    openai["model"] = instance.uid

    def piece(text: str, thought: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}}
            if kind == "chat"
            else {"response": text}
        )
        if thought:
            (out["message"] if kind == "chat" else out)["thinking"] = thought
        return out

    if not stream:
        # A client that leaves (a timeout) ends the generation, rather than leaving it to run
        # to max_tokens or the end of the context.
        result = await whole_answer(manager, instance, path, openai, client)
        choice = result["choices"][0]
        said = choice.get("message") or {}
        text = said["content"] if "message" in choice else choice["text"]
        answer = {**_final(model, result.get("usage", {}), choice.get("finish_reason"), started)}
        answer.update(piece(text or "", said.get("reasoning_content")))
        if kind == "chat" and choice.get("message", {}).get("tool_calls"):
            answer["message"]["tool_calls"] = _ollama_tool_calls(choice["message"]["tool_calls"])
        return Response(orjson.dumps(answer), media_type="application/json")

    openai["stream"] = True
    openai["stream_options"] = {"include_usage": True}
    upstream = await opened_stream(manager, instance, path, openai, client)

    async def ollama_lines(answer: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
        finish: str | None = None
        usage: dict[str, Any] = {}
        calls: dict[int, dict[str, Any]] = {}  # tool calls arrive in pieces; Ollama sends whole
        async for event in answer:
            if "error" in event:
                yield orjson.dumps({"error": event["error"].get("message", "error")}) + b"\n"
                async for _ in answer:  # read to its end, so the relay counts it as answered
                    pass
                return
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                finish = choice.get("finish_reason") or finish
                thought = None
                if "delta" in choice:  # a chat chunk; completion chunks carry `text`
                    delta = choice["delta"] or {}
                    text = delta.get("content")
                    thought = delta.get("reasoning_content") or delta.get("reasoning")
                    _gather_calls(calls, delta.get("tool_calls") or [])
                else:
                    text = choice.get("text")
                if text or thought:
                    line = {
                        "model": model,
                        "created_at": _now(),
                        "done": False,
                        **piece(text or "", thought),
                    }
                    yield orjson.dumps(line) + b"\n"
        if calls:
            line = {"model": model, "created_at": _now(), "done": False, **piece("")}
            line["message"]["tool_calls"] = _ollama_tool_calls([calls[i] for i in sorted(calls)])
            yield orjson.dumps(line) + b"\n"
        final = {**_final(model, usage, finish, started), **piece("")}
        yield orjson.dumps(final) + b"\n"

    return translated(upstream, ollama_lines, manager.settings.send_timeout, "application/x-ndjson")


def _gather_calls(calls: dict[int, dict[str, Any]], deltas: list[dict[str, Any]]) -> None:
    for delta in deltas:
        call = calls.setdefault(delta.get("index", 0), {"function": {"name": "", "arguments": ""}})
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""
