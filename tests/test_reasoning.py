"""A reasoning model's thinking comes back apart from its answer, through every API, and each
API's switch turns it off.

The model is the demo Gemma registered as a user registers a reasoning model: 'reasoning' among
its abilities and a Qwen3-style template that opens the thinking block in the prompt (or writes
an empty one when thinking is off). The base model copies what it saw, so an earlier turn that
thought before answering makes it think, then answer, in the same shape: real output of a real
model, holding the tags the server has to take apart. The transformers engine's check uses the
tiny random-weight Llama, whose output never closes the block: all of it is thinking.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import pytest
from xinference_client import RESTfulClient

from tests.conftest import LLM, InferdServer, custom_model, gemma_gguf, local_llm

pytestmark = pytest.mark.slow

TEMPLATE = (
    "{% for m in messages %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}\n"
    "{{ m.content }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
THOUGHT = "Light scatters off air; blue scatters most."
ANSWER = "The sky is blue."
QUESTION = "What colour is the sky?"
HISTORY = [
    {"role": "user", "content": QUESTION},
    {"role": "assistant", "content": f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"},
    {"role": "user", "content": QUESTION},
]
# Enough for the thought and the first words of the answer.
LENGTH = 28


@pytest.fixture(scope="module")
def thinker(launched: InferdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("w")
    definition = gemma_gguf(
        "gemma-thinker",
        folder,
        TEMPLATE,
        ("reasoning",),
        reasoning_start_tag="<think>",
        reasoning_end_tag="</think>",
    )
    with custom_model(launched, "LLM", definition) as uid:
        yield uid


def reasoning_of(message: object) -> str | None:
    extra = getattr(message, "model_extra", None) or {}
    assert extra.get("reasoning_content") == extra.get("reasoning")  # both names, one text
    return extra.get("reasoning_content")


def test_chat_completions_carry_the_thinking_apart(launched: InferdServer, thinker: str) -> None:
    client = launched.openai()
    asked = {"model": thinker, "messages": HISTORY, "max_tokens": LENGTH, "temperature": 0}
    whole = client.chat.completions.create(**asked)  # type: ignore[call-overload]
    message = whole.choices[0].message
    assert reasoning_of(message) == THOUGHT
    assert message.content is not None and message.content.startswith(ANSWER)

    thought, said = "", ""
    for chunk in client.chat.completions.create(**asked, stream=True):  # type: ignore[call-overload]
        for choice in chunk.choices:
            thought += reasoning_of(choice.delta) or ""
            said += choice.delta.content or ""
    assert (thought.strip(), said) == (THOUGHT, message.content)


def test_the_switch_turns_thinking_off(launched: InferdServer, thinker: str) -> None:
    client = launched.openai()
    asked = {"model": thinker, "messages": HISTORY, "max_tokens": LENGTH, "temperature": 0}
    for switch in (
        {"reasoning_effort": "none"},
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
    ):
        message = client.chat.completions.create(**asked, **switch).choices[0].message  # type: ignore[call-overload]
        assert reasoning_of(message) is None
        assert message.content is not None and message.content.startswith(ANSWER)
    # A model that is not a reasoning model answers as it always does.
    plain = client.chat.completions.create(
        model=LLM, messages=HISTORY, max_tokens=LENGTH, temperature=0, reasoning_effort="high"
    )
    assert reasoning_of(plain.choices[0].message) is None


def test_ollama_thinking(launched: InferdServer, thinker: str) -> None:
    client = ollama.Client(host=launched.url)
    options = {"temperature": 0, "num_predict": LENGTH}
    answer = client.chat(model=thinker, messages=HISTORY, think=True, options=options)
    assert answer.message.thinking == THOUGHT
    assert answer.message.content.startswith(ANSWER)
    pieces = list(
        client.chat(model=thinker, messages=HISTORY, think=True, options=options, stream=True)
    )
    assert "".join(p.message.thinking or "" for p in pieces).strip() == THOUGHT
    assert "".join(p.message.content or "" for p in pieces) == answer.message.content

    direct = client.chat(model=thinker, messages=HISTORY, think=False, options=options)
    assert direct.message.thinking is None and direct.message.content.startswith(ANSWER)
    shown = client.show(thinker)
    assert "thinking" in (shown.capabilities or [])
    with pytest.raises(ollama.ResponseError) as refused:
        client.chat(model=LLM, messages=HISTORY, think=True, options=options)
    assert refused.value.status_code == 400 and "thinking" in refused.value.error


def test_anthropic_thinking_blocks(launched: InferdServer, thinker: str) -> None:
    client = anthropic.Anthropic(base_url=launched.url, api_key="unused", max_retries=0)
    asked = {
        "model": thinker,
        "max_tokens": LENGTH,
        "messages": HISTORY,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "extra_body": {"temperature": 0},
    }
    whole = client.messages.create(**asked)  # type: ignore[call-overload]
    kinds = [block.type for block in whole.content]
    assert kinds == ["thinking", "text"]
    assert whole.content[0].thinking == THOUGHT  # type: ignore[union-attr]
    assert whole.content[1].text.startswith(ANSWER)  # type: ignore[union-attr]
    with client.messages.stream(**asked) as stream:  # type: ignore[call-overload]
        final = stream.get_final_message()
    assert [block.type for block in final.content] == kinds
    assert final.content[0].thinking.strip() == THOUGHT  # type: ignore[union-attr]

    asked["thinking"] = {"type": "disabled"}
    direct = client.messages.create(**asked)  # type: ignore[call-overload]
    assert [block.type for block in direct.content] == ["text"]


def test_responses_reasoning_items(launched: InferdServer, thinker: str) -> None:
    client = launched.openai()
    asked = {
        "model": thinker,
        "input": HISTORY,
        "max_output_tokens": LENGTH,
        "temperature": 0,
        "store": False,
    }
    answer = client.responses.create(**asked, reasoning={"effort": "high"})  # type: ignore[call-overload]
    kinds = [item.type for item in answer.output]
    assert kinds == ["reasoning", "message"]
    assert answer.output[0].content[0].text == THOUGHT  # type: ignore[union-attr,index]
    assert answer.output_text.startswith(ANSWER)
    direct = client.responses.create(**asked, reasoning={"effort": "none"})  # type: ignore[call-overload]
    assert [item.type for item in direct.output] == ["message"]


def test_transformers_engine_thinking(launched: InferdServer, tiny_llama: Path) -> None:
    definition = local_llm("tiny-thinker", tiny_llama, TEMPLATE, abilities=("reasoning",))
    with custom_model(launched, "LLM", definition, model_engine="transformers") as uid:
        asked = {"model": uid, "messages": HISTORY[:1], "max_tokens": 8, "temperature": 0}
        body = httpx.post(f"{launched.url}/v1/chat/completions", json=asked, timeout=120).json()
        message = body["choices"][0]["message"]
        # The template opened the block and the random model never closes it.
        assert message["reasoning_content"] and message["content"] == ""
        streamed = httpx.post(
            f"{launched.url}/v1/chat/completions", json={**asked, "stream": True}, timeout=120
        ).text
        assert '"reasoning_content"' in streamed
        off = {**asked, "chat_template_kwargs": {"enable_thinking": False}}
        body = httpx.post(f"{launched.url}/v1/chat/completions", json=off, timeout=120).json()
        message = body["choices"][0]["message"]
        assert "reasoning_content" not in message and message["content"]

        # Launched with thinking off, that is every request's default.
        xclient = RESTfulClient(launched.url)
        quiet = xclient.launch_model(
            model_name="tiny-thinker",
            model_type="LLM",
            model_uid="tiny-quiet",
            model_engine="transformers",
            enable_thinking=False,
        )
        try:
            asked["model"] = quiet
            body = httpx.post(f"{launched.url}/v1/chat/completions", json=asked, timeout=120)
            message = body.json()["choices"][0]["message"]
            assert "reasoning_content" not in message and message["content"]
        finally:
            xclient.terminate_model(quiet)
