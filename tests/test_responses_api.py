"""OpenAI's Responses API through the real `openai` SDK and the OpenAI Agents SDK, against the
demo Gemma and the tool-calling registration of it: whole answers and typed event streams,
previous_response_id (across a restart too), function tools round-tripping, structured output,
stored responses read back and deleted, and refusals that name the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests import test_tools as chat_tools
from tests.conftest import LLM, InferdServer, restart, wait_ready
from tests.test_tools import tools_model  # noqa: F401 - the fixture, shared

pytestmark = pytest.mark.slow

# The tools of test_tools in the Responses API's flat form.
WEATHER = {"type": "function", **chat_tools.WEATHER["function"]}
ASK = "What is the weather in Paris?"


def test_create_stream_and_read_back(launched: InferdServer) -> None:
    client = launched.openai()
    whole = client.responses.create(
        model=LLM, input="Name a colour.", max_output_tokens=6, temperature=0
    )
    assert whole.object == "response" and whole.id.startswith("resp_")
    assert whole.status == "incomplete"  # it stopped at max_output_tokens
    assert whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage is not None and whole.usage.output_tokens == 6
    assert whole.output_text and whole.output[0].type == "message"

    instructed = client.responses.create(
        model=LLM,
        input="Name a colour.",
        instructions="You are a painter who answers in one word.",
        max_output_tokens=2,
    )
    assert instructed.usage is not None and instructed.usage.input_tokens > whole.usage.input_tokens

    events = list(
        client.responses.create(
            model=LLM, input="Name a colour.", max_output_tokens=6, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]  # type: ignore[union-attr]
    assert len(deltas) > 1 and "".join(deltas) == whole.output_text  # greedy: same tokens
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = events[-1].response  # type: ignore[union-attr]
    assert streamed.output_text == whole.output_text and streamed.usage.output_tokens == 6

    # Stored: read back, its input listed, then deleted; store=false keeps nothing.
    assert client.responses.retrieve(whole.id).output_text == whole.output_text
    (item,) = client.responses.input_items.list(whole.id).data
    assert item.type == "message" and item.content[0].text == "Name a colour."  # type: ignore[union-attr]
    client.responses.delete(whole.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(whole.id)
    unkept = client.responses.create(model=LLM, input="Hi", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


def test_structured_output_follows_the_schema(launched: InferdServer) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    answer = launched.openai().responses.create(
        model=LLM,
        input="Pick a colour. Answer in JSON.",
        max_output_tokens=300,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "pick", "schema": schema}},
    )
    assert json.loads(answer.output_text)["colour"] in ("red", "green", "blue")


def test_function_calls_round_trip(launched: InferdServer, tools_model: str) -> None:  # noqa: F811
    client = launched.openai()
    asked = client.responses.create(
        model=tools_model,
        input=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False,
        max_output_tokens=100,
        temperature=0,
    )
    assert asked.status == "completed", asked.output
    (call,) = [item for item in asked.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)

    answered = client.responses.create(
        model=tools_model,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],  # type: ignore[list-item]
        max_output_tokens=8,
    )
    assert answered.usage is not None and asked.usage is not None
    assert answered.usage.input_tokens > asked.usage.input_tokens  # the call and its output

    # Streamed, the arguments arrive in pieces and add up to the done event's.
    events = list(
        client.responses.create(
            model=tools_model,
            input=ASK,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=100,
            temperature=0,
            stream=True,
        )
    )
    pieces = "".join(
        e.delta
        for e in events
        if e.type == "response.function_call_arguments.delta"  # type: ignore[union-attr]
    )
    (done,) = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == pieces and json.loads(pieces)["city"]  # type: ignore[union-attr]
    assert events[-1].type == "response.completed"

    # As Codex offers them: functions grouped in a namespace, and OpenAI's hosted web search,
    # which is left out (nothing here runs it). The call names its namespace.
    grouped = client.responses.create(
        model=tools_model,
        input=ASK,
        tools=[
            {
                "type": "namespace",
                "name": "weather_tools",
                "description": "Weather",
                "tools": [WEATHER],
            },
            {"type": "web_search"},
        ],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=100,
        temperature=0,
    )
    (call,) = [item for item in grouped.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.namespace == "weather_tools"


def test_an_agent_runs_a_tool(launched: InferdServer, tools_model: str) -> None:  # noqa: F811
    from agents import (
        Agent,
        ModelSettings,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)  # tracing would post to OpenAI's servers
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"sunny in {city}"

    agent = Agent(
        name="weather",
        instructions="Answer questions about the weather with the tool.",
        model=OpenAIResponsesModel(
            model=tools_model,
            openai_client=openai.AsyncOpenAI(base_url=f"{launched.url}/v1", api_key="unused"),
        ),
        tools=[get_weather],
        # "required": the tiny base model alone would wander off; the call is constrained.
        model_settings=ModelSettings(tool_choice="required", max_tokens=100, temperature=0),
        tool_use_behavior="stop_on_first_tool",
    )
    result = asyncio.run(Runner.run(agent, ASK))
    assert cities and result.final_output == f"sunny in {cities[0]}"


def test_refusals_name_the_field(launched: InferdServer) -> None:
    url = f"{launched.url}/v1/responses"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": "x", "tools": [{"type": "retrieval"}]}, "tools[0].type"),
        (
            {
                "input": "x",
                "tools": [{"type": "web_search"}],
                "tool_choice": {"type": "web_search"},
            },
            "tool_choice",
        ),
        ({"input": "x", "previous_response_id": "resp_nope"}, "previous_response_id"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": []}, "input"),
        ({"input": "x", "tools": [WEATHER]}, "tools"),  # the demo Gemma has no tool calling
    ]
    for extra, param in cases:
        answer = httpx.post(url, json={"model": LLM, **extra}, timeout=30)
        assert answer.status_code == 400, (extra, answer.text)
        assert answer.json()["error"]["param"] == param, (extra, answer.text)
    with pytest.raises(openai.NotFoundError):
        launched.openai().responses.create(model="no-such-model", input="x")


@pytest.fixture
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferdServer]:
    server = InferdServer(tmp_path_factory.mktemp("responses-home"), "--launch", LLM)
    yield server
    server.stop()


def test_a_conversation_continues_after_a_restart(own_server: InferdServer) -> None:
    wait_ready(own_server, {LLM})
    first = own_server.openai().responses.create(model=LLM, input="Hello", max_output_tokens=4)
    own_server.stop()
    again = restart(own_server)
    try:
        wait_ready(again, {LLM})
        client = again.openai()
        assert client.responses.retrieve(first.id).output_text == first.output_text
        second = client.responses.create(
            model=LLM, input="And then?", previous_response_id=first.id, max_output_tokens=4
        )
        assert second.previous_response_id == first.id
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens + 4  # the first turn too
    finally:
        again.stop()
