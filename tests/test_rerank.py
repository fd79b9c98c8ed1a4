"""Rerank through Xinference's client and plain HTTP: the demo embedding model as a bi-encoder,
and a cross-encoder of the real BERT architecture with random weights, built here."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from xinference_client import RESTfulClient

from tests.conftest import EMBEDDING, LLM, InferdServer, custom_model
from tests.tiny_bert import save_tiny_cross_encoder, tiny_cross_encoder

pytestmark = pytest.mark.slow

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Bananas are yellow and rich in potassium.",
    "Paris is the capital and largest city of France.",
    "The stock market fell sharply on Monday.",
    "France's capital, Paris, lies on the Seine.",
]


@pytest.fixture(scope="module")
def bi_encoder(launched: InferdServer) -> Iterator[str]:
    xclient = RESTfulClient(launched.url)
    uid = xclient.launch_model(model_name=EMBEDDING, model_type="rerank", model_uid="minilm-rerank")
    yield uid
    xclient.terminate_model(uid)


@pytest.fixture(scope="module")
def cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"), seed=0)


@pytest.fixture(scope="module")
def cross_encoder(launched: InferdServer, cross_encoder_path: Path) -> Iterator[str]:
    definition = {
        "model_name": "tiny-cross",
        "type": "normal",
        "language": ["en"],
        "max_tokens": 128,
        "model_uri": str(cross_encoder_path),
    }
    with custom_model(launched, "rerank", definition) as uid:
        yield uid


def test_embedding_model_ranks_as_a_bi_encoder(launched: InferdServer, bi_encoder: str) -> None:
    model = RESTfulClient(launched.url).get_model(bi_encoder)
    answer = model.rerank(DOCUMENTS, QUERY, top_n=2, return_documents=True)
    results = answer["results"]
    assert len(results) == 2
    assert {r["index"] for r in results} == {1, 3}  # the two about Paris
    assert results[0]["relevance_score"] >= results[1]["relevance_score"]
    assert results[0]["document"]["text"] == DOCUMENTS[results[0]["index"]]
    assert answer["meta"]["tokens"]["input_tokens"] > 20
    described = launched.models()[bi_encoder]
    assert described["model_type"] == "rerank" and described["method"] == "bi-encoder"


def test_cross_encoder_scores_as_sentence_transformers_does(
    launched: InferdServer, cross_encoder: str, cross_encoder_path: Path
) -> None:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(cross_encoder_path), max_length=128)
    expected = model.predict([(QUERY, d) for d in DOCUMENTS])
    answer = httpx.post(
        f"{launched.url}/v1/rerank",
        json={"model": cross_encoder, "query": QUERY, "documents": DOCUMENTS},
        timeout=60,
    ).json()
    results = answer["results"]
    assert len(results) == len(DOCUMENTS)
    assert all(r["document"] is None for r in results)  # not asked for
    by_index = {r["index"]: r["relevance_score"] for r in results}
    assert by_index == pytest.approx({i: float(s) for i, s in enumerate(expected)}, abs=1e-5)
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # The tokens the model read: each pair, truncated to the model's length.
    read = model.tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, truncation=True, max_length=128)
    assert answer["usage"]["total_tokens"] == sum(len(ids) for ids in read["input_ids"])


def test_a_classifier_of_several_labels_is_refused_as_a_reranker(
    launched: InferdServer, tmp_path: Path
) -> None:
    save_tiny_cross_encoder(tmp_path, seed=1, labels=3)
    definition = {
        "model_name": "tiny-nli",
        "type": "normal",
        "language": ["en"],
        "max_tokens": 128,
        "model_uri": str(tmp_path),
    }
    registered = httpx.post(
        f"{launched.url}/v1/model_registrations/rerank", json={"model": definition}
    )
    assert registered.status_code == 200, registered.text
    try:
        answer = httpx.post(
            f"{launched.url}/v1/models",
            json={"model_name": "tiny-nli", "model_type": "rerank"},
            timeout=300,
        )
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["param"] == "model_name" and "3 outputs" in error["message"], error
        running = httpx.get(f"{launched.url}/v1/models").json()["data"]
        assert "tiny-nli" not in {m["id"] for m in running}
    finally:
        httpx.delete(f"{launched.url}/v1/model_registrations/rerank/tiny-nli")


def test_concurrent_rerank_requests_share_passes_and_keep_their_own_scores(
    launched: InferdServer, cross_encoder: str
) -> None:
    import asyncio

    queries = [f"{QUERY} ({i})" for i in range(12)]
    # Requests share a pass when they wait for one: a request that finds the model idle runs at
    # once, alone, and a tiny model's passes can end before the relay brings the next request
    # (in one run all 32 of 32 concurrent requests ran alone). So a long request holds the
    # model first: 32 passes of 64 pairs, the others queue behind it.
    holding = [" ".join([DOCUMENTS[i % len(DOCUMENTS)]] * 8) for i in range(2048)]
    url = f"{launched.url}/v1/rerank"

    async def rank(client: httpx.AsyncClient, query: str) -> dict[str, Any]:
        body = {"model": cross_encoder, "query": query, "documents": DOCUMENTS}
        answer = await client.post(url, json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    async def held() -> None:
        """Until the server has handed the long request to the model process."""
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(500):
                described = (await client.get(f"{launched.url}/v1/models/{cross_encoder}")).json()
                if described["replicas"][0]["inflight"]:
                    return
                await asyncio.sleep(0.002)
        raise AssertionError("the long request never reached the model")

    async def rank_all() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=120) as client:
            body = {"model": cross_encoder, "query": QUERY, "documents": holding}
            long = asyncio.ensure_future(client.post(url, json=body))
            await held()
            together = await asyncio.gather(*(rank(client, q) for q in queries))
            assert (await long).status_code == 200
            return together

    def passes() -> tuple[float, float]:
        text = httpx.get(f"{launched.url}/metrics").text
        found = {}
        for line in text.splitlines():
            if (
                line.startswith("inferd_engine_batch_items_")
                and f'model_uid="{cross_encoder}"' in line
            ):
                found[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
        return found.get("inferd_engine_batch_items_count", 0), found.get(
            "inferd_engine_batch_items_sum", 0
        )

    before = passes()
    together = asyncio.run(rank_all())
    after = passes()
    pairs, count = after[1] - before[1], after[0] - before[0]
    assert pairs == len(holding) + len(queries) * len(DOCUMENTS)
    # The long request's 32 passes, and fewer than one a request for the others: some of their
    # pairs went through one pass together (all twelve's in one, when they all queued in time).
    assert count < len(holding) // 64 + len(queries)
    with httpx.Client(timeout=60) as client:
        for query, shared in zip(queries, together, strict=True):
            body = {"model": cross_encoder, "query": query, "documents": DOCUMENTS}
            alone = client.post(f"{launched.url}/v1/rerank", json=body).json()
            assert [r["index"] for r in shared["results"]] == [r["index"] for r in alone["results"]]
            assert [r["relevance_score"] for r in shared["results"]] == pytest.approx(
                [r["relevance_score"] for r in alone["results"]], abs=1e-5
            )
            assert shared["usage"] == alone["usage"]


def test_documents_as_objects_jina_and_cohere_style(
    launched: InferdServer, cross_encoder: str
) -> None:
    answer = httpx.post(
        f"{launched.url}/v1/rerank",
        json={
            "model": cross_encoder,
            "query": QUERY,
            "documents": [{"text": d} for d in DOCUMENTS],
            "top_n": 1,
            "return_documents": True,
        },
        timeout=60,
    ).json()
    (best,) = answer["results"]
    assert best["document"]["text"] == DOCUMENTS[best["index"]]


def test_bad_rerank_requests_are_refused(launched: InferdServer, cross_encoder: str) -> None:
    url = f"{launched.url}/v1/rerank"
    base = {"model": cross_encoder, "query": QUERY, "documents": DOCUMENTS}
    cases = [
        ({"documents": []}, "documents", 400),
        ({"documents": ["x"] * 5000}, "documents", 400),
        ({"documents": ["fine", ""]}, "documents", 400),
        ({"documents": [{"text": 3}]}, "documents", 400),
        ({"query": ""}, "query", 400),
        ({"top_n": 0}, "top_n", 400),
        ({"max_chunks_per_doc": 4}, "max_chunks_per_doc", 400),
        ({"model": LLM}, "model", 400),
        ({"model": "nope"}, "model", 404),
    ]
    for change, param, status in cases:
        answer = httpx.post(url, json={**base, **change}, timeout=30)
        assert answer.status_code == status, (change, answer.text)
        assert answer.json()["error"]["param"] == param, (change, answer.text)


def test_rerank_catalogue_and_registrations(launched: InferdServer, cross_encoder: str) -> None:
    xclient = RESTfulClient(launched.url)
    names = {r["model_name"] for r in xclient.list_model_registrations("rerank")}
    assert {"bge-reranker-v2-m3", "bge-reranker-base", "tiny-cross"} <= names
    bge = xclient.get_model_registration("rerank", "bge-reranker-v2-m3")
    assert bge["model_specs"][0]["model_hub"]["huggingface"] == "BAAI/bge-reranker-v2-m3"
    listed = launched.cli("registrations", "-t", "rerank").stdout
    assert "bge-reranker-large" in listed
    bad = {"model_name": "weird", "type": "LLM-based layerwise", "model_uri": "/tmp"}
    with pytest.raises(RuntimeError, match="not supported"):
        xclient.register_model(model_type="rerank", model=json.dumps(bad), persist=False)


@pytest.fixture(scope="module")
def gguf_reranker(
    launched: InferdServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Any, Any]]:
    """The same kind of cross-encoder, written as GGUF, on llama.cpp."""
    from tests.gguf_bert import write_reranker_gguf

    model, tokenizer = tiny_cross_encoder(seed=1)
    path = tmp_path_factory.mktemp("gguf-rerank") / "tiny-reranker.gguf"
    write_reranker_gguf(model, tokenizer, path)
    definition = {
        "model_name": "tiny-gguf-rerank",
        "model_format": "ggufv2",
        "max_tokens": 512,
        "model_uri": str(path),
    }
    # Placed on a GPU by the user, as on a GPU machine (llama.cpp's CPU build here: the log
    # says the GPU goes unused, and the model serves on the CPU).
    with custom_model(launched, "rerank", definition, envs={"CUDA_VISIBLE_DEVICES": "0"}) as uid:
        yield uid, model, tokenizer


def test_gguf_reranker_on_llama_cpp(
    launched: InferdServer, gguf_reranker: tuple[str, Any, Any]
) -> None:
    import torch

    uid, model, tokenizer = gguf_reranker
    assert launched.models()[uid]["model_engine"] == "llama.cpp"
    answer = httpx.post(
        f"{launched.url}/v1/rerank",
        json={"model": uid, "query": QUERY, "documents": DOCUMENTS, "return_documents": True},
        timeout=60,
    ).json()
    results = answer["results"]
    assert sorted(r["index"] for r in results) == list(range(len(DOCUMENTS)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in results)
    assert answer["usage"]["total_tokens"] > 20
    # The same classifier in transformers scores each pair alike (llama.cpp lays the pair
    # out with its own separators, so not to the last digit).
    with torch.no_grad():
        pairs = tokenizer([QUERY] * len(DOCUMENTS), DOCUMENTS, return_tensors="pt", padding=True)
        expected = model(**pairs).logits.squeeze(-1).tolist()
    by_index = {r["index"]: r["relevance_score"] for r in results}
    for i, value in enumerate(expected):
        assert by_index[i] == pytest.approx(value, abs=0.05 * max(abs(value), 0.01))
    logs = httpx.get(f"{launched.url}/v1/models/{uid}/logs", params={"tail": 5000}).text
    assert "given GPU 0, but this llama.cpp build" in logs and "no GPU backend" in logs
