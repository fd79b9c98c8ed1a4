"""Every client mistake is a 4xx in OpenAI's error shape naming the field; never a 500."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer

pytestmark = pytest.mark.slow

MSG = [{"role": "user", "content": "hi"}]


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def test_negative_temperature_is_a_400_naming_temperature(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=LLM, messages=MSG, temperature=-1)  # type: ignore[arg-type]
    assert info.value.status_code == 400
    assert info.value.param == "temperature"
    assert "temperature" in info.value.message


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MSG)  # type: ignore[arg-type]
    assert info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="x")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": LLM}, "messages"),
        ({"model": LLM, "messages": []}, "messages"),
        ({"model": LLM, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": LLM, "messages": MSG, "top_p": 1.5}, "top_p"),
        ({"model": LLM, "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": LLM, "messages": MSG, "n": 0}, "n"),
        ({"model": LLM, "messages": MSG, "presence_penalty": 3}, "presence_penalty"),
        ({"messages": MSG}, "model"),
        # An earlier call without its type: llama.cpp answered this with a 500 (found by fuzzing).
        (
            {"model": LLM, "messages": [{"role": "assistant", "tool_calls": [{}]}, *MSG]},
            "messages[0].tool_calls[0].type",
        ),
    ],
)
def test_bad_chat_fields_name_the_field(launched: InferdServer, body: dict, param: str) -> None:
    response = httpx.post(f"{launched.url}/v1/chat/completions", json=body)
    error = _error(response, 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(launched: InferdServer) -> None:
    for path in ("/v1/chat/completions", "/v1/embeddings", "/v1/models"):
        response = httpx.post(
            f"{launched.url}{path}",
            content=b'{"model": ',
            headers={"content-type": "application/json"},
        )
        error = _error(response, 400)
        assert error["code"] == "invalid_json"
    not_an_object = httpx.post(f"{launched.url}/v1/chat/completions", json=[1, 2])
    _error(not_an_object, 400)


def test_wrong_model_type_for_the_endpoint(launched: InferdServer) -> None:
    chat_on_embedder = httpx.post(
        f"{launched.url}/v1/chat/completions", json={"model": EMBEDDING, "messages": MSG}
    )
    assert "cannot serve" in _error(chat_on_embedder, 400)["message"]
    embed_on_llm = httpx.post(f"{launched.url}/v1/embeddings", json={"model": LLM, "input": "x"})
    assert _error(embed_on_llm, 400)["param"] == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": EMBEDDING, "input": ""}, "input"),
        ({"model": EMBEDDING, "input": []}, "input"),
        ({"model": EMBEDDING, "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": EMBEDDING, "input": "x", "dimensions": 4096}, "dimensions"),
        ({"model": EMBEDDING, "input": [[1, 2, 3], [100300]]}, "input"),  # not cl100k ids
        ({"model": EMBEDDING, "input": [[]]}, "input"),
    ],
)
def test_bad_embedding_requests(launched: InferdServer, body: dict, param: str) -> None:
    error = _error(httpx.post(f"{launched.url}/v1/embeddings", json=body), 400)
    assert error["param"] == param
    if body["input"] == [[1, 2, 3], [100300]]:
        assert "input[1]" in error["message"]


def test_engine_side_rejections_keep_their_status(launched: InferdServer) -> None:
    # A prompt longer than the slot's context: llama.cpp refuses it; the client gets a 400.
    long_prompt = "word " * 9000
    response = httpx.post(
        f"{launched.url}/v1/completions",
        json={"model": LLM, "prompt": long_prompt, "max_tokens": 4},
        timeout=120,
    )
    assert "context" in _error(response, 400)["message"]
    streamed = httpx.post(
        f"{launched.url}/v1/completions",
        json={"model": LLM, "prompt": long_prompt, "max_tokens": 4, "stream": True},
        timeout=120,
    )
    _error(streamed, 400)


def test_management_errors(launched: InferdServer) -> None:
    url = f"{launched.url}/v1/models"
    assert _error(httpx.post(url, json={"model_name": "nope"}), 404)["param"] == "model_name"
    duplicate = httpx.post(url, json={"model_name": LLM})
    assert _error(duplicate, 409)["param"] == "model_uid"
    assert _error(httpx.post(url, json={"model_type": "LLM"}), 400)["param"] == "model_name"
    bad_type = httpx.post(url, json={"model_name": LLM, "model_type": "spaceship"})
    assert _error(bad_type, 400)["param"] == "model_type"
    bad_uid = httpx.post(url, json={"model_name": LLM, "model_uid": "a/b"})
    assert _error(bad_uid, 400)["param"] == "model_uid"
    replicas = httpx.post(url, json={"model_name": LLM, "model_uid": "r", "replica": 0})
    assert _error(replicas, 400)["param"] == "replica"
    idle = httpx.post(url, json={"model_name": LLM, "model_uid": "i", "idle_timeout": -1})
    assert _error(idle, 400)["param"] == "idle_timeout"
    bad_engine = httpx.post(url, json={"model_name": LLM, "model_engine": "warp-drive"})
    assert _error(bad_engine, 400)["param"] == "model_engine"
    missing_path = httpx.post(
        url, json={"model_name": LLM, "model_uid": "p", "model_path": "/no/such/file.gguf"}
    )
    assert _error(missing_path, 400)["param"] == "model_path"
    assert _error(httpx.get(f"{url}/no-such-uid"), 404)["code"] == "model_not_found"
    assert _error(httpx.delete(f"{url}/no-such-uid"), 404)["code"] == "model_not_found"
    _error(httpx.get(f"{launched.url}/v1/no-such-endpoint"), 404)


HUGE = 2**70  # JSON allows it, Python parses it, no engine can take it


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "x": [1, HUGE]},
            "x[1]",
        ),
        (
            "/v1/messages",
            {
                "max_tokens": 2,
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {
                        "role": "assistant",
                        "content": [
                            {"type": "tool_use", "id": "t1", "name": "f", "input": {"n": HUGE}}
                        ],
                    },
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}],
                    },
                ],
            },
            "messages[1].content[0].input.n",
        ),
        (
            "/v1/responses",
            {
                "max_output_tokens": 16,
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": [HUGE]},
                    {"type": "function_call_output", "call_id": "c", "output": "ok"},
                ],
            },
            "input[0].arguments[0]",
        ),
        (
            "/api/chat",
            {
                "stream": False,
                "messages": [
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"function": {"name": "f", "arguments": {"n": HUGE}}}],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments.n",
        ),
    ],
)
def test_integers_beyond_64_bits_are_a_400_naming_where(
    launched: InferdServer, path: str, body: dict, param: str
) -> None:
    answer = httpx.post(f"{launched.url}{path}", json={"model": LLM, **body}, timeout=60)
    assert answer.status_code == 400, answer.text
    assert param in answer.text, answer.text
