"""The OpenAI SDK against the demo models: chat, completions, embeddings, streaming."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import shutil
import struct
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import EMBEDDING, LLM, InferdServer, custom_model, run_together

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Write one sentence about the sea."}]


def test_models_list_is_openai_shaped(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {LLM, EMBEDDING} <= ids


def test_chat_counts_tokens_and_honours_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model=LLM, messages=HELLO, max_tokens=7, temperature=0)
    assert reply.object == "chat.completion"
    assert reply.model == LLM
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 7
    assert reply.usage.prompt_tokens > 5
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 7


def test_chat_is_deterministic_at_temperature_zero(client: openai.OpenAI) -> None:
    answers = {
        client.chat.completions.create(model=LLM, messages=HELLO, max_tokens=12, temperature=0)
        .choices[0]
        .message.content
        for _ in range(3)
    }
    assert len(answers) == 1


def test_chat_seed_reproduces_sampled_answers(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str | None:
        return (
            client.chat.completions.create(
                model=LLM, messages=HELLO, max_tokens=16, temperature=1.0, top_p=0.95, seed=seed
            )
            .choices[0]
            .message.content
        )

    assert sample(1234) == sample(1234)


def test_chat_template_is_applied(client: openai.OpenAI) -> None:
    # Gemma's template wraps the one user turn in 4 markers + BOS: the prompt must count them.
    bare = client.completions.create(model=LLM, prompt="Hi", max_tokens=1, temperature=0)
    chat = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "Hi"}], max_tokens=1, temperature=0
    )
    assert chat.usage is not None and bare.usage is not None
    assert chat.usage.prompt_tokens >= bare.usage.prompt_tokens + 6


def test_stop_sequence_ends_the_answer(client: openai.OpenAI) -> None:
    free = (
        client.completions.create(model=LLM, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0)
        .choices[0]
        .text
    )
    assert " 7" in free  # the base model continues the count
    stopped = client.completions.create(
        model=LLM, prompt="1, 2, 3, 4, 5,", max_tokens=12, temperature=0, stop=[" 7"]
    ).choices[0]
    assert " 7" not in stopped.text
    assert stopped.finish_reason == "stop"
    assert free.startswith(stopped.text)


def test_chat_stream_delivers_tokens_then_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=LLM,
        messages=HELLO,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) >= 5
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    plain = client.chat.completions.create(model=LLM, messages=HELLO, max_tokens=10, temperature=0)
    assert text == plain.choices[0].message.content


def test_stream_without_usage_request_sends_none(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(model=LLM, messages=HELLO, max_tokens=3, stream=True)
    )
    assert all(c.usage is None for c in chunks)


def test_completions_plain_and_streamed(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=LLM, prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.object == "text_completion"
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=LLM, prompt="The capital of France is", max_tokens=8, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == reply.choices[0].text


def test_completion_default_max_tokens_is_openais_16(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=LLM, prompt="Once upon a time", temperature=0)
    assert reply.usage is not None and reply.usage.completion_tokens <= 16


def test_concurrent_chats_all_complete(client: openai.OpenAI) -> None:
    results: list[int] = []

    def one() -> None:
        r = client.chat.completions.create(model=LLM, messages=HELLO, max_tokens=8)
        assert r.usage is not None
        results.append(r.usage.completion_tokens)

    run_together(*[one] * 6)
    assert results == [8] * 6


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_embeddings_place_similar_sentences_closer(client: openai.OpenAI) -> None:
    texts = [
        "A man is playing a guitar.",
        "Someone plays an acoustic guitar.",
        "The stock market fell sharply today.",
    ]
    reply = client.embeddings.create(model=EMBEDDING, input=texts)
    assert reply.model == EMBEDDING
    vectors = [d.embedding for d in sorted(reply.data, key=lambda d: d.index)]
    assert all(len(v) == 384 for v in vectors)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.3
    assert reply.usage.prompt_tokens > 15
    assert reply.usage.total_tokens == reply.usage.prompt_tokens


def test_embedding_of_one_string_and_base64(launched) -> None:  # type: ignore[no-untyped-def]
    import httpx

    url = f"{launched.url}/v1/embeddings"
    floats = httpx.post(url, json={"model": EMBEDDING, "input": "hello world"}).json()
    assert len(floats["data"]) == 1
    raw = httpx.post(
        url, json={"model": EMBEDDING, "input": "hello world", "encoding_format": "base64"}
    ).json()["data"][0]["embedding"]
    decoded = struct.unpack("<384f", base64.b64decode(raw))
    assert decoded == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


def test_langchains_openai_embeddings_send_token_ids_read_as_openais(
    client: openai.OpenAI,
    launched: InferdServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """LangChain's OpenAIEmbeddings, as it comes, tokenizes each text with OpenAI's
    cl100k_base and sends the ids, split into arrays of at most `embedding_ctx_length`; each
    array is read back as its text (a cut through a character as U+FFFD), so it gets the
    model's embedding of the text, or of each piece, which it averages."""
    import tiktoken
    import tiktoken_ext
    from langchain_openai import OpenAIEmbeddings

    # LangChain loads cl100k_base through tiktoken, which would download it: from its cache.
    data = next(Path(p) / "data" for p in tiktoken_ext.__path__ if (Path(p) / "data").is_dir())
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(data / "cl100k_base.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))

    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    base = f"{launched.url}/v1"
    langchain = OpenAIEmbeddings(model=EMBEDDING, base_url=base, api_key="none")
    got = [*langchain.embed_documents(texts), langchain.embed_query(texts[0])]
    own = [d.embedding for d in client.embeddings.create(model=EMBEDDING, input=texts).data]
    for vector, want in zip(got, [*own, own[0]], strict=True):
        assert vector == pytest.approx(want, abs=1e-5)

    # Pieces of 5 ids: some end inside a Chinese character or the emoji.
    text = "Embeddings for 数据中心 and エンベディング, with emoji 🙂🙂 and accents: café."
    short = OpenAIEmbeddings(model=EMBEDDING, base_url=base, api_key="none", embedding_ctx_length=5)
    ids = tiktoken.get_encoding("cl100k_base").encode_ordinary(text)
    pieces = [ids[at : at + 5] for at in range(0, len(ids), 5)]
    encoding = tiktoken.get_encoding("cl100k_base")
    read = [encoding.decode_bytes(piece).decode("utf-8", "replace") for piece in pieces]
    assert any("\ufffd" in piece for piece in read)
    vectors = client.embeddings.create(model=EMBEDDING, input=read).data
    weights = [len(p) for p in pieces]
    mean = [
        sum(w * v.embedding[k] for w, v in zip(weights, vectors, strict=True)) / sum(weights)
        for k in range(384)
    ]
    norm = math.sqrt(sum(x * x for x in mean))
    assert short.embed_query(text) == pytest.approx([x / norm for x in mean], abs=1e-5)


def test_an_embedding_models_prompts_go_before_its_texts(
    launched: InferdServer, tmp_path: Path
) -> None:
    """sentence-transformers' prompts, as its `encode` puts them: the model's default prompt
    unless the request names another (`prompt_name`, as TEI and Xinference take it) or gives
    one (`prompt`, as Xinference passes it on)."""
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer

    from tests.tiny_bert import save_tiny_embedding, tokenizer_folder

    folder = save_tiny_embedding(
        tmp_path / "prompted",
        seed=7,
        tokenizer=AutoTokenizer.from_pretrained(tokenizer_folder()),
        prompts={"query": "query: ", "passage": "passage: "},
        default_prompt_name="passage",
    )
    own = SentenceTransformer(str(folder), device="cpu")
    definition = {
        "version": 2,
        "model_name": "tiny-prompted",
        "dimensions": 64,
        "max_tokens": 64,
        "language": ["en"],
        "model_specs": [
            {"model_format": "pytorch", "quantization": "none", "model_uri": str(folder)}
        ],
    }
    texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
    with custom_model(launched, "embedding", definition) as uid:
        url = f"{launched.url}/v1/embeddings"

        def embedded(**fields: object) -> list[list[float]]:
            answer = httpx.post(url, json={"model": uid, "input": texts, **fields}, timeout=60)
            assert answer.status_code == 200, answer.text
            return [d["embedding"] for d in answer.json()["data"]]

        for fields, want in (
            ({}, own.encode(texts)),  # the default prompt, "passage: "
            ({"prompt_name": "query"}, own.encode(texts, prompt_name="query")),
            ({"prompt": "Represent: "}, own.encode(texts, prompt="Represent: ")),
            ({"prompt": ""}, own.encode(texts, prompt="")),  # none at all
        ):
            for got, vector in zip(embedded(**fields), want, strict=True):
                assert got == pytest.approx(vector.tolist(), abs=1e-5), fields
        assert embedded() != embedded(prompt="")
        unknown = httpx.post(url, json={"model": uid, "input": "x", "prompt_name": "nope"})
        assert unknown.status_code == 400
        error = unknown.json()["error"]
        assert error["param"] == "prompt_name" and "passage, query" in error["message"]

        # Launched to rerank (a bi-encoder): the query and the documents read with the prompts
        # the library's encode_query and encode_document put before them.
        body = {"model_name": "tiny-prompted", "model_type": "rerank", "model_uid": "ranks"}
        launched_rerank = httpx.post(f"{launched.url}/v1/models", json=body, timeout=300)
        assert launched_rerank.status_code == 200, launched_rerank.text
        try:
            query = "Who plays the guitar?"
            ranked = httpx.post(
                f"{launched.url}/v1/rerank",
                json={"model": "ranks", "query": query, "documents": texts},
                timeout=60,
            ).json()["results"]
            asked = own.encode_query([query], normalize_embeddings=True)[0]
            answers = own.encode_document(texts, normalize_embeddings=True)
            for result in ranked:
                want = float(answers[result["index"]] @ asked)
                assert result["relevance_score"] == pytest.approx(want, abs=1e-5)
        finally:
            httpx.delete(f"{launched.url}/v1/models/ranks").raise_for_status()


def test_embedding_dimensions_truncate_and_renormalise(client: openai.OpenAI) -> None:
    vector = client.embeddings.create(model=EMBEDDING, input="hello", dimensions=64).data[0]
    assert len(vector.embedding) == 64
    assert math.sqrt(sum(x * x for x in vector.embedding)) == pytest.approx(1.0, abs=1e-4)


def test_an_embedding_models_precision_and_compile(launched) -> None:  # type: ignore[no-untyped-def]
    """`--dtype bfloat16` loads the weights in bfloat16: vectors near the float32 ones, not equal
    to them; a precision the engine does not know is a 400 naming `dtype`, and `compile` on a
    CPU (where the compiled model was no quicker) one naming `compile`."""
    uid = "minilm-bf16"
    out = launched.cli(
        "launch", "--model-name", EMBEDDING, "--model-type", "embedding", "--model-uid", uid,
        "--dtype", "bfloat16",
    )  # fmt: skip
    assert out.stdout.strip() == uid
    try:
        client = launched.openai()
        texts = ["A man is playing a guitar.", "The stock market fell sharply today."]
        half = client.embeddings.create(model=uid, input=texts).data
        full = client.embeddings.create(model=EMBEDDING, input=texts).data
        for h, f in zip(half, full, strict=True):
            assert 0.99 < _cosine(h.embedding, f.embedding) < 1 - 1e-7
    finally:
        launched.cli("terminate", uid)
    error = launched.refused_launch(
        model_name=EMBEDDING, model_type="embedding", model_uid="minilm-f8", dtype="float8"
    )
    assert error["param"] == "dtype" and "bfloat16" in error["message"], error
    error = launched.refused_launch(
        model_name=EMBEDDING, model_type="embedding", model_uid="minilm-compiled", compile=True
    )
    assert error["param"] == "compile" and "GPU" in error["message"], error


def test_json_schema_output_parses(client: openai.OpenAI) -> None:
    import json

    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer"}},
        "required": ["ok", "n"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=LLM,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema},
        },
        max_tokens=300,
        temperature=0,
    )
    data = json.loads(reply.choices[0].message.content or "")
    assert set(data) == {"ok", "n"}
    assert isinstance(data["ok"], bool) and isinstance(data["n"], int)


def test_logprobs_and_n(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=LLM, messages=HELLO, max_tokens=3, logprobs=True, top_logprobs=2
    )
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert len(logprobs.content) == 3
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in logprobs.content)

    several = client.chat.completions.create(
        model=LLM, messages=HELLO, max_tokens=3, n=3, temperature=1
    )
    assert [c.index for c in several.choices] == [0, 1, 2]


def test_tools_on_a_model_without_tool_calling_is_refused(client: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    }
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=LLM, messages=HELLO, tools=[tool])  # type: ignore[list-item]
    assert info.value.param == "tools"


def test_answers_carry_the_fields_openais_schema_asks_for(launched: InferdServer) -> None:
    """Found by checking answers against OpenAI's published schema: `logprobs` on every choice
    (null unless asked), `refusal` in a logprobs object, a Model object for one model."""
    url = f"{launched.url}/v1/chat/completions"
    body = {"model": LLM, "messages": HELLO, "max_tokens": 2}
    whole = httpx.post(url, json=body, timeout=60).json()
    assert "logprobs" in whole["choices"][0] and whole["choices"][0]["logprobs"] is None
    asked = httpx.post(url, json={**body, "logprobs": True}, timeout=60).json()
    assert asked["choices"][0]["logprobs"]["refusal"] is None
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=60) as stream:
        chunks = [
            json.loads(line[6:]) for line in stream.iter_lines() if line.startswith("data: {")
        ]
    assert all("logprobs" in c for chunk in chunks for c in chunk["choices"])
    text = httpx.post(
        f"{launched.url}/v1/completions", json={"model": LLM, "prompt": "Hi", "max_tokens": 2}
    ).json()
    assert "logprobs" in text["choices"][0]

    model = launched.openai().models.retrieve(LLM)
    assert (model.id, model.object, model.owned_by) == (LLM, "model", "inferd")
    assert model.created > 0 and model.model_extra and model.model_extra["model_name"] == LLM


def test_bodies_are_json_whatever_their_content_type(launched: InferdServer) -> None:
    """`curl -d` (and clients built on Ollama's docs) label a JSON body as a form."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    for path, body in (
        ("/v1/chat/completions", {"model": LLM, "messages": HELLO, "max_tokens": 2}),
        (
            "/api/chat",
            {"model": LLM, "messages": HELLO, "stream": False, "options": {"num_predict": 2}},
        ),
        (
            "/api/generate",
            {"model": LLM, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}},
        ),
    ):
        answer = httpx.post(launched.url + path, content=json.dumps(body), headers=form, timeout=60)
        assert answer.status_code == 200, (path, answer.text)


def test_a_max_tokens_past_the_context_is_refused(launched: InferdServer) -> None:
    """As vLLM does; before, a request for 10^9 tokens ran until the context filled."""
    client = launched.openai()
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=LLM, messages=HELLO, max_tokens=10**9)
    assert refused.value.param == "max_tokens" and "8192" in refused.value.message
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=LLM, prompt="Hi", max_tokens=10**9)
    with pytest.raises(openai.BadRequestError, match="8192"):
        client.responses.create(model=LLM, input="Hi", max_output_tokens=10**9)
    answer = httpx.post(
        f"{launched.url}/v1/messages",
        json={"model": LLM, "messages": HELLO, "max_tokens": 10**9},
        timeout=30,
    )
    assert answer.status_code == 400 and "8192" in answer.json()["error"]["message"]
    # The whole context is still there to ask for (read to the first token, then left).
    with client.chat.completions.create(
        model=LLM, messages=HELLO, max_tokens=8192, stream=True
    ) as stream:
        assert next(iter(stream)).choices is not None
