"""Reading the tool calls a model wrote in its family's format, whole and streamed (the
transformers engine's `tool_choice: auto`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from inferd.engines import tool_formats

HERMES = (
    'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
    '</tool_call>\n<tool_call>{"name": "get_time", "arguments": {"zone": "CET"}}</tool_call>'
)
LLAMA3 = (
    '<|python_tag|>{"name": "get_weather", "parameters": {"city": "a;b"}}; '
    '{"name": "g", "parameters": {}}'
)


def named(calls: list[dict]) -> list[tuple[str, dict]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


@pytest.mark.parametrize(
    ("kind", "text", "content", "calls"),
    [
        (
            "hermes",
            HERMES,
            "Let me look.",
            [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})],
        ),
        # EOS may end the answer before the closing tag.
        ("hermes", '<tool_call>{"name": "f", "arguments": {}}', None, [("f", {})]),
        ("hermes", "no call here", "no call here", []),
        ("hermes", '<tool_call>{"name": broken', '<tool_call>{"name": broken', []),
        ("llama3_json", LLAMA3, None, [("get_weather", {"city": "a;b"}), ("g", {})]),
        ("llama3_json", '{"name": "f", "parameters": {}} and more', None, []),
        ("llama3_json", "Hello {there}", "Hello {there}", []),
    ],
)
def test_whole_answers(kind: str, text: str, content: str | None, calls: list) -> None:
    found_content, found = tool_formats.read(kind, text)
    assert named(found) == calls
    if calls or content is not None:
        assert found_content == (content if calls else text)
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in found)


async def _chunks(pieces: list[str]) -> AsyncIterator[dict]:
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        yield {"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    yield {"id": "c", "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]}
    yield {"id": "c", "choices": [], "usage": {"completion_tokens": len(pieces)}}


def _streamed(kind: str, pieces: list[str]) -> list[dict]:
    async def collect() -> list[dict]:
        return [c async for c in tool_formats.stream_as_calls(_chunks(pieces), kind)]

    return asyncio.run(collect())


def test_streamed_content_flows_until_a_call_begins() -> None:
    pieces = [
        "Sure",
        ", checking <to",
        'ol_call>{"name": "w", ',
        '"arguments": {"a": 1}}</tool_call>',
    ]
    chunks = _streamed("hermes", pieces)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.rstrip() == "Sure, checking"  # nothing of the marker leaked out as content
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    last = [c for c in chunks if c["choices"]][-1]["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    assert named(last["delta"]["tool_calls"]) == [("w", {"a": 1})]
    assert last["delta"]["tool_calls"][0]["index"] == 0
    assert chunks[-1]["usage"] == {"completion_tokens": 4}


@pytest.mark.parametrize(
    ("kind", "pieces"),
    [
        ("hermes", ["Sure <to", "p> done"]),
        ("llama3_json", [" {not", " json"]),
        ("llama3_json", ["Hi", " there"]),
    ],
)
def test_streamed_text_that_is_no_call_comes_out_whole(kind: str, pieces: list[str]) -> None:
    chunks = [c for c in _streamed(kind, pieces) if c["choices"]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "".join(pieces)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any(c["choices"][0]["delta"].get("tool_calls") for c in chunks)


def test_llama3_stream_holds_the_call() -> None:
    chunks = [
        c
        for c in _streamed("llama3_json", [' {"name"', ': "f", "parameters": {}}'])
        if c["choices"]
    ]
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
    assert named(chunks[-1]["choices"][0]["delta"]["tool_calls"]) == [("f", {})]


# Qwen3-Coder's XML, as its chat template teaches it: values are bare text, typed by the tool's
# schema (a string that looks like a number stays a string).
QWEN3_CODER = (
    "I will run it.\n<tool_call>\n<function=run_shell>\n<parameter=command>\nls -la\n"
    "cd /tmp\n</parameter>\n<parameter=timeout>\n30\n</parameter>\n<parameter=dry>\nfalse\n"
    "</parameter>\n<parameter=zip>\n01234\n</parameter>\n</function>\n</tool_call>\n"
    '<tool_call>\n<function=read_file>\n<parameter=paths>\n["a.py", "b.py"]\n</parameter>\n'
    "<parameter=limit>\nall\n</parameter>\n</function>\n"  # EOS before </tool_call>
)
CODER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run_shell",
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {"type": "string"},
                    "timeout": {"type": "integer"},
                    "dry": {"type": "boolean"},
                    "zip": {"type": "string"},
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {
                "type": "object",
                "properties": {"paths": {"type": "array"}, "limit": {"type": "integer"}},
            },
        },
    },
]


def test_qwen3_coder_calls_are_read_and_typed_by_the_schema() -> None:
    content, calls = tool_formats.read("qwen3_coder", QWEN3_CODER, CODER_TOOLS)
    assert content == "I will run it."
    assert named(calls) == [
        ("run_shell", {"command": "ls -la\ncd /tmp", "timeout": 30, "dry": False, "zip": "01234"}),
        # A value that is not what the schema asks for is passed on as written, for the
        # client's own validation to name.
        ("read_file", {"paths": ["a.py", "b.py"], "limit": "all"}),
    ]
    # Without schemas, values that spell JSON are read as JSON.
    _, untyped = tool_formats.read("qwen3_coder", QWEN3_CODER)
    assert named(untyped)[0][1]["zip"] == "01234"  # not JSON: a leading zero
    assert named(untyped)[0][1]["timeout"] == 30
    # Text after the calls, or a call cut short inside a function, is no call: all content.
    for text in (QWEN3_CODER + "\nand then", "<tool_call>\n<function=f>\n<parameter=a>\n1"):
        assert tool_formats.read("qwen3_coder", text, CODER_TOOLS) == (text, [])


def test_qwen3_coder_stream_holds_the_call() -> None:
    pieces = [QWEN3_CODER[i : i + 7] for i in range(0, len(QWEN3_CODER), 7)]

    async def collect() -> list[dict]:
        chunks = tool_formats.stream_as_calls(_chunks(pieces), "qwen3_coder", CODER_TOOLS)
        return [c async for c in chunks if c["choices"]]

    chunks = asyncio.run(collect())
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text.rstrip() == "I will run it."
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    assert [name for name, _ in named(last["delta"]["tool_calls"])] == ["run_shell", "read_file"]
    assert named(last["delta"]["tool_calls"])[0][1]["timeout"] == 30


# Mistral's two ways: one JSON list after [TOOL_CALLS] (tokenizers before v11), or each call
# apart as NAME[ARGS]{...} (v11 on; some put [CALL_ID]ID before [ARGS]).
MISTRAL_LIST = 'Checking. [TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'
MISTRAL_APART = (
    '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
    '[TOOL_CALLS]get_time[CALL_ID]a1b2c3d4e[ARGS]{"zone": "CET"}'
)


def test_mistral_calls_are_read_in_both_of_its_forms() -> None:
    content, calls = tool_formats.read("mistral", MISTRAL_LIST)
    assert content == "Checking." and named(calls) == [("get_weather", {"city": "Paris"})]
    content, calls = tool_formats.read("mistral", MISTRAL_APART)
    assert content is None
    assert named(calls) == [("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET"})]
    for text in (
        "no call here",
        "[TOOL_CALLS] [{broken",
        '[TOOL_CALLS]f[ARGS]{"a": 1} and then',
        "[TOOL_CALLS][ARGS]{}",  # no name
        '[TOOL_CALLS] [{"arguments": {}}]',
    ):
        assert tool_formats.read("mistral", text) == (text, []), text


def test_mistral_markers_survive_detokenizing_and_the_stream_holds_the_call() -> None:
    """[TOOL_CALLS] and [ARGS] are special tokens, which decoding drops: the transformers
    engine keeps them in the text of a request with tools, token by token as it streams."""
    from inferd.engines.transformers import _Detokenizer, _token_ids
    from tests.conftest import _bpe_tokenizer

    tokenizer = _bpe_tokenizer("[TOOL_CALLS]", "[ARGS]")
    written = 'Let me look.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}'
    ids = tokenizer(written)["input_ids"]
    keep = _token_ids(tokenizer, tool_formats.MARKERS["mistral"])
    assert sorted(keep.values()) == ["[ARGS]", "[TOOL_CALLS]"]  # no [CALL_ID] in this one
    assert set(keep) <= set(ids)

    def pieces(kept: dict[int, str]) -> list[str]:
        detokenizer = _Detokenizer(tokenizer, {tokenizer.eos_token_id}, kept)
        return [detokenizer.add(ids[: n + 1]) for n in range(len(ids))]

    assert "".join(pieces({})) == 'Let me look.get_weather{"city": "Paris"}'
    kept = pieces(keep)
    assert "".join(kept) == written

    async def collect() -> list[dict]:
        chunks = tool_formats.stream_as_calls(_chunks(kept), "mistral")
        return [c async for c in chunks if c["choices"]]

    chunks = asyncio.run(collect())
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Let me look."
    last = chunks[-1]["choices"][0]
    assert last["finish_reason"] == "tool_calls"
    assert named(last["delta"]["tool_calls"]) == [("get_weather", {"city": "Paris"})]
