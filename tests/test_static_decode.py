"""The transformers engine's static decoder (the default on GPUs, compiled there into CUDA
graphs), run eagerly on the CPU: requests join and leave a fixed cache between steps, and each
greedy answer is the one the model's own forward pass over the whole text gives."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import InferdServer, abort_midway, custom_model, local_llm, run_together

pytestmark = pytest.mark.slow

TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
# Three rows of 160 tokens: ten requests of up to 60 new tokens keep the loop busy for more
# steps than a row holds, so the clock must move rows back to the cache's start (compaction)
# and prompts longer than the clock move it on.
ROWS, SLOTS = 3, 160
PROMPTS = [
    "The sea",
    "Once upon a time, far away beyond the mountains and the rivers, there lived",
    "A",
    "Ships sail the sea and the people wait for them on the shore, day after day, until",
    "Tell me",
    "The",
    "Weather today is grey and the wind blows hard from the north over the",
    "Why",
    "Numbers: one two three four five six seven eight nine ten eleven twelve",
    "Hello there",
]


@pytest.fixture(scope="module")
def static(launched: InferdServer, tiny_bpe_llama: Path) -> Iterator[str]:
    definition = local_llm("tiny-static", tiny_bpe_llama, TEMPLATE)
    with custom_model(
        launched,
        "LLM",
        definition,
        model_engine="transformers",
        kv_cache="static",
        max_model_len=SLOTS,
        max_requests_per_batch=ROWS,
    ) as uid:
        yield uid


def _greedy(url: str, model: str, prompt: str, tokens: int) -> tuple[str, list]:
    answer = httpx.post(
        f"{url}/v1/completions",
        json={
            "model": model,
            "prompt": prompt,
            "max_tokens": tokens,
            "temperature": 0,
            "logprobs": 1,
            "ignore_eos": True,
        },
        timeout=120,
    ).json()
    choice = answer["choices"][0]
    assert answer["usage"]["completion_tokens"] == tokens
    return choice["text"], choice["logprobs"]["content"]


def test_greedy_answers_are_the_models_while_rows_join_and_leave(
    launched: InferdServer, static: str, tiny_bpe_llama: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sizes = [60 - 4 * i for i in range(len(PROMPTS))]
    got: dict[int, tuple[str, list]] = {}

    def ask(i: int) -> None:
        got[i] = _greedy(launched.url, static, PROMPTS[i], sizes[i])

    run_together(*[lambda i=i: ask(i) for i in range(len(PROMPTS))])
    assert sorted(got) == list(range(len(PROMPTS)))

    tokenizer = AutoTokenizer.from_pretrained(tiny_bpe_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_bpe_llama).eval()
    for i, prompt in enumerate(PROMPTS):
        _assert_the_models(model, tokenizer, prompt, got[i])

    # A prompt longer than the clock moves it on, and the running row's span with it: a short
    # answer streaming while a long prompt joins is the same as alone.
    alone = _greedy(launched.url, static, "A", 50)
    _assert_the_models(model, tokenizer, "A", alone)
    body = {
        "model": static,
        "prompt": "A",
        "max_tokens": 50,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    streamed, joined = (
        [],
        threading.Thread(target=_greedy, args=(launched.url, static, PROMPTS[8], 10)),
    )
    with httpx.stream("POST", f"{launched.url}/v1/completions", json=body, timeout=60) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                streamed.append(json.loads(line[6:])["choices"][0]["text"])
                if len(streamed) == 2:
                    joined.start()
    joined.join(60)
    assert "".join(streamed) == alone[0]

    # Streamed, the same text arrives in pieces.
    pieces = [
        chunk.choices[0].text
        for chunk in launched.openai().completions.create(
            model=static,
            prompt=PROMPTS[1],
            max_tokens=sizes[1],
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        if chunk.choices
    ]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == got[1][0]


def _assert_the_models(model: Any, tokenizer: Any, prompt: str, answer: tuple[str, list]) -> None:
    """Every token is the likeliest one (up to float rounding between batch shapes) where the
    whole text, read in one pass, puts it; its logprob is the model's own."""
    import torch

    prompt_ids = tokenizer(prompt)["input_ids"]
    tokens = [p["token_id"] for p in answer[1]]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + tokens])).logits[0, len(prompt_ids) - 1 : -1]
    chosen = torch.tensor(tokens)[:, None]
    assert (logits.max(1).values - logits.gather(1, chosen)[:, 0]).max() < 1e-4, prompt
    logprobs = logits.log_softmax(1).gather(1, chosen)[:, 0]
    given = torch.tensor([p["logprob"] for p in answer[1]])
    assert (logprobs - given).abs().max() < 1e-3, prompt
    assert tokenizer.decode(tokens, skip_special_tokens=True) == answer[0]


def test_sampling_grammar_and_stops(launched: InferdServer, static: str) -> None:
    client = launched.openai()
    several = client.completions.create(
        model=static,
        prompt="The sea",
        max_tokens=12,
        n=3,
        temperature=1.0,
        top_p=0.9,
        extra_body={"top_k": 50, "ignore_eos": True},
    )
    texts = sorted(c.text for c in several.choices)
    assert len(set(texts)) > 1, texts  # sampled, each row its own draw

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    answers = client.chat.completions.create(
        model=static,
        messages=[{"role": "user", "content": "Who?"}],
        max_tokens=60,
        n=2,
        temperature=0.8,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    for choice in answers.choices:
        person = json.loads(choice.message.content or "")
        assert set(person) == {"name", "age"} and isinstance(person["age"], int)

    text, _ = _greedy(launched.url, static, PROMPTS[0], 20)
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(
        model=static,
        prompt=PROMPTS[0],
        max_tokens=20,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert cut.choices[0].finish_reason == "stop" and text.startswith(cut.choices[0].text)
    assert stop not in cut.choices[0].text


def test_abort_and_clients_that_leave_end_their_rows(launched: InferdServer, static: str) -> None:
    abort_midway(launched, static, "sd-1", 140)

    # Clients that give up mid-stream leave their rows; every row is free again after.
    for _ in range(ROWS):
        with httpx.stream(
            "POST",
            f"{launched.url}/v1/completions",
            json={
                "model": static,
                "prompt": "The",
                "max_tokens": 140,
                "stream": True,
                "ignore_eos": True,
            },
            timeout=30,
        ) as response:
            next(response.iter_lines())
    results: list[int] = []

    def one() -> None:
        answer = launched.openai().completions.create(
            model=static, prompt="The", max_tokens=100, extra_body={"ignore_eos": True}
        )
        assert answer.usage is not None
        results.append(answer.usage.completion_tokens)

    run_together(*[one] * ROWS)
    assert results == [100] * ROWS


def test_the_static_cache_limits_are_400s(launched: InferdServer, static: str) -> None:
    url = f"{launched.url}/v1/completions"
    answer = httpx.post(url, json={"model": static, "prompt": "The sea", "max_tokens": SLOTS})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "max_tokens" and "max_model_len" in error["message"]
    long = httpx.post(url, json={"model": static, "prompt": "sea " * SLOTS, "max_tokens": 2})
    assert long.status_code == 400 and "max_model_len" in long.json()["error"]["message"]

    xclient = RESTfulClient(launched.url)
    for options, param in (
        ({"kv_cache": "ring"}, "kv_cache"),
        ({"kv_cache": "static", "num_blocks": 8}, "num_blocks"),
        ({"kv_cache": "paged", "max_model_len": 64}, "max_model_len"),
        ({"kv_cache": "static", "max_model_len": 10**6}, "max_model_len"),
    ):
        with pytest.raises(RuntimeError) as failed:
            xclient.launch_model(
                model_name="tiny-static",
                model_type="LLM",
                model_uid="refused",
                model_engine="transformers",
                **options,
            )
        assert param in str(failed.value), (options, str(failed.value))


def test_a_request_without_max_tokens_holds_no_one_back(
    launched: InferdServer, static: str
) -> None:
    """A request without max_tokens may run to the end of its row; it takes a row at once and
    the requests behind it are not held until the cache is empty."""
    client = launched.openai()
    done: list[str] = []
    started = threading.Event()

    def long() -> None:
        for i, _ in enumerate(
            client.completions.create(
                model=static,
                prompt="The",
                max_tokens=120,
                stream=True,
                extra_body={"ignore_eos": True},
            )
        ):
            if i == 40:  # past the unbounded request's prompt: the clock is beyond it
                started.set()
        done.append("long")

    def unbounded() -> None:  # (a completion's max_tokens is 16 when not given, as OpenAI's)
        answer = client.chat.completions.create(
            model=static,
            messages=[{"role": "user", "content": "Sea"}],
            extra_body={"ignore_eos": True},
        )
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage is not None and answer.usage.completion_tokens > 120
        done.append("unbounded")

    threads = [threading.Thread(target=long), threading.Thread(target=unbounded)]
    threads[0].start()
    assert started.wait(30)
    threads[1].start()
    time.sleep(0.2)  # the unbounded request is ahead in the queue
    client.completions.create(model=static, prompt="A", max_tokens=5)
    done.append("short")
    for thread in threads:
        thread.join(120)
    assert done.index("short") < done.index("long"), done
