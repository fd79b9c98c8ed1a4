"""Tool calling through every client, on the demo GGUF registered with a tool-calling template.

The demo Gemma is a base model; a user gives it tool calling the way they would any local model:
a registration whose chat template renders tools and calls, with 'tools' among its abilities.
llama.cpp derives the call format from that template and constrains the arguments to the
tool's JSON schema, so the calls parse whatever the small model would have written.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from xinference_client import RESTfulClient

from tests.conftest import LLM, InferdServer, custom_model, gemma_gguf, weather_called, weather_tool

pytestmark = pytest.mark.slow

NAME = "gemma-tools"
TEMPLATE = (Path(__file__).parent / "data" / "gemma-tools.jinja").read_text()
WEATHER = weather_tool()
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
            "required": ["zone"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tools_model(launched: InferdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("w")
    definition = gemma_gguf(NAME, folder, TEMPLATE, ("tools",))
    with custom_model(launched, "LLM", definition) as uid:
        yield uid


def arguments(call: dict | object) -> dict:
    text = call["function"]["arguments"] if isinstance(call, dict) else call.function.arguments  # type: ignore[attr-defined]
    parsed = json.loads(text)
    assert isinstance(parsed, dict)
    return parsed


def test_openai_tool_calls_parse_against_the_schema(
    launched: InferdServer, tools_model: str
) -> None:
    client = launched.openai()
    reply = client.chat.completions.create(
        model=tools_model,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=40,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls, reply
    first = calls[0]
    assert first.type == "function" and first.id
    assert first.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(arguments(first)["city"], str)


def test_streamed_tool_calls_assemble(launched: InferdServer, tools_model: str) -> None:
    client = launched.openai()
    names: dict[int, str] = {}
    texts: dict[int, str] = {}
    for chunk in client.chat.completions.create(
        model=tools_model,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        max_tokens=40,
        temperature=0,
        stream=True,
    ):
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            names[delta.index] = names.get(delta.index, "") + (delta.function.name or "")  # type: ignore[union-attr]
            texts[delta.index] = texts.get(delta.index, "") + (delta.function.arguments or "")  # type: ignore[union-attr]
    assert names.get(0) == "get_weather"
    assert isinstance(json.loads(texts[0])["city"], str)


def test_named_tool_choice_forces_that_function(launched: InferdServer, tools_model: str) -> None:
    client = launched.openai()
    reply = client.chat.completions.create(
        model=tools_model,
        messages=ASK,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=40,
        temperature=0,
    )
    calls = reply.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"get_time"}  # type: ignore[union-attr]
    assert arguments(calls[0])["zone"] in ("UTC", "CET")  # the enum holds


def test_a_tool_answer_goes_back_to_the_model(launched: InferdServer, tools_model: str) -> None:
    client = launched.openai()
    history = weather_called(ASK, '{"sky": "sunny", "c": 21}')
    reply = client.chat.completions.create(
        model=tools_model,
        messages=history,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_tokens=8,
    )
    assert reply.usage is not None and reply.usage.prompt_tokens > 60  # the call and answer


def test_bad_tool_requests_are_refused(launched: InferdServer, tools_model: str) -> None:
    url = f"{launched.url}/v1/chat/completions"
    base = {"model": tools_model, "messages": ASK, "max_tokens": 4}
    cases = [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].function.name",
        ),
        ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ]
    for extra, param in cases:
        answer = httpx.post(url, json={**base, **extra}, timeout=30)
        assert answer.status_code == 400, (extra, answer.text)
        assert answer.json()["error"]["param"] == param, (extra, answer.text)
    # The demo Gemma's own template has no tool calling: refused, naming the field.
    answer = httpx.post(url, json={**base, "model": LLM, "tools": [WEATHER]}, timeout=30)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "tools"
    with pytest.raises(openai.BadRequestError, match="tool calls"):
        launched.openai().chat.completions.create(
            model=LLM,
            messages=ASK,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        )


def test_xinference_client_chat_with_tools(launched: InferdServer, tools_model: str) -> None:
    model = RESTfulClient(launched.url).get_model(tools_model)
    reply = model.chat(
        messages=ASK, tools=[WEATHER], generate_config={"max_tokens": 40, "temperature": 0}
    )
    call = reply["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(arguments(call)["city"], str)


def test_ollama_client_chat_with_tools(launched: InferdServer, tools_model: str) -> None:
    client = ollama.Client(host=launched.url)
    options = {"num_predict": 40, "temperature": 0}
    reply = client.chat(model=tools_model, messages=ASK, tools=[WEATHER], options=options)
    calls = reply.message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)

    streamed = [
        call
        for part in client.chat(
            model=tools_model, messages=ASK, tools=[WEATHER], options=options, stream=True
        )
        for call in part.message.tool_calls or []
    ]
    assert streamed and streamed[0].function.name == "get_weather"

    # The call and the tool's answer go back in Ollama's own shapes.
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [calls[0].model_dump()]},
        {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"},
    ]
    again = client.chat(model=tools_model, messages=history, options={"num_predict": 4})
    assert again.prompt_eval_count and again.prompt_eval_count > 40


def test_a_required_call_is_always_a_call(launched: InferdServer, tools_model: str) -> None:
    """With a system turn the tiny base model writes prose, never reaching its template's call
    marker; "required" constrains the answer to a call of a declared tool all the same."""
    client = launched.openai()
    messages = [{"role": "system", "content": "Answer questions about the weather."}, *ASK]
    asked = {
        "model": tools_model,
        "messages": messages,
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "max_tokens": 60,
        "temperature": 0,
    }
    reply = client.chat.completions.create(**asked)  # type: ignore[call-overload]
    assert reply.choices[0].finish_reason == "tool_calls"
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name in ("get_weather", "get_time") and arguments(call)

    chunks = list(client.chat.completions.create(**asked, stream=True))  # type: ignore[call-overload]
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].function.name == call.function.name
    assert json.loads(deltas[0].function.arguments) == arguments(call)
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "tool_calls"
