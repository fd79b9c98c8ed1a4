"""Anthropic's Messages API through the real `anthropic` SDK, against the demo Gemma and the
tool-calling registration of it: create, stream, tools (forced by tool_choice, answered with a
tool_result), count_tokens, and errors in Anthropic's shape."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from tests import test_tools as chat_tools
from tests.conftest import LLM, InferdServer
from tests.test_tools import tools_model  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.slow

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def anthropic_tool(chat_tool: dict) -> dict:
    """A tool of test_tools in Anthropic's form."""
    function = chat_tool["function"]
    return {
        "name": function["name"],
        "description": function["description"],
        "input_schema": function["parameters"],
    }


WEATHER = anthropic_tool(chat_tools.WEATHER)
TIME = anthropic_tool(chat_tools.TIME)


def sdk(server: InferdServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0)


def test_create_and_stream_give_the_same_answer(launched: InferdServer) -> None:
    client = sdk(launched)
    asked = {
        "model": LLM,
        "max_tokens": 6,
        "extra_body": {"temperature": 0},  # the SDK has no such argument; the API does
        "system": [{"type": "text", "text": "You answer briefly."}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Name a colour."}]}],
    }
    whole = client.messages.create(**asked)  # type: ignore[call-overload]
    assert whole.type == "message" and whole.role == "assistant" and whole.model == LLM
    assert whole.id.startswith("msg_")
    assert whole.stop_reason == "max_tokens" and whole.usage.output_tokens == 6
    assert whole.usage.input_tokens > 5
    text = "".join(block.text for block in whole.content if block.type == "text")

    pieces = []
    with client.messages.stream(**asked) as stream:  # type: ignore[call-overload]
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) > 1  # token by token, not one lump
    assert "".join(pieces) == text  # greedy: the same tokens either way
    assert final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 6 and final.usage.input_tokens == whole.usage.input_tokens

    counted = client.messages.count_tokens(
        model=LLM, system=asked["system"], messages=asked["messages"]
    )
    assert counted.input_tokens == whole.usage.input_tokens


def test_stop_sequences_end_the_turn(launched: InferdServer) -> None:
    client = sdk(launched)
    free = client.messages.create(
        model=LLM,
        max_tokens=12,
        extra_body={"temperature": 0},
        messages=[{"role": "user", "content": "Hi"}],
    )
    text = "".join(b.text for b in free.content if b.type == "text")
    assert len(text) >= 4, text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    stopped = client.messages.create(
        model=LLM,
        max_tokens=12,
        extra_body={"temperature": 0},
        stop_sequences=[stop],
        messages=[{"role": "user", "content": "Hi"}],
    )
    said = "".join(b.text for b in stopped.content if b.type == "text")
    assert text.startswith(said) and stop not in said and len(said) < len(text), (text, said)
    assert stopped.stop_reason == "end_turn"


def test_a_forced_tool_call_round_trips(launched: InferdServer, tools_model: str) -> None:  # noqa: F811
    client = sdk(launched)
    asked = client.messages.create(
        model=tools_model,
        max_tokens=40,
        extra_body={"temperature": 0},
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        messages=ASK,  # type: ignore[arg-type]
    )
    assert asked.stop_reason == "tool_use"
    (call,) = [block for block in asked.content if block.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input["city"], str)  # type: ignore[index]

    answered = client.messages.create(
        model=tools_model,
        max_tokens=8,
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        messages=[
            *ASK,
            {"role": "assistant", "content": asked.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}
                ],
            },
        ],  # type: ignore[arg-type]
    )
    assert answered.usage.input_tokens > asked.usage.input_tokens  # the call and its result
    # "any" asks for some call (one, here); streamed, its arguments arrive as JSON pieces.
    with client.messages.stream(
        model=tools_model,
        max_tokens=40,
        extra_body={"temperature": 0},
        tools=[TIME],  # type: ignore[list-item]
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
        messages=ASK,  # type: ignore[arg-type]
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "content_block_start" in kinds and "message_stop" in kinds
    (streamed,) = [block for block in final.content if block.type == "tool_use"]
    assert streamed.name == "get_time" and streamed.input["zone"] in ("UTC", "CET")  # type: ignore[index]
    assert final.stop_reason == "tool_use"


def test_errors_come_in_anthropics_shape(launched: InferdServer) -> None:
    client = sdk(launched)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=4, messages=ASK)  # type: ignore[arg-type]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        client.messages.create(model=LLM, max_tokens=0, messages=ASK)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError, match="tool calls"):
        client.messages.create(model=LLM, max_tokens=4, tools=[WEATHER], messages=ASK)  # type: ignore[arg-type,list-item]
    with pytest.raises(anthropic.BadRequestError, match="images"):
        client.messages.create(
            model=LLM,
            max_tokens=4,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
                        },
                        {"type": "text", "text": "What is this?"},
                    ],
                }
            ],
        )
    for body, param in (
        ({"model": LLM, "messages": ASK}, "max_tokens"),
        ({"model": LLM, "max_tokens": 4, "messages": []}, "messages"),
        ({"model": LLM, "max_tokens": 4, "messages": [{"role": "robot", "content": "x"}]}, "role"),
        (
            {"model": LLM, "max_tokens": 4, "messages": ASK, "tool_choice": {"type": "any"}},
            "tool_choice",
        ),
    ):
        answer = httpx.post(f"{launched.url}/v1/messages", json=body, timeout=30)
        assert answer.status_code == 400, answer.text
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert param in error["error"]["message"], error
    # A body sent as a form, as curl -d does, is read as the JSON it is.
    answer = httpx.post(
        f"{launched.url}/v1/messages",
        content=json.dumps({"model": LLM, "max_tokens": 2, "messages": ASK}),
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
