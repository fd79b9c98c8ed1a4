"""How well-known model families write tool calls, and reading those calls out of their text.

vLLM parses calls itself once told the format's name (`--tool-call-parser`); the transformers
engine generates plain text, so for `tool_choice: "auto"` the calls a model wrote are read here,
in whole answers and in streams: Hermes' `<tool_call>{...}</tool_call>` (Qwen 2/2.5/3, QwQ,
Hermes), Qwen3-Coder's XML (`<tool_call><function=NAME><parameter=KEY>value</parameter>...`),
Llama 3's bare JSON, and Mistral's `[TOOL_CALLS]`, whose markers are special tokens that the
engine keeps in the text (MARKERS) when a request has tools.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator
from typing import Any

import orjson

from inferd.engines.base import Json, by_prefix

# Tool-call formats of well-known families, by vLLM's parser names. Checked in order: the
# first prefix of the model's family (or name) wins.
PARSERS = (
    ("qwen3-coder", "qwen3_coder"),
    ("qwen", "hermes"),
    ("qwq", "hermes"),
    ("hermes", "hermes"),
    ("llama-3", "llama3_json"),
    ("llama3", "llama3_json"),
    ("llama-4", "llama4_pythonic"),
    ("mistral", "mistral"),
    ("deepseek-v3", "deepseek_v3"),
    ("deepseek-r1", "deepseek_v3"),
    ("glm-4", "glm45"),
    ("kimi-k2", "kimi_k2"),
    ("gpt-oss", "openai"),
)

# The formats read here from generated text.
READABLE = ("hermes", "qwen3_coder", "llama3_json", "mistral")

# Special tokens a format's calls are written with, which detokenizing drops unless kept.
MARKERS = {"mistral": ("[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")}


def format_of(family: Json, model_name: str) -> str | None:
    """The tool-call format of a model: its family's, else its own name's."""
    return by_prefix(PARSERS, family.get("model_family") or "") or by_prefix(PARSERS, model_name)


def call(name: str, arguments: Any) -> Json:
    """An OpenAI tool call."""
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments or {}).decode()
    return {
        "id": f"call_{secrets.token_hex(12)}",
        "type": "function",
        "function": {"name": name, "arguments": text},
    }


_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_CALL_OPEN = "<tool_call>"  # Hermes' and Qwen3-Coder's
# Qwen3-Coder: one function per <tool_call>; its parameters' values are bare text, each on
# lines of its own. EOS may come before the closing </tool_call>.
_XML_CALL = re.compile(
    r"<tool_call>\s*<function=([^>\n]+)>(.*?)</function>\s*(?:</tool_call>|$)", re.DOTALL
)
_XML_PARAMETER = re.compile(r"<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL = "[TOOL_CALLS]"


def _json_calls(texts: list[str], arguments_key: tuple[str, ...]) -> list[Json] | None:
    """Calls from JSON objects with a name and arguments; None if any is not one."""
    try:
        return _named_calls([orjson.loads(text) for text in texts], arguments_key)
    except orjson.JSONDecodeError:
        return None


def _named_calls(written: list[Any], arguments_key: tuple[str, ...]) -> list[Json] | None:
    """Calls from objects with a name and arguments; None if any is not one."""
    calls = []
    for each in written:
        if not isinstance(each, dict) or not isinstance(each.get("name"), str):
            return None
        arguments: Any = next((each[k] for k in arguments_key if k in each), {})
        calls.append(call(each["name"], arguments))
    return calls


def _mistral_calls(text: str) -> list[Json] | None:
    """Mistral's calls, from the first [TOOL_CALLS] on; None unless all of it is calls. Its
    tokenizers before v11 write one JSON list of calls (`[TOOL_CALLS] [{"name": ...,
    "arguments": {...}}]`), later ones each call apart (`[TOOL_CALLS]NAME[ARGS]{...}`, some
    with `[CALL_ID]ID` before `[ARGS]`)."""
    calls: list[Json] = []
    for piece in text.split(_MISTRAL)[1:]:
        if "[ARGS]" in piece:
            head, _, arguments = piece.partition("[ARGS]")
            name = head.partition("[CALL_ID]")[0].strip()
            try:
                parsed = orjson.loads(arguments.strip())
            except orjson.JSONDecodeError:
                return None
            if not name or not isinstance(parsed, dict):
                return None
            calls.append(call(name, parsed))
            continue
        try:
            written = orjson.loads(piece.strip())
        except orjson.JSONDecodeError:
            return None
        found = _named_calls(written if isinstance(written, list) else [written], ("arguments",))
        if not found:
            return None
        calls.extend(found)
    return calls or None


def _objects(text: str) -> list[str]:
    """The JSON texts of `a; b; c` (Llama 3's parallel calls); a text that is not such a list
    comes back whole, to fail as JSON."""
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text):
        try:
            _, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return [text]
        found.append(text[at:end])
        at = end
        while at < len(text) and text[at] in " \t\r\n;":
            at += 1
    return found


def _xml_calls(text: str, tools: list[Json]) -> list[Json] | None:
    """Qwen3-Coder's calls; None unless the text from the first <tool_call> on is calls."""
    matches = list(_XML_CALL.finditer(text))
    if not matches or text[matches[-1].end() :].strip():
        return None
    functions = [t.get("function") or {} for t in tools]
    schemas = {f.get("name"): f.get("parameters") or {} for f in functions}
    calls = []
    for match in matches:
        name = match.group(1).strip()
        properties = (schemas.get(name) or {}).get("properties") or {}
        written = ((key.strip(), value) for key, value in _XML_PARAMETER.findall(match.group(2)))
        arguments = {key: _typed(value, properties.get(key)) for key, value in written}
        calls.append(call(name, arguments))
    return calls


def _typed(text: str, schema: Any) -> Any:
    """A parameter's bare text as the value its schema asks for: the text itself for strings
    (and where nothing else reads), else the JSON it spells (numbers, booleans, objects)."""
    value = text.removeprefix("\n").removesuffix("\n")
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "string":
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        if kind == "boolean" and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        return value
    wanted = _JSON_TYPES.get(kind)
    if wanted is None:
        return parsed
    numeric = kind in ("integer", "number")
    fits = isinstance(parsed, wanted) and not (numeric and isinstance(parsed, bool))
    return parsed if fits else value


_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def read(kind: str, text: str, tools: list[Json] | None = None) -> tuple[str | None, list[Json]]:
    """The content and the tool calls of a whole answer written in format `kind`; `tools`, the
    request's, say what type each parameter of a format that writes bare text has."""
    if kind == "qwen3_coder":
        at = text.find(_CALL_OPEN)
        calls = _xml_calls(text[at:], tools or []) if at != -1 else None
        return ((text[:at].strip() or None), calls) if calls else (text, [])
    if kind == "hermes":
        at = text.find(_CALL_OPEN)
        if at == -1:
            return text, []
        calls = _json_calls(_HERMES.findall(text[at:]), ("arguments", "parameters"))
        if not calls:
            return text, []
        return (text[:at].strip() or None), calls
    if kind == "mistral":
        at = text.find(_MISTRAL)
        calls = _mistral_calls(text[at:]) if at != -1 else None
        return ((text[:at].strip() or None), calls) if calls else (text, [])
    if kind == "llama3_json":
        body = text.strip().removeprefix(_PYTHON_TAG).strip()
        if not body.startswith("{"):
            return text, []
        calls = _json_calls(_objects(body), ("parameters", "arguments"))
        return (None, calls) if calls else (text, [])
    raise ValueError(f"no reader for tool-call format {kind!r}")


def as_calls(answer: Json, kind: str, tools: list[Json] | None = None) -> Json:
    """A whole chat answer with the calls its text holds as `tool_calls`."""
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        content, calls = read(kind, message.get("content") or "", tools)
        if calls:
            choice["message"] = {**message, "content": content, "tool_calls": calls}
            choice["finish_reason"] = "tool_calls"
    return answer


def _content_end(kind: str, text: str) -> int:
    """How much of the text so far is content for certain: it ends where a call begins or may
    be beginning."""
    if kind in ("hermes", "qwen3_coder", "mistral"):
        opener = _MISTRAL if kind == "mistral" else _CALL_OPEN
        at = text.find(opener)
        if at != -1:
            return at
        partial = (i for i in range(len(opener) - 1, 0, -1) if text.endswith(opener[:i]))
        return len(text) - next(partial, 0)
    head = text.lstrip()  # llama3_json: a call is the whole answer
    return 0 if head.startswith(("{", _PYTHON_TAG)) or _PYTHON_TAG.startswith(head) else len(text)


async def stream_as_calls(
    chunks: AsyncIterator[Json], kind: str, tools: list[Json] | None = None
) -> AsyncIterator[Json]:
    """A chat stream (one choice) whose content flows until a call may begin; from there the
    text is held, and at the end it goes out as `tool_calls` deltas, or as content if it was
    not a call after all."""
    text, sent = "", 0
    async for chunk in chunks:
        choices = chunk.get("choices") or []
        if not choices:
            yield chunk  # usage
            continue
        choice = choices[0]
        delta = choice.get("delta") or {}
        text += delta.get("content") or ""
        if not choice.get("finish_reason"):
            end = max(sent, _content_end(kind, text))
            if end > sent or set(delta) - {"content"}:  # new content, or a role or reasoning
                out = {**delta, "content": text[sent:end]} if "content" in delta else delta
                yield {**chunk, "choices": [{**choice, "delta": out}]}
                sent = end
            continue
        content, calls = read(kind, text, tools)
        if not calls:
            yield {**chunk, "choices": [{**choice, "delta": {**delta, "content": text[sent:]}}]}
            continue
        rest = text[sent : max(sent, _content_end(kind, text))].rstrip() if content else ""
        if rest:
            piece = {**choice, "delta": {"content": rest}, "finish_reason": None}
            yield {**chunk, "choices": [piece]}
        deltas = [{"index": i, **c} for i, c in enumerate(calls)]
        final = {"index": choice.get("index", 0), "delta": {"tool_calls": deltas}}
        yield {**chunk, "choices": [{**final, "finish_reason": "tool_calls"}]}
