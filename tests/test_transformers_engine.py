"""The transformers engine: a Llama of the real architecture with random weights, served with
continuous batching through the OpenAI API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import (
    InferdServer,
    abort_midway,
    custom_model,
    local_llm,
    run_together,
    scrape,
    weather_called,
    weather_tool,
)

pytestmark = pytest.mark.slow

NAME = "tiny-llama"
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
ASK = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def llama(launched: InferdServer, tiny_llama: Path) -> Iterator[str]:
    definition = local_llm(NAME, tiny_llama, TEMPLATE)
    with custom_model(launched, "LLM", definition, model_engine="transformers") as uid:
        yield uid


def test_a_character_cut_by_max_tokens_leaves_the_text_before_it() -> None:
    """Byte-level BPE writes a CJK character in several tokens: an answer that max_tokens ends
    inside one keeps its text up to that character, whole or streamed (whole, it once came
    back empty: the detokenizer held all of it back, waiting for the character's rest)."""
    from inferd.engines.transformers import _Detokenizer
    from tests.conftest import _bpe_tokenizer

    tokenizer = _bpe_tokenizer()
    ids = tokenizer('{"名字": "海洋"}', add_special_tokens=False)["input_ids"]
    cut = [n for n in range(1, len(ids) + 1) if tokenizer.decode(ids[:n]).endswith("\ufffd")]
    assert cut, "no answer here ends inside a character"
    eos = {tokenizer.eos_token_id}
    for n in range(1, len(ids) + 1):
        expected = tokenizer.decode(ids[:n]).rstrip("\ufffd")
        assert _Detokenizer(tokenizer, eos).add(ids[:n], final=True) == expected
        streamed = _Detokenizer(tokenizer, eos)
        pieces = [streamed.add(ids[:k], final=k == n) for k in range(1, n + 1)]
        assert "".join(pieces) == expected, pieces


def test_chat_counts_and_stops_at_max_tokens(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    reply = client.chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert reply.usage is not None
    assert reply.usage.completion_tokens <= 12 and reply.usage.prompt_tokens > 5
    assert reply.choices[0].finish_reason in ("length", "stop")
    again = client.chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
    )
    assert again.choices[0].message.content == reply.choices[0].message.content  # greedy
    assert launched.models()[llama]["model_engine"] == "transformers"


def test_a_long_system_prompt_is_tokenized_once(launched: InferdServer, tiny_llama: Path) -> None:
    """Under a template that closes each message with a special token (as real ones do), the
    second and later prompts opening with the same system prompt take its tokens from the
    first's tokenization (`engines/prompt_prefixes.py`) and count as many as a whole
    tokenization of each gives."""
    from transformers import AutoTokenizer

    template = (
        "{% for m in messages %}[CLS] {{ m['role'] }}: {{ m['content'] }} [SEP]{% endfor %}"
        "{% if add_generation_prompt %}[CLS] assistant:{% endif %}"
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    system = "You answer about the sea, its tides, its salt and its depths. " * 40
    definition = local_llm("tiny-llama-turns", tiny_llama, template)
    with custom_model(launched, "LLM", definition, model_engine="transformers") as uid:

        def reused() -> float:
            return sum(
                value
                for (name, labels), value in scrape(launched).items()
                if name == "inferd_engine_prompt_tokens_reused_total"
                and ("model_uid", uid) in labels
            )

        client = launched.openai()
        for question in ("What is a tide?", "Why is the sea salty?", "How deep is it?"):
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": question},
            ]
            answer = client.chat.completions.create(
                model=uid,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=2,
            )
            text = tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
            whole = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert answer.usage is not None
            assert answer.usage.prompt_tokens == len(whole) > 500
        # The system prompt's tokens, twice.
        assert reused() >= 2 * len(tokenizer(system, add_special_tokens=False)["input_ids"])


def test_streamed_chat_matches_the_whole_answer(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    whole = client.chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
    )
    pieces, usage = [], None
    for chunk in client.chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    assert len([p for p in pieces if p]) > 1  # arrived in pieces
    assert "".join(pieces) == whole.choices[0].message.content
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_completions_n_and_stop(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    several = client.completions.create(
        model=llama, prompt="The sea is", max_tokens=8, n=3, temperature=1.0
    )
    assert sorted(c.index for c in several.choices) == [0, 1, 2]
    greedy = client.completions.create(
        model=llama, prompt="The sea is", max_tokens=20, temperature=0
    )
    text = greedy.choices[0].text
    assert len(text) > 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(
        model=llama, prompt="The sea is", max_tokens=20, temperature=0, stop=[stop]
    )
    assert stop not in cut.choices[0].text and text.startswith(cut.choices[0].text)
    assert cut.choices[0].finish_reason == "stop"


def test_requests_join_the_running_batch(launched: InferdServer, llama: str) -> None:
    """A short request sent while a long one generates finishes first: it joined the batch
    between decode steps instead of waiting for the long one to end."""
    client = launched.openai()
    finished: dict[str, float] = {}

    def long() -> None:
        for _ in client.chat.completions.create(
            model=llama,
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=400,
            stream=True,
            extra_body={"ignore_eos": True},
        ):
            if "long-started" not in finished:
                finished["long-started"] = time.monotonic()
        finished["long"] = time.monotonic()

    thread = threading.Thread(target=long)
    thread.start()
    while "long-started" not in finished:
        time.sleep(0.01)
    client.chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=5,
    )
    finished["short"] = time.monotonic()
    thread.join(60)
    assert finished["short"] < finished["long"]

    # Many at once all complete.
    results: list[int] = []

    def one() -> None:
        reply = client.chat.completions.create(
            model=llama,
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=10,
        )
        results.append(len(reply.choices))

    run_together(*[one] * 8)
    assert results == [1] * 8


def test_what_the_engine_cannot_do_is_refused(launched: InferdServer, llama: str) -> None:
    url = f"{launched.url}/v1/chat/completions"
    base = {"model": llama, "messages": ASK, "max_tokens": 4}
    for extra, param in (
        ({"seed": 1}, "seed"),
        # WordPiece decodes with spaces between pieces: no grammar can hold it to JSON.
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"max_tokens": 5000}, "max_tokens"),
    ):
        answer = httpx.post(url, json={**base, **extra}, timeout=30)
        assert answer.status_code == 400, (extra, answer.text)
        assert answer.json()["error"]["param"] == param
    streamed = httpx.post(url, json={**base, "seed": 1, "stream": True}, timeout=30)
    assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "seed"
    with pytest.raises(openai.BadRequestError, match="context"):
        launched.openai().completions.create(model=llama, prompt="sea " * 3000, max_tokens=2)


def test_abort_stops_the_sequence(launched: InferdServer, llama: str) -> None:
    abort_midway(launched, llama, "tf-1", 1500)
    # The loop is free again: a new request is answered.
    reply = launched.openai().chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=3,
    )
    assert reply.choices[0].message.content is not None


# Tools rendered and calls written Hermes-style (<tool_call>{...}</tool_call>), as Qwen's
# templates do; the family's name tells the engine which format to read.
HERMES = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] or '' }}"
    "{% for c in m.get('tool_calls') or [] %}<tool_call>"
    "{{ {'name': c.function.name, 'arguments': c.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}</{{ m['role'] }}>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
# The city's length bounded: random weights would fill max_tokens with one string.
WEATHER = weather_tool(max_city=12)
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tools_llama(launched: InferdServer, tiny_bpe_llama: Path) -> Iterator[str]:
    """The tiny Llama with a byte-level BPE tokenizer (text decodes as written, as JSON needs),
    registered as a Hermes-family model that calls tools."""
    definition = local_llm("hermes-tiny", tiny_bpe_llama, HERMES, ("tools",))
    definition["model_family"] = "hermes-tiny"
    with custom_model(launched, "LLM", definition, model_engine="transformers") as uid:
        yield uid


def test_json_output_follows_the_schema(launched: InferdServer, tools_llama: str) -> None:
    """Random weights write gibberish; the grammar holds every answer to the schema, whole,
    streamed, from several sequences at once, and beside unconstrained sequences it leaves
    alone (their greedy answers are the same as when they run by themselves)."""
    client = launched.openai()
    schema_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    asked = {"model": tools_llama, "messages": ASK, "max_tokens": 60, "temperature": 1.0}
    answer = client.chat.completions.create(**asked, response_format=schema_format)
    person = json.loads(answer.choices[0].message.content or "")
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    assert answer.choices[0].finish_reason == "stop"

    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(**asked, response_format=schema_format, stream=True)
        if c.choices
    )
    assert set(json.loads(streamed)) == {"name", "age"}

    several = client.chat.completions.create(**asked, response_format=schema_format, n=3)
    assert all(set(json.loads(c.message.content or "")) == {"name", "age"} for c in several.choices)
    # Any object: its keys and strings are unbounded, so gibberish may fill max_tokens first.
    anything = client.chat.completions.create(**asked, response_format={"type": "json_object"})
    text, finish = anything.choices[0].message.content or "", anything.choices[0].finish_reason
    assert text.startswith("{") and (finish == "length" or isinstance(json.loads(text), dict)), (
        anything.choices[0]
    )

    free = {**asked, "temperature": 0, "max_tokens": 24}
    alone = client.chat.completions.create(**free).choices[0].message.content
    together: dict[str, object] = {}

    def constrained(i: int) -> None:
        reply = client.chat.completions.create(**asked, response_format=schema_format)
        together[f"json{i}"] = json.loads(reply.choices[0].message.content or "")

    def unconstrained() -> None:
        together["free"] = client.chat.completions.create(**free).choices[0].message.content

    run_together(*(lambda i=i: constrained(i) for i in range(4)), unconstrained)
    assert together["free"] == alone
    assert all(set(together[f"json{i}"]) == {"name", "age"} for i in range(4))  # type: ignore[arg-type]


def test_forced_tool_calls_are_calls(launched: InferdServer, tools_llama: str) -> None:
    client = launched.openai()
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        called = client.chat.completions.create(
            model=tools_llama,
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=60,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice=choice,  # type: ignore[arg-type]
        )
        assert called.choices[0].finish_reason == "tool_calls", called.choices[0]
        (call,) = called.choices[0].message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]

    chunks = list(
        client.chat.completions.create(
            model=tools_llama,
            messages=ASK,  # type: ignore[arg-type]
            max_tokens=60,
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(deltas[0].function.arguments or "")["city"] is not None  # type: ignore[union-attr]


def test_tools_reach_the_template_and_results_go_back(
    launched: InferdServer, tools_llama: str
) -> None:
    """With tool_choice auto the model sees the tools (the prompt grows by their schema) and
    answers freely; a call and its result go back to it in the next turn."""
    client = launched.openai()
    plain = client.chat.completions.create(
        model=tools_llama,
        messages=ASK,
        max_tokens=8,  # type: ignore[arg-type]
    )
    auto = client.chat.completions.create(
        model=tools_llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=8,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert plain.usage and auto.usage
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert auto.choices[0].message.tool_calls is None  # gibberish holds no call
    history = weather_called(ASK, "sunny, 21 C")
    again = client.chat.completions.create(
        model=tools_llama,
        messages=history,  # type: ignore[arg-type]
        max_tokens=8,
        tools=[WEATHER],  # type: ignore[list-item]
    )
    assert again.usage and again.usage.prompt_tokens > auto.usage.prompt_tokens + 10


def test_bad_formats_are_400s_naming_the_field(launched: InferdServer, tools_llama: str) -> None:
    url = f"{launched.url}/v1/chat/completions"
    base = {"model": tools_llama, "messages": ASK, "max_tokens": 4}
    bad_schema = {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "x"}}}
    for extra, param in (
        ({"response_format": bad_schema}, "response_format"),
        ({"response_format": bad_schema, "stream": True}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format"),
    ):
        answer = httpx.post(url, json={**base, **extra}, timeout=30)
        assert answer.status_code == 400, (extra, answer.text)
        assert answer.json()["error"]["param"] == param
