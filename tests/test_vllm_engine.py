"""The vLLM engine on vLLM's CPU build: a Llama of the real architecture with random weights,
registered by path and launched with `model_engine="vllm"`, served through every client."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import InferdServer, custom_model, local_llm, run_together, scrape

pytestmark = pytest.mark.slow

NAME = "tiny-llama-vllm"
# Renders tools and calls Hermes-style, so vLLM's `hermes` parser reads what the model writes;
# a special token ends each message, as real templates do.
TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] or '' }}</{{ m['role'] }}>"
    "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)
ASK = [{"role": "user", "content": "Tell me about the sea."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "strict": True,  # arguments held to the schema, as OpenAI's strict mode
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def lora(tiny_bpe_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter for the tiny Llama's attention, with weights big enough to change
    what it writes."""
    import torch
    from safetensors.torch import save_file

    config = json.loads((tiny_bpe_llama / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    rank = 8
    torch.manual_seed(1)
    tensors = {}
    for layer in range(layers):
        for name, out in (("q_proj", hidden), ("v_proj", kv)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, hidden) * 0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(out, rank) * 0.5
    folder = tmp_path_factory.mktemp("sea-lora")
    save_file(tensors, folder / "adapter_model.safetensors")
    adapter = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 16,
        "lora_dropout": 0.0,
        "target_modules": ["q_proj", "v_proj"],
        "bias": "none",
        "base_model_name_or_path": str(tiny_bpe_llama),
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter))
    return folder


@pytest.fixture(scope="module")
def llama(launched: InferdServer, tiny_bpe_llama: Path, lora: Path) -> Iterator[str]:
    definition = local_llm(NAME, tiny_bpe_llama, TEMPLATE, ("tools",))
    with custom_model(
        launched,
        "LLM",
        definition,
        model_engine="vllm",
        max_model_len=1024,
        tool_call_parser="hermes",
        envs={"VLLM_CPU_KVCACHE_SPACE": "1"},
        peft_model_config={"lora_list": [{"lora_name": "sea-lora", "local_path": str(lora)}]},
    ) as uid:
        yield uid


def _metric(server: InferdServer, name: str, uid: str) -> float:
    """The sum of a metric's samples for one model, over its other labels."""
    values = [
        value
        for (sample, labels), value in scrape(server).items()
        if sample == name and ("model_uid", uid) in labels
    ]
    assert values, f"{name} for {uid} not in /metrics"
    return sum(values)


def test_sixteen_concurrent_streamed_chats_complete(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    results: list[tuple[str, str | None, int]] = []

    def chat(i: int) -> None:
        stream = client.chat.completions.create(
            model=llama,
            messages=[{"role": "user", "content": f"Story number {i}."}],
            max_tokens=24,
            temperature=0.8,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, finish, tokens = "", None, 0
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
        results.append((text, finish, tokens))

    run_together(*(lambda i=i: chat(i) for i in range(16)))
    assert len(results) == 16
    for text, finish, tokens in results:
        # (Once on CI-like load one answer came back empty; what it said of itself tells why.)
        assert finish in ("length", "stop") and text and 1 <= tokens <= 24, (text, finish, tokens)
    # All sixteen were in vLLM's batch together, not queued behind each other by inferd.
    assert _metric(launched, "vllm:request_success_total", llama) >= 16


def test_whole_answers_count_tokens_and_honour_seed(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    first = client.chat.completions.create(
        model=llama, messages=ASK, max_tokens=12, temperature=1.0, seed=7
    )
    again = client.chat.completions.create(
        model=llama, messages=ASK, max_tokens=12, temperature=1.0, seed=7
    )
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.usage.completion_tokens == 12
    assert first.choices[0].finish_reason == "length"

    two = client.chat.completions.create(
        model=llama, messages=ASK, max_tokens=6, n=2, logprobs=True, top_logprobs=3
    )
    assert [c.index for c in two.choices] == [0, 1]
    content = two.choices[0].logprobs.content
    assert len(content) == 6 and len(content[0].top_logprobs) == 3

    completion = client.completions.create(
        model=llama, prompt="The sea is", max_tokens=5, top_p=0.9, extra_body={"top_k": 20}
    )
    assert completion.usage.completion_tokens == 5


def test_shared_system_prompt_hits_the_prefix_cache(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    system = "You are a careful assistant who answers about oceans. " * 20
    before = _metric(launched, "vllm:prefix_cache_hits_total", llama)
    for question in ("What is a tide?", "Why is the sea salty?", "How deep is it?"):
        client.chat.completions.create(
            model=llama,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
            max_tokens=4,
        )
    assert _metric(launched, "vllm:prefix_cache_hits_total", llama) > before
    assert _metric(launched, "vllm:prompt_tokens_total", llama) > 0
    assert _metric(launched, "vllm:time_to_first_token_seconds_count", llama) >= 3


def test_a_long_system_prompt_is_tokenized_once(
    launched: InferdServer, llama: str, tiny_bpe_llama: Path
) -> None:
    """The second and later prompts opening with the same system prompt take its tokens from
    the first's tokenization (`engines/prompt_prefixes.py`), and count as many as a whole
    tokenization of each gives."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bpe_llama)
    client = launched.openai()
    system = "You answer about the sea, its tides, its salt and its depths. " * 40
    before = _metric(launched, "inferd_engine_prompt_tokens_reused_total", llama)
    for question in ("What is a tide?", "Why is the sea salty?", "How deep is it?"):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        answer = client.chat.completions.create(model=llama, messages=messages, max_tokens=2)
        text = tokenizer.apply_chat_template(
            messages, chat_template=TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        whole = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert answer.usage.prompt_tokens == len(whole) > 500
    reused = _metric(launched, "inferd_engine_prompt_tokens_reused_total", llama) - before
    # The system prompt's tokens, twice.
    assert reused >= 2 * len(tokenizer(system, add_special_tokens=False)["input_ids"])


def test_guided_json_and_tool_calls_parse(launched: InferdServer, llama: str) -> None:
    client = launched.openai()
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    answer = client.chat.completions.create(
        model=llama,
        messages=ASK,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
    )
    person = json.loads(answer.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)

    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        called = client.chat.completions.create(
            model=llama,
            messages=ASK,
            max_tokens=80,
            tools=[WEATHER],
            tool_choice=choice,
            parallel_tool_calls=False,
        )
        assert called.choices[0].finish_reason == "tool_calls", called.choices[0]
        call = called.choices[0].message.tool_calls[0]
        assert call.function.name == "get_weather"
        assert isinstance(json.loads(call.function.arguments)["city"], str)

    xmodel = RESTfulClient(launched.url).get_model(llama)
    answer = xmodel.chat(
        messages=ASK,
        generate_config={
            "max_tokens": 60,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": schema},
            },
        },
    )
    assert set(json.loads(answer["choices"][0]["message"]["content"])) == {"name", "age"}


def test_bad_parameters_are_400s_naming_the_field(launched: InferdServer, llama: str) -> None:
    cases = [
        ({"max_tokens": 5000}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_k": "many"}, "top_k"),
        ({"min_p": 3}, "min_p"),
        ({"repetition_penalty": -2}, "repetition_penalty"),
    ]
    for extra, field in cases:
        response = httpx.post(
            f"{launched.url}/v1/chat/completions",
            json={"model": llama, "messages": ASK, **extra},
            timeout=30,
        )
        assert response.status_code == 400, (extra, response.text)
        error = response.json()["error"]
        assert field in (error["param"] or "") + error["message"], (extra, error)
        assert error["type"] == "invalid_request_error"
    # The model is still there for the next caller.
    ok = launched.openai().chat.completions.create(model=llama, messages=ASK, max_tokens=2)
    assert ok.usage.completion_tokens == 2


def test_a_client_that_leaves_frees_its_place_in_vllm(launched: InferdServer, llama: str) -> None:
    def finished(reason: str) -> float:
        """How many answers vLLM has ended for `reason` (an abort is not among them)."""
        return sum(
            value
            for (sample, labels), value in scrape(launched).items()
            if sample == "vllm:request_success_total"
            and ("model_uid", llama) in labels
            and ("finished_reason", reason) in labels
        )

    generated = _metric(launched, "vllm:generation_tokens_total", llama)
    completed = finished("length")
    # Eight answers of a thousand tokens each, written side by side, take vLLM's CPU build
    # tens of seconds: far longer than the seconds-long stalls a loaded CI machine has,
    # during which nobody, this server included, gets to notice a client leave.
    body = {
        "model": llama,
        "messages": ASK,
        "max_tokens": 1000,
        "n": 8,
        "stream": True,
        "ignore_eos": True,
    }
    # A slow CI machine can take longer than httpx's 5 s default to the first token.
    with httpx.stream(
        "POST", f"{launched.url}/v1/chat/completions", json=body, timeout=60
    ) as response:
        assert next(line for line in response.iter_lines() if line.startswith("data: "))
    # Leaving the block hung up after the first token: vLLM aborts the answers.
    deadline = time.monotonic() + 60
    while _metric(launched, "vllm:num_requests_running", llama) > 0:
        assert time.monotonic() < deadline, "vLLM kept generating for a client that left"
        time.sleep(0.2)
    assert finished("length") == completed, "an answer ran to its end for a client that left"
    assert _metric(launched, "vllm:generation_tokens_total", llama) - generated < 4000


def test_unknown_engine_argument_is_refused_by_name(launched: InferdServer, llama: str) -> None:
    error = launched.refused_launch(
        model_name=NAME, model_uid="vllm-bad-args", model_engine="vllm", max_num_seqz=4
    )
    assert error["param"] == "max_num_seqz" and "vllm serve" in error["message"]
    # Xinference's name for vLLM's quantize-at-load reaches vLLM, and its refusal names it.
    error = launched.refused_launch(
        model_name=NAME,
        model_uid="vllm-bad-quantization",
        model_engine="vllm",
        model_quantization="no-such-method",
    )
    assert error["param"] == "model_quantization", error
    assert "no-such-method" in error["message"]


def test_lora_adapters_are_chosen_per_request(launched: InferdServer, llama: str) -> None:
    client = launched.openai()

    def write(**extra: object) -> str:
        answer = client.completions.create(
            model=llama, prompt="The sea", max_tokens=8, temperature=0, extra_body=extra
        )
        return answer.choices[0].text

    base, tuned = write(), write(lora_name="sea-lora")
    assert tuned != base and write(lora_name="sea-lora") == tuned
    xmodel = RESTfulClient(launched.url).get_model(llama)
    generated = xmodel.generate(
        "The sea", generate_config={"lora_name": "sea-lora", "max_tokens": 8, "temperature": 0}
    )
    assert generated["choices"][0]["text"] == tuned

    response = httpx.post(
        f"{launched.url}/v1/completions",
        json={"model": llama, "prompt": "The sea", "lora_name": "river-lora"},
        timeout=30,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "lora_name" and "sea-lora" in error["message"]


def test_lora_on_an_engine_without_adapters_is_refused(launched: InferdServer, lora: Path) -> None:
    peft = {"lora_list": [{"lora_name": "x", "local_path": str(lora)}]}
    response = httpx.post(
        f"{launched.url}/v1/models",
        json={
            "model_name": "gemma-3-270m",
            "model_engine": "llama.cpp",
            "model_uid": "gguf-lora",
            "peft_model_config": peft,
        },
        timeout=60,
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "peft_model_config" and "vLLM" in error["message"]
    missing = {"lora_list": [{"lora_name": "x", "local_path": "/nowhere/at/all"}]}
    response = httpx.post(
        f"{launched.url}/v1/models",
        json={"model_name": "gemma-3-270m", "peft_model_config": missing},
        timeout=60,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "peft_model_config.lora_list.0.local_path"


def _session(leader: int) -> set[int]:
    """The processes in a model process's session: it and what its engine started."""
    members = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == leader and fields[0] != "Z":  # process group, not a zombie
            members.add(int(stat.parent.name))
    return members


def test_a_crashed_vllm_process_comes_back_and_leaves_nothing(
    launched: InferdServer, llama: str
) -> None:
    old = launched.models()[llama]["pid"]
    engine_processes = _session(old) - {old}
    assert engine_processes, "vLLM's engine core runs in the model process's session"
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 300
    while (model := launched.models()[llama])["pid"] in (old, None) or model["status"] != "ready":
        assert time.monotonic() < deadline, f"not back: {model}"
        time.sleep(0.2)
    deadline = time.monotonic() + 30
    while _session(old):
        assert time.monotonic() < deadline, f"left behind: {_session(old)}"
        time.sleep(0.2)
    answer = launched.openai().chat.completions.create(model=llama, messages=ASK, max_tokens=3)
    assert answer.usage.completion_tokens == 3


# Qwen3's way: the template opens the thinking block in the prompt, or writes an empty one when
# thinking is off.
THINKING_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)


def test_vllm_reasoning_parser_separates_the_thinking(
    launched: InferdServer, tiny_bpe_llama: Path
) -> None:
    # A model whose name says Qwen3 and whose abilities say reasoning gets vLLM's qwen3 parser;
    # the random model never closes the block the template opened: all it writes is thinking.
    definition = local_llm("qwen3-tiny-thinker", tiny_bpe_llama, THINKING_TEMPLATE, ("reasoning",))
    with custom_model(
        launched,
        "LLM",
        definition,
        model_engine="vllm",
        max_model_len=512,
        envs={"VLLM_CPU_KVCACHE_SPACE": "1"},
    ) as uid:
        asked = {"model": uid, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        url = f"{launched.url}/v1/chat/completions"
        message = httpx.post(url, json=asked, timeout=120).json()["choices"][0]["message"]
        assert message["reasoning_content"] and not message["content"], message
        assert message["reasoning"] == message["reasoning_content"]  # both names clients read
        streamed = httpx.post(url, json={**asked, "stream": True}, timeout=120).text
        assert '"reasoning_content":"' in streamed and '"reasoning":"' in streamed
        off = {**asked, "chat_template_kwargs": {"enable_thinking": False}}
        message = httpx.post(url, json=off, timeout=120).json()["choices"][0]["message"]
        assert message["content"] and not message.get("reasoning_content"), message
