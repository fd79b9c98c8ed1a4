"""The transformers engine: a Llama of the real architecture with random weights, served with
continuous batching through the OpenAI API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from xinference_client import RESTfulClient

from tests.conftest import InferdServer, custom_model, local_llm, run_together

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
    xclient = RESTfulClient(launched.url)
    outcome: dict[str, str] = {}

    def chat() -> None:
        try:
            xclient.get_model(llama).chat(
                messages=ASK,
                generate_config={"max_tokens": 1500, "request_id": "tf-1", "ignore_eos": True},
            )
        except RuntimeError as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=chat)
    thread.start()
    deadline = time.monotonic() + 30
    while launched.models()[llama]["replicas"][0]["inflight"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    assert xclient.abort_request(llama, "tf-1")["aborted"] is True
    thread.join(30)
    assert "was aborted" in outcome.get("error", "")
    # The loop is free again: a new request is answered.
    reply = launched.openai().chat.completions.create(
        model=llama,
        messages=ASK,  # type: ignore[arg-type]
        max_tokens=3,
    )
    assert reply.choices[0].message.content is not None
