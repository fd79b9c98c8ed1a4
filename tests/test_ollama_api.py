"""The `ollama` Python client against inferd's /api endpoints."""

from __future__ import annotations

import json

import httpx
import ollama
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer

pytestmark = pytest.mark.slow


@pytest.fixture
def oclient(launched: InferdServer) -> ollama.Client:
    return ollama.Client(host=launched.url)


def test_tags_ps_show(oclient: ollama.Client) -> None:
    names = {m.model for m in oclient.list().models}
    assert {f"{LLM}:latest", f"{EMBEDDING}:latest"} <= names
    running = {m.model for m in oclient.ps().models}
    assert f"{LLM}:latest" in running
    shown = oclient.show(LLM)
    assert shown.details is not None and shown.details.format == "gguf"
    assert shown.capabilities and "completion" in shown.capabilities
    assert "<start_of_turn>" in (shown.template or "")


def test_chat_plain_and_streamed(oclient: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Say hi."}]
    reply = oclient.chat(
        model=f"{LLM}:latest", messages=messages, options={"num_predict": 6, "temperature": 0}
    )
    assert reply.done and reply.message.role == "assistant" and reply.message.content
    assert reply.eval_count == 6 and reply.done_reason == "length"
    parts = list(
        oclient.chat(
            model=LLM, messages=messages, options={"num_predict": 6, "temperature": 0}, stream=True
        )
    )
    assert parts[-1].done and parts[-1].eval_count == 6
    assert "".join(p.message.content or "" for p in parts) == reply.message.content


def test_generate_and_format_json(oclient: ollama.Client) -> None:
    text = oclient.generate(model=LLM, prompt="The sky is", raw=True, options={"num_predict": 4})
    assert text.response and text.done
    streamed = list(
        oclient.generate(model=LLM, prompt="Hello", options={"num_predict": 3}, stream=True)
    )
    assert streamed[-1].done and any(p.response for p in streamed[:-1])
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    structured = oclient.chat(
        model=LLM,
        messages=[{"role": "user", "content": "JSON please"}],
        format=schema,
        options={"num_predict": 200, "temperature": 0},
    )
    assert isinstance(json.loads(structured.message.content or "")["ok"], bool)


def test_embed(oclient: ollama.Client) -> None:
    result = oclient.embed(model=EMBEDDING, input=["one", "two"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 384
    assert result.prompt_eval_count and result.prompt_eval_count > 0
    legacy = oclient.embeddings(model=EMBEDDING, prompt="one")
    assert list(legacy.embedding) == pytest.approx(list(result.embeddings[0]), abs=1e-5)


def test_pull_launches_a_catalogue_model(launched: InferdServer) -> None:
    client = ollama.Client(host=launched.url)
    launched.cli("terminate", EMBEDDING)
    statuses = [p.status for p in client.pull(EMBEDDING, stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert launched.models()[EMBEDDING]["status"] == "ready"
    response = httpx.post(f"{launched.url}/api/pull", json={"model": LLM, "stream": False})
    assert response.json() == {"status": "success"}  # launched already

    # Weights that cannot be had (no hub here): the pull fails with the launch's reason.
    with pytest.raises(ollama.ResponseError, match="could not download"):
        list(client.pull("all-mpnet-base-v2", stream=True))
    with pytest.raises(ollama.ResponseError, match="could not download"):
        client.pull("all-mpnet-base-v2")
    launched.cli("terminate", "all-mpnet-base-v2")


def test_errors_are_ollama_shaped(oclient: ollama.Client, launched: InferdServer) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        oclient.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert "does not exist" in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        oclient.embed(model=LLM, input="x")
    assert info.value.status_code == 400
    raw = httpx.post(f"{launched.url}/api/chat", json={"messages": []})
    assert raw.status_code == 400 and isinstance(raw.json()["error"], str)
    # An earlier tool call without its function is the client's mistake, not a 500.
    bad_call = {"role": "assistant", "content": "", "tool_calls": [{"id": "x"}]}
    raw = httpx.post(
        f"{launched.url}/api/chat",
        json={"model": LLM, "messages": [bad_call, {"role": "user", "content": "x"}]},
    )
    assert raw.status_code == 400 and "tool_calls" in raw.json()["error"]


def test_a_client_that_leaves_a_whole_answer_ends_its_generation(launched: InferdServer) -> None:
    """Ollama's clients wait for whole answers by default; one that gives up (a timeout) must
    not leave the story running to num_predict in the model's only slot."""
    launched.cli("launch", "-n", LLM, "-u", "ollama-one-slot", "--n_parallel", "1")
    try:
        story = {
            "model": "ollama-one-slot",
            "prompt": "Tell me a very long story.",
            "stream": False,
            "options": {"num_predict": 8000},  # minutes of generation if nobody stops it
        }
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{launched.url}/api/generate", json=story, timeout=3)
        # The slot is free again: this answers long before the abandoned story would end.
        try:
            reply = httpx.post(
                f"{launched.url}/api/generate",
                json={**story, "options": {"num_predict": 2}},
                timeout=30,
            )
        except httpx.ReadTimeout:
            log = httpx.get(f"{launched.url}/v1/models/ollama-one-slot/logs", timeout=10).text
            server = launched.log()[-4000:]
            pytest.fail(
                "the abandoned story still holds the slot; the model's log:\n"
                f"{log}\nthe server's:\n{server}"
            )
        assert reply.status_code == 200 and reply.json()["done"] is True
    finally:
        launched.cli("terminate", "ollama-one-slot")
